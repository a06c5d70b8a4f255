"""InstructPix2Pix (Brooks et al., CVPR 2023): edit an image by following a written instruction.

The UNet reads the input image's VAE latent c_I as four extra input channels beside the noisy latent z_t, and the
instruction c_T through cross-attention. It was trained with each condition dropped now and then, so one UNet gives
three predictions, and sampling mixes them with two guidance scales (the paper's Eq. 3):

    ẽ(z_t, c_I, c_T) = e(z_t, ∅, ∅) + s_I·(e(z_t, c_I, ∅) − e(z_t, ∅, ∅)) + s_T·(e(z_t, c_I, c_T) − e(z_t, c_I, ∅))

s_I (image guidance, diffusers' `image_guidance_scale`) pulls towards the input image, s_T (text guidance,
diffusers' `guidance_scale`) towards the instruction. The loop below is diffusers'
StableDiffusionInstructPix2PixPipeline's, the same arithmetic in the same order (a test checks the pixels), with the
studio's progress, cancel and previews. The input latent is the VAE's mode, unscaled, as diffusers passes it.
"""

import inspect
import time
from dataclasses import dataclass, replace

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from studio.images import flatten_alpha
from studio.jobs import Cancelled, PreviewFn, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.prompts import encode_text
from studio.sampling import (SCHEDULERS, check_prompt, decode_latents, encode_image, make_scheduler, pick_seed,
                             seed_field, snap_size, split_prediction, to_images)

IMAGE_CHANNELS = 4  # the VAE latent's channels: an InstructPix2Pix UNet reads twice as many as it predicts


@dataclass
class IP2PParams(Params):
    """One edit. The defaults are the official app's (text 7.5, image 1.5); `resolution` is its longer side."""

    LIMITS = {"resolution": "max_side"}  # a shared studio's --max-side bounds the output (studio/limits.py)

    instruction: str = ""
    text_guidance: float = ranged(7.5, 0, 20, 0.5, "s_T: how strongly to follow the instruction. Higher edits "
                                                   "more.")
    image_guidance: float = ranged(1.5, 0, 5, 0.1, "s_I: how strongly to stay with the input image. Higher keeps "
                                                   "more of it.")
    steps: int = ranged(20, 1, 150, 1, "Denoising steps.")
    resolution: int = ranged(512, 64, 1024, 8, "The longer side of the output; the input is scaled to it.")
    scheduler: str = choice("Euler a", tuple(SCHEDULERS), "The sampler (the paper's app uses Euler a).")
    seed: int = seed_field(0)


@dataclass
class IP2PResult:
    image: Image.Image
    input: Image.Image  # the input as the model saw it (scaled to `resolution`)
    seed: int
    seconds: float
    warnings: list[str]


def is_ip2p_unet(unet: torch.nn.Module) -> bool:
    return unet.config.in_channels == unet.config.out_channels + IMAGE_CHANNELS


def widen_conv_in(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """The paper's initialisation of an InstructPix2Pix UNet from a text-to-image one: the same weights, and
    `conv_in` reading IMAGE_CHANNELS more channels whose weights are zero, so it starts as the base model."""
    wide = UNet2DConditionModel(**{**unet.config, "in_channels": unet.config.in_channels + IMAGE_CHANNELS})
    state = unet.state_dict()
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], torch.zeros_like(state["conv_in.weight"])], 1)
    wide.load_state_dict(state)
    return wide


def fit_input(image: Image.Image, resolution: int, warnings: list[str]) -> Image.Image:
    """RGB (transparency on white), scaled so that its longer side is `resolution` (or its shorter side 64 pixels,
    the least a model takes), each side a multiple of 8."""
    image, flattened = flatten_alpha(image)
    if flattened:
        warnings.append("The input had transparency; it was placed on white.")
    if min(image.size) < 8:
        raise ValueError(f"The input image is {image.width}×{image.height}; it needs at least 8 pixels a side.")
    scale = max(resolution / max(image.size), 64 / min(image.size))  # a very wide input keeps its shape
    size = [snap_size(round(side * scale), name, warnings, hi=4096)
            for side, name in zip(image.size, ("width", "height"))]
    return image.resize(tuple(size), Image.LANCZOS) if tuple(size) != image.size else image


