"""Shared sampling helpers: what every technique uses and none owns.

Schedulers by name, the one seed policy, size snapping with each technique's own bounds, the prompt-length check,
the VAE's encode and decode, the ε/v split of a UNet output, the classifier-free-guidance combine, and plain
text-to-image sampling (for the trainer's validation and prior images). This module imports no technique, so any
technique may import it; techniques never import each other for a helper.
"""

import secrets
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from studio.jobs import Cancelled, StepFn, StopFn
from studio.params import ranged
from studio.safety import screened

SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    # Latents are not bounded to [-1, 1]: a config that omits clip_sample would make DDIM clip them (grey images).
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "UniPC": (UniPCMultistepScheduler, {}),
}
SIZE_MULTIPLE = 8  # SD's VAE downsamples by 8 (Shapes' by 4): sides that are multiples of 8 suit both
MAX_SEED = 2**32 - 1


# 1. Seeds: one policy for every technique
def seed_field(default: int = 0, help: str = "-1 picks a random seed.", *, random: bool = True) -> Any:
    """A seed parameter from 0 to MAX_SEED, and -1 for a random one where a random draw makes sense (not where the
    seed names a result to resume or compare, as a training job's or a classification batch's does)."""
    return ranged(default, -1 if random else 0, MAX_SEED, 1, help)


def pick_seed(seed: int, n: int = 1) -> int:
    """The seed a job uses: `seed` itself, or for -1 a random one that leaves room for n consecutive image seeds."""
    return secrets.randbelow(MAX_SEED - n + 2) if seed < 0 else int(seed)


# 2. Inputs
def snap_size(value: int, name: str, warnings: list[str], lo: int = 64, hi: int = 2048) -> int:
    """`value` rounded to a multiple of SIZE_MULTIPLE within the caller's [lo, hi] (each technique has its own),
    with a note in `warnings` when it changed."""
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi} pixels, got {value}")
    snapped = max(lo, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if snapped != value:
        warnings.append(f"{name.capitalize()} {value} was rounded to {snapped}, a multiple of {SIZE_MULTIPLE}.")
    return snapped


def check_prompt(tokenizer: Any, prompt: str) -> str | None:
    """A warning if the prompt is longer than the text encoder reads (77 tokens for CLIP), else None."""
    ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1])
    return (f"The prompt is {len(ids)} tokens; the text encoder reads only {limit}, so everything after "
            f"\"…{kept[-40:]}\" is ignored.")


def make_scheduler(name: str, config: dict) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


# 3. Text, noise predictions and guidance
def text_context(pipe: DiffusionPipeline, prompt: str | list[str], negative: str | list[str] | None,
                 use_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(context for the UNet, conditional embeddings). With guidance the context is [unconditional, conditional],
    the batch order `guided` expects."""
    cond, uncond = pipe.encode_prompt(prompt, pipe.unet.device, 1, use_cfg, negative or None)
    return (torch.cat([uncond, cond]) if use_cfg else cond), cond


def guided(uncond: torch.Tensor, cond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): u + s·(c − u). A [unconditional, conditional] batch from
    `text_context` gives `guided(*output.chunk(2), cfg)`."""
    return uncond + cfg * (cond - uncond)


def split_prediction(output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                     prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean latent x0 and the noise ε a UNet output stands for at noise level ᾱ (x_t = √ᾱ·x0 + √(1−ᾱ)·ε), for
    ε-prediction (SD 1.x) and v-prediction (v = √ᾱ·ε − √(1−ᾱ)·x0: SD 2.x 768 and the Shapes model). The v form never
    divides by √ᾱ, so it also holds at a zero-SNR schedule's last step, where ᾱ = 0."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * output) / a, output
    if prediction_type == "v_prediction":
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f"Unsupported prediction type {prediction_type!r}: the studio handles epsilon and v_prediction.")


# 4. The VAE
def encode_image(pipe: DiffusionPipeline, image: Image.Image) -> torch.Tensor:
    """The VAE posterior mean of an RGB image, scaled as the UNet expects: (1, C, h, w) in the UNet's dtype."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].to(device, dtype) / 127.5 - 1
    with torch.no_grad():
        return pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.mean.to(dtype) * pipe.vae.config.scaling_factor


TILE_ABOVE = 2  # "auto" tiling: latents more than this many of the VAE's own tiles a side are decoded by tiles


def _decode(vae: Any, latents: torch.Tensor, tiled: bool) -> torch.Tensor:
    """One image's decode, whole or by overlapping tiles (diffusers' `tiled_decode`, blended at the seams)."""
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    return (vae.tiled_decode(z) if tiled else vae.decode(z)).sample


def decode_latents(pipe: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to images in [0, 1], NCHW float32; on a pipeline marked `screen` (a public or classroom
    studio), through the model's safety checker (studio/safety.py).

    A batch is decoded one image at a time (slicing: the decoder's activations of eight 2048² images would not fit),
    and a large image by tiles when the pipeline's `vae_tiling` is "on", or "auto" (the default) and the latent is
    more than TILE_ABOVE of the VAE's tiles a side. SD VAEs can overflow in fp16 (NaN, black images); if that
    happens, that image is decoded again in fp32 and the shared VAE is put back to its dtype afterwards.
    """
    vae = pipe.vae
    mode = getattr(pipe, "vae_tiling", "auto")
    tile = getattr(vae, "tile_latent_min_size", None) or max(latents.shape[-2:])
    tiled = mode == "on" or (mode == "auto" and max(latents.shape[-2:]) > TILE_ABOVE * tile)
    images = []
    with torch.no_grad():
        for one in latents.split(1):
            image = _decode(vae, one, tiled)
            if not torch.isfinite(image).all() and vae.dtype != torch.float32:
                dtype = vae.dtype
                try:
                    vae.to(torch.float32)
                    image = _decode(vae, one.float(), tiled)
                finally:
                    vae.to(dtype)
            images.append(image.float())
    pixels = (torch.cat(images) / 2 + 0.5).clamp(0, 1)
    return screened(pipe, pixels) if getattr(pipe, "screen", False) else pixels


