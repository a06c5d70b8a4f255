"""Shared sampling helpers: what every technique uses and none owns.

Schedulers by name, the one seed policy, size snapping with each technique's own bounds, the prompt-length check,
the VAE's encode and decode, live previews, the ε/v split of a UNet output, the classifier-free-guidance combine,
the denoising loop and plain text-to-image sampling (Generate, and the trainer's validation and prior images). This
module imports no technique, so any technique may import it; techniques never import each other for a helper.
"""

import inspect
import secrets
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from studio.jobs import Cancelled, PreviewFn, StepFn, StopFn
from studio.params import ranged
from studio.prompts import encode_text, match_chunks, prompt_tokens
from studio.safety import screened

_DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_KARRAS, _EXPONENTIAL = {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}
# A1111's sampler names, so its PNGs restore and its users find theirs. "Karras" and "exponential" are the noise
# schedules of Karras et al. (2022) and of k-diffusion's get_sigmas_exponential: the same solver, with its steps
# spent closer to the clean image.
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    # Latents are not bounded to [-1, 1]: a config that omits clip_sample would make DDIM clip them (grey images).
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler Karras": (EulerDiscreteScheduler, _KARRAS),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),  # second order: two UNet calls a step
    "LMS": (LMSDiscreteScheduler, {}),
    "LMS Karras": (LMSDiscreteScheduler, _KARRAS),
    "DPM++ 2M": (DPMSolverMultistepScheduler, _DPM),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {**_DPM, **_KARRAS}),
    "DPM++ 2M exponential": (DPMSolverMultistepScheduler, {**_DPM, **_EXPONENTIAL}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, _SDE),
    "DPM++ 2M SDE Karras": (DPMSolverMultistepScheduler, {**_SDE, **_KARRAS}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "UniPC Karras": (UniPCMultistepScheduler, _KARRAS),
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
    """For a technique that reads one chunk (`encode_text(..., chunks=False)`), a warning if the prompt has more
    tokens than the chunk holds (75 for CLIP), or a BREAK, which then does nothing; else None. Techniques that chunk
    read every token and need no check."""
    tokens = prompt_tokens(tokenizer, prompt)
    words = [token for token in tokens if token is not None]
    limit = tokenizer.model_max_length - 2
    notes = []
    if len(words) > limit:
        kept = tokenizer.decode([token for token, _ in words[:limit]])
        notes.append(f"The prompt is {len(words)} tokens; this technique reads one chunk of {limit}, so everything "
                     f"after \"…{kept[-40:]}\" is ignored.")
    if None in tokens:
        notes.append("BREAK does nothing here: this technique reads one chunk of the prompt.")
    return " ".join(notes) or None


def make_scheduler(name: str, config: dict) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


# 3. Text, noise predictions and guidance
def text_context(pipe: DiffusionPipeline, prompt: str | list[str], negative: str | list[str] | None,
                 use_cfg: bool, *, chunks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(context for the UNet, conditional embeddings), with A1111's prompt weights and, unless `chunks=False`, long
    prompts in chunks (studio/prompts.py). With guidance the context is [unconditional, conditional], the batch order
    `guided` expects, both with the same number of chunks."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    cond = encode_text(pipe, prompts, chunks=chunks)
    if not use_cfg:
        return cond, cond
    negatives = [negative or ""] * len(prompts) if negative is None or isinstance(negative, str) else negative
    # Encoded apart, as encode_prompt does, so plain prompts give its embeddings to the bit
    uncond, cond = match_chunks(pipe, encode_text(pipe, negatives, chunks=chunks), cond)
    return torch.cat([uncond, cond]), cond


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


def colour_chart(side: int) -> Image.Image:
    """Hue sweeps at four brightnesses and two saturations, and a grey ramp: the colours a latent-to-RGB map is
    fitted on."""
    u = np.linspace(0, 1, side, dtype=np.float32)
    bands = [(1.0, v) for v in (1.0, 0.75, 0.5, 0.25)] + [(0.5, 1.0), (0.25, 0.9), (0.0, None)]
    rows = []
    for saturation, value in bands:
        hsv = np.stack([u * 179, np.full(side, saturation * 255), np.full(side, (value or 0) * 255)], -1)
        rgb = cv2.cvtColor(hsv[None].astype(np.uint8), cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255
        rows.append(np.repeat(u[:, None], 3, 1) if value is None else rgb)
    band = side // len(rows)
    chart = np.concatenate([np.repeat(row[None], band, 0) for row in rows] +
                           [np.repeat(rows[-1][None], side - band * len(rows), 0)])
    return Image.fromarray((chart * 255).round().astype(np.uint8))


class Preview:
    """A cheap look at latents mid-denoise (A1111's "Approx cheap" live preview, ComfyUI's latent2rgb): a linear map
    from latent channels to RGB, fitted once per VAE by least squares on `colour_chart` and its latent (one encode,
    at the first preview), then one matrix product per preview instead of a VAE decode. For a VAE small enough to
    cost nothing (the Shapes model's, the tiny one's), the real decode. On a screened studio previews pass the safety
    checker too: an unscreened preview would show what the final image withholds."""

    CHEAP_VAE = 5_000_000  # parameters below which a real decode is as cheap as a preview
    CHART = 256  # pixels a side of the calibration chart: 1,024 latent cells for an SD VAE

    def __init__(self, vae: Any, exact: bool | None = None):
        self.vae = vae
        self.exact = sum(p.numel() for p in vae.parameters()) < self.CHEAP_VAE if exact is None else exact
        self.map: torch.Tensor | None = None  # (C + 1, 3): latent channels and a bias → RGB

    @staticmethod
    def of(pipe: DiffusionPipeline) -> "Preview":
        """The pipeline's own (the model manager keeps one per model, fitted once), else a new one."""
        return getattr(pipe, "preview", None) or Preview(pipe.vae)

    def _fit(self, device: torch.device) -> torch.Tensor:
        chart = colour_chart(self.CHART)
        pixels = torch.from_numpy(np.asarray(chart)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            z = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.mean.float()
        z = z * self.vae.config.scaling_factor
        c, h, w = z.shape[1:]
        x = torch.cat([z[0].reshape(c, -1).T.cpu(), torch.ones(h * w, 1)], 1)
        y = torch.from_numpy(np.asarray(chart.resize((w, h), Image.BOX), np.float32) / 255).reshape(-1, 3)
        return torch.linalg.lstsq(x, y).solution.to(device)

    def __call__(self, pipe: DiffusionPipeline, latents: torch.Tensor) -> list[Image.Image]:
        """One picture per latent of the batch, at the size the decoder would make."""
        if self.exact:
            return to_images(decode_latents(pipe, latents))
        if self.map is None:
            self.map = self._fit(latents.device)
        n, c, h, w = latents.shape
        x = torch.cat([latents.float().permute(0, 2, 3, 1), torch.ones(n, h, w, 1, device=latents.device)], -1)
        rgb = (x @ self.map).clamp(0, 1).permute(0, 3, 1, 2)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        rgb = torch.nn.functional.interpolate(rgb, scale_factor=factor, mode="bilinear")
        return to_images(screened(pipe, rgb) if getattr(pipe, "screen", False) else rgb)


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """NCHW floats in [0, 1] (as `decode_latents` returns them) to 8-bit RGB images."""
    return [Image.fromarray((x.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)) for x in pixels]


# 5. The denoising loop and plain text-to-image
def sample_loop(pipe: DiffusionPipeline, scheduler: Any, x: torch.Tensor, context: torch.Tensor, cfg: float, *,
            timesteps: torch.Tensor | None = None, generator: list[torch.Generator] | None = None, eta: float = 0.0,
            residuals: Callable[[int, torch.Tensor, torch.Tensor], dict] | None = None,
            on_step: StepFn | None = None, should_stop: StopFn | None = None,
            on_preview: PreviewFn | None = None) -> torch.Tensor:
    """The denoising loop of diffusers' StableDiffusionPipeline (step 7 of its `__call__`), the same arithmetic in
    the same order, with the studio's hooks: `should_stop` between steps (raises `Cancelled`), `on_step`,
    `on_preview` with the predicted x0, and `residuals(i, t, model_in)` for extra UNet inputs (ControlNet residuals,
    T2I-Adapter features). `context` is `text_context`'s ([unconditional, conditional] when cfg > 1); `generator`
    and `eta` reach the samplers that draw noise (Euler a, the SDE ones, DDIM with η > 0)."""
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    accepted = inspect.signature(scheduler.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in accepted}
    use_cfg = cfg > 1
    if on_preview:  # ᾱ at each step, read once on the host: a preview costs no device sync of its own
        index = timesteps.float().cpu().round().long().clamp(0, len(scheduler.alphas_cumprod) - 1)
        alpha_bars = scheduler.alphas_cumprod[index]
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        if should_stop and should_stop():
            raise Cancelled("Generation cancelled")
        model_in = scheduler.scale_model_input(torch.cat([x] * 2) if use_cfg else x, t)
        with torch.no_grad():
            extra = residuals(i, t, model_in) if residuals else {}
            output = pipe.unet(model_in, t, encoder_hidden_states=context, return_dict=False, **extra)[0]
        if use_cfg:
            output = guided(*output.chunk(2), cfg)
        if on_preview:
            # scale_model_input turns a σ-space latent into the VP x_t that ᾱ describes, for every sampler
            x_t = model_in.chunk(2)[1] if use_cfg else model_in
            x0 = split_prediction(output, x_t, alpha_bars[i], scheduler.config.prediction_type)[0]
        x = scheduler.step(output, t, x, **step_kwargs, return_dict=False)[0]
        if on_step:
            on_step(i + 1, n)
        if on_preview:
            on_preview(i + 1, n, x0)
    return x


def txt2img(pipe: DiffusionPipeline, prompt: str, *, seed: int, n: int = 1, steps: int = 25, cfg: float = 7.5,
            width: int = 512, height: int = 512, scheduler: str = "DPM++ 2M", negative_prompt: str = "",
            on_step: StepFn | None = None, should_stop: StopFn | None = None,
            on_preview: PreviewFn | None = None) -> list[Image.Image]:
    """`n` images of `prompt`: diffusers' StableDiffusionPipeline step for step (a test checks that the pixels are
    its), through `sample_loop`. Image i starts from noise drawn on the CPU from seed + i, so the pixels do not
    depend on the device's random generator. Raises `Cancelled` when `should_stop()` turns true between steps."""
    sampler = make_scheduler(scheduler, pipe.scheduler.config)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    context, _ = text_context(pipe, [prompt] * n, [negative_prompt] * n, cfg > 1)
    sampler.set_timesteps(steps, device=device)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    shape = (n, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    x = randn_tensor(shape, generator=generators, device=device, dtype=dtype) * sampler.init_noise_sigma
    x = sample_loop(pipe, sampler, x, context.to(dtype), cfg, generator=generators, on_step=on_step,
                should_stop=should_stop, on_preview=on_preview)
    return to_images(decode_latents(pipe, x))