def run_ip2p(pipe: DiffusionPipeline, image: Image.Image, params: IP2PParams, *, on_step: StepFn | None = None,
             should_stop: StopFn | None = None, on_preview: PreviewFn | None = None) -> IP2PResult:
    """Edit `image` as `params.instruction` says. `pipe` comes from `ModelManager.lend` with an InstructPix2Pix
    UNet (eight input channels); its VAE and text encoder are the base model's."""
    # 1. Check inputs (the ranges were checked when `params` was built)
    if not is_ip2p_unet(pipe.unet):
        raise ValueError("This UNet is not an InstructPix2Pix one: it reads "
                         f"{pipe.unet.config.in_channels} input channels, not "
                         f"{pipe.unet.config.out_channels + IMAGE_CHANNELS}.")
    warnings: list[str] = []
    if not params.instruction.strip():
        warnings.append("The instruction is empty: the model only redraws the input.")
    if note := check_prompt(pipe.tokenizer, params.instruction):
        warnings.append(note)
    image = fit_input(image, params.resolution, warnings)
    seed = pick_seed(params.seed)
    started = time.perf_counter()
    device, dtype = pipe.unet.device, pipe.unet.dtype

    # 2. The three conditionings, in diffusers' batch order: (c_I, c_T), (c_I, ∅), (∅, ∅)
    text = encode_text(pipe, [params.instruction], chunks=False)
    empty = encode_text(pipe, [""], chunks=False)
    context = torch.cat([text, empty, empty]).to(dtype)
    c_image = encode_image(pipe, image) / pipe.vae.config.scaling_factor  # the mode, unscaled, as diffusers passes it
    c_images = torch.cat([c_image, c_image, torch.zeros_like(c_image)])

    # 3. Noise and timesteps
    scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
    scheduler.set_timesteps(params.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    z = randn_tensor((1, pipe.unet.config.out_channels, *c_image.shape[-2:]), generator=generator, device=device,
                     dtype=dtype) * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}

    # 4. Denoise: three predictions a step, mixed by Eq. 3
    n = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        if should_stop and should_stop():
            raise Cancelled("Edit cancelled")
        model_in = scheduler.scale_model_input(torch.cat([z] * 3), t)
        with torch.no_grad():
            out = pipe.unet(torch.cat([model_in, c_images], 1), t, encoder_hidden_states=context,
                            return_dict=False)[0]
        both, image_only, neither = out.chunk(3)
        out = neither + params.text_guidance * (both - image_only) + params.image_guidance * (image_only - neither)
        if on_preview:
            alpha_bar = scheduler.alphas_cumprod[int(t)].to(device)
            x0 = split_prediction(out, model_in[:1], alpha_bar, scheduler.config.prediction_type)[0]
        z = scheduler.step(out, t, z, **step_kwargs, return_dict=False)[0]
        if on_step:
            on_step(i + 1, n)
        if on_preview:
            on_preview(i + 1, n, x0)
    edited = to_images(decode_latents(pipe, z))[0]
    return IP2PResult(edited, image, seed, time.perf_counter() - started, warnings)


@dataclass
class GridResult:
    images: list[list[Image.Image]]  # rows: image guidance, columns: text guidance
    text_scales: list[float]
    image_scales: list[float]
    seed: int
    warnings: list[str]


def guidance_grid(pipe: DiffusionPipeline, image: Image.Image, params: IP2PParams, text_scales: list[float],
                  image_scales: list[float], *, on_step: StepFn | None = None,
                  should_stop: StopFn | None = None) -> GridResult:
    """The paper's guidance figure: one edit per (s_I, s_T) pair, the same seed throughout, so that the only
    difference between two cells is the two scales."""
    seed = pick_seed(params.seed)
    rows, warnings, done, total = [], [], 0, len(text_scales) * len(image_scales)
    for s_image in image_scales:
        row = []
        for s_text in text_scales:
            cell = replace(params, text_guidance=s_text, image_guidance=s_image, seed=seed)
            result = run_ip2p(pipe, image, cell, should_stop=should_stop)
            warnings += result.warnings
            row.append(result.image)
            done += 1
            if on_step:
                on_step(done, total)
        rows.append(row)
    return GridResult(rows, list(text_scales), list(image_scales), seed, list(dict.fromkeys(warnings)))