class Preview:
    """A cheap look at a latent mid-denoise: a linear map from latent channels to RGB, fitted by least squares on one
    (latent, image) pair the technique already has (SDEdit: its guide and the guide's latent), then one matrix
    product per preview instead of a VAE decode. For a VAE small enough to cost nothing (the Shapes model's), the
    real decode."""

    CHEAP_VAE = 5_000_000  # parameters below which a real decode is as cheap as a preview

    def __init__(self, pipe: DiffusionPipeline, latents: torch.Tensor, image: Image.Image,
                 exact: bool | None = None):
        self.pipe = pipe
        self.exact = sum(p.numel() for p in pipe.vae.parameters()) < self.CHEAP_VAE if exact is None else exact
        if not self.exact:
            c, h, w = latents.shape[1:]
            x = torch.cat([latents[0].float().reshape(c, -1).T.cpu(), torch.ones(h * w, 1)], 1)
            y = torch.from_numpy(np.asarray(image.convert("RGB").resize((w, h), Image.BOX), np.float32) / 255)
            self.map = torch.linalg.lstsq(x, y.reshape(-1, 3)).solution.to(latents.device)
            self.size = image.size

    def __call__(self, latents: torch.Tensor) -> Image.Image:
        if self.exact:
            return to_images(decode_latents(self.pipe, latents))[0]
        c, h, w = latents.shape[1:]
        x = torch.cat([latents[0].float().reshape(c, -1).T, torch.ones(h * w, 1, device=latents.device)], 1)
        rgb = (x @ self.map).clamp(0, 1).reshape(h, w, 3).cpu().numpy()
        return Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(self.size, Image.BILINEAR)


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """NCHW floats in [0, 1] (as `decode_latents` returns them) to 8-bit RGB images."""
    return [Image.fromarray((x.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)) for x in pixels]


# 5. Plain text-to-image
def txt2img(pipe: DiffusionPipeline, prompt: str, *, seed: int, n: int = 1, steps: int = 25, cfg: float = 7.5,
            width: int = 512, height: int = 512, scheduler: str = "DPM++ 2M", negative_prompt: str = "",
            on_step: StepFn | None = None, should_stop: StopFn | None = None) -> list[Image.Image]:
    """`n` images of `prompt` through diffusers' own loop; image i starts from noise drawn on the CPU from seed + i,
    so the pixels do not depend on the device's random generator. `pipe` is the caller's (its scheduler is
    replaced). Raises `Cancelled` when `should_stop()` turns true between steps."""
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]

    def step_end(p: DiffusionPipeline, step: int, timestep: int, tensors: dict) -> dict:
        if on_step:
            on_step(step + 1, steps)
        if should_stop and should_stop():
            p._interrupt = True  # diffusers skips the remaining steps
        return tensors

    latents = pipe(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                   guidance_scale=cfg, width=width, height=height, num_images_per_prompt=n, generator=generators,
                   output_type="latent", callback_on_step_end=step_end).images
    if should_stop and should_stop():
        raise Cancelled("Generation cancelled")
    return to_images(decode_latents(pipe, latents))
