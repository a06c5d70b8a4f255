"""ControlNet (Zhang & Agrawala, 2023) and T2I-Adapter (Mou et al., 2023): steer a frozen Stable Diffusion UNet with
a condition map (edges, depth, pose...).

A ControlNet is a trainable copy of the UNet's encoder joined to it by zero convolutions; it runs at every step on
the noisy latent, the text and the condition, and its outputs are added to the UNet's skip connections (Section
3.2, Eq. 2 of the paper). A T2I-Adapter is a small network run **once** on the condition; its multi-scale features
are added to the UNet encoder's features at every step (Mou et al., Section 3.2), so it costs almost nothing per step.

One denoising loop here runs up to three units of either kind at once (MultiControlNet: ControlNet residuals are
summed; MultiAdapter: adapter features are summed), each with its own conditioning scale and its own window of the
schedule (start/end, as fractions of the steps), guess mode (ControlNet sees only the conditional branch, with the
paper's scales from 0.1 at the shallowest block to 1.0 at the middle), the control modes of sd-webui-controlnet
(balanced; "my prompt is more important": per-block scales falling 0.825× a block from the middle down; "ControlNet
is more important": those scales, and the unconditional branch left uncontrolled, so guidance amplifies the control),
and txt2img or img2img. With every scale at 0 it is exactly the plain text-to-image loop of diffusers'
StableDiffusionPipeline.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, T2IAdapter
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageOps

from studio.images import flatten_alpha
from studio.jobs import PreviewFn, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.sampling import (SCHEDULERS, decode_latents, encode_image, make_scheduler,
                             pick_seed, sample_loop, seed_field, snap_size, text_context, to_images)

MAX_UNITS = 3
RESIZE_MODES = ("crop and resize", "resize", "resize and fill")
CONTROL_MODES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                 "control": "ControlNet is more important"}
SOFT_DECAY = 0.825  # sd-webui-controlnet's "soft injection": each block shallower than the middle gets 0.825×
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)  # its soft scales of a T2I-Adapter's four feature levels


@dataclass
class ControlUnit(Params):
    """One condition: a map and the ControlNet or T2I-Adapter that reads it. `scale` is diffusers'
    `controlnet_conditioning_scale` (`adapter_conditioning_scale`); `start`/`end` are `control_guidance_start/end`."""

    model: ControlNetModel | T2IAdapter
    condition: Image.Image
    scale: float = ranged(1.0, 0.0, 2.0, 0.05, "Strength (0 = off); 0–2 as in lllyasviel's apps.")
    start: float = ranged(0.0, 0.0, 1.0, 0.05, "Fraction of the steps before which the unit is off.")
    end: float = ranged(1.0, 0.0, 1.0, 0.05, "Fraction of the steps after which the unit is off.")
    name: str = ""

    def check(self) -> None:
        if not self.start < self.end:
            raise ValueError(f"{self.name or 'A condition'}: control must start before it ends, within 0–1 "
                             f"(got {self.start:g}–{self.end:g})")


@dataclass
class ControlParams(Params):
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = seed_field(0)
    steps: int = ranged(20, 1, 150, 1, "Denoising steps.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance (1 = off).")
    width: int = ranged(512, 64, 2048, 8, "Output pixels; the condition is fitted to this size.")
    height: int = ranged(512, 64, 2048, 8, "Output pixels; the condition is fitted to this size.")
    scheduler: str = choice("UniPC", tuple(SCHEDULERS), "The sampler; UniPC needs few steps.")
    guess_mode: bool = False  # ControlNet on the conditional branch only, with rising per-block scales
    control_mode: str = choice("balanced", CONTROL_MODES, "Who wins when the prompt and the map disagree "
                               "(sd-webui-controlnet's modes).")
    resize_mode: str = choice("crop and resize", RESIZE_MODES,
                              "crop: cover and cut the centre · resize: stretch · fill: fit inside, black around")
    strength: float = ranged(0.75, 0.01, 1.0, 0.01, "img2img: how much of the input image is re-drawn (diffusers' "
                                                     "`strength`).")

    def check(self) -> None:
        if self.guess_mode and self.control_mode != "balanced":
            raise ValueError("Guess mode sets its own per-block scales: use it with the balanced control mode, or "
                             "pick \"ControlNet is more important\" instead of guess mode.")


def control_scales(mode: str, n: int, adapter: bool = False) -> list[float]:
    """Multipliers of a unit's scale for each of its n residuals (a ControlNet's down blocks then its middle block;
    a T2I-Adapter's feature levels, shallow to deep). Balanced: all 1. The other two modes: sd-webui-controlnet's
    soft injection, 0.825^(n−1−i) for a ControlNet (0.1 at the shallowest of SD's 13, 1 at the middle) and
    (0.25, 0.62, 0.825, 1) for an adapter's four levels."""
    if mode not in CONTROL_MODES:
        raise ValueError(f"Unknown control mode '{mode}'; choose one of {', '.join(CONTROL_MODES)}")
    if mode == "balanced":
        return [1.0] * n
    if adapter:
        return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(ADAPTER_SOFT)), ADAPTER_SOFT).tolist()
    return [SOFT_DECAY ** (n - 1 - i) for i in range(n)]


@dataclass
class ControlResult:
    image: Image.Image
    conditions: list[Image.Image]  # each unit's map as the model saw it (fitted to the output size)
    seed: int
    seconds: float
    warnings: list[str]


def fit_condition(condition: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """Fit a map to (width, height): "resize" stretches it; "crop and resize" scales it to cover and crops the
    centre; "resize and fill" scales it to fit and pads with black (no condition) around it."""
    condition, _ = flatten_alpha(condition)
    if mode == "resize":
        return condition.resize(size, Image.BILINEAR)
    if mode == "crop and resize":
        return ImageOps.fit(condition, size, Image.BILINEAR)
    if mode == "resize and fill":
        return ImageOps.pad(condition, size, Image.BILINEAR, color="black")
    raise ValueError(f"Unknown resize mode '{mode}'; choose one of {', '.join(RESIZE_MODES)}")


def check_unit(unit: ControlUnit, unet_config: dict, index: int) -> None:
    """Does the unit's model fit this base model? (Its ranges were checked when the unit was built.)"""
    name = unit.name or f"unit {index + 1}"
    config = unit.model.config
    if isinstance(unit.model, ControlNetModel):
        fits = (config.cross_attention_dim == unet_config["cross_attention_dim"]
                and list(config.block_out_channels) == list(unet_config["block_out_channels"]))
    else:
        fits = list(config.channels) == list(unet_config["block_out_channels"])[: len(config.channels)]
    if not fits:
        raise ValueError(f"{name} was trained for another base model (its blocks do not match this UNet's "
                         f"{list(unet_config['block_out_channels'])}); pick a control model of the same family.")


def _condition_tensor(image: Image.Image, model: ControlNetModel | T2IAdapter, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    """A map as the models were trained on it: RGB (or grey for 1-channel adapters) in [0, 1], NCHW."""
    grey = isinstance(model, T2IAdapter) and model.config.in_channels == 1
    array = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32) / 255
    tensor = torch.from_numpy(array[..., None] if grey else array).permute(2, 0, 1)[None]
    return tensor.to(device, dtype)


def run_control(pipe: StableDiffusionPipeline, units: list[ControlUnit], params: ControlParams, *,
                init_image: Image.Image | None = None, on_step: StepFn | None = None,
                should_stop: StopFn | None = None, on_preview: PreviewFn | None = None) -> ControlResult:
    """Generate with up to three ControlNet/T2I-Adapter units (txt2img, or img2img from `init_image`)."""
    started = time.perf_counter()
    # 1. Check inputs
    warnings: list[str] = []
    if len(units) > MAX_UNITS:
        raise ValueError(f"At most {MAX_UNITS} conditions at once, got {len(units)}")
    for i, unit in enumerate(units):
        check_unit(unit, pipe.unet.config, i)
    width, height = snap_size(params.width, "width", warnings), snap_size(params.height, "height", warnings)
    seed = pick_seed(params.seed)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    use_cfg = params.cfg > 1
    # Guess mode and "ControlNet is more important" leave the unconditional branch uncontrolled.
    uncontrolled_branch = use_cfg and (params.guess_mode or params.control_mode == "control")

    # 2. Text embeddings
    context, cond = text_context(pipe, params.prompt, params.negative_prompt, use_cfg)

    # 3. Conditions at the output size; each adapter's features computed once, here, never per step
    fitted = [fit_condition(u.condition, (width, height), params.resize_mode) for u in units]
    maps = [_condition_tensor(image, u.model, device, dtype) for image, u in zip(fitted, units)]
    features: dict[int, list[torch.Tensor]] = {}
    for i, (unit, tensor) in enumerate(zip(units, maps)):
        if isinstance(unit.model, T2IAdapter):
            with torch.no_grad():
                levels = unit.model(tensor)
            scales = control_scales(params.control_mode, len(levels), adapter=True)
            features[i] = [f * unit.scale * s for f, s in zip(levels, scales)]
            if use_cfg:  # the adapter steers both branches, as in diffusers' StableDiffusionAdapterPipeline
                features[i] = [torch.cat([torch.zeros_like(f) if uncontrolled_branch else f, f])
                               for f in features[i]]

    # 4. Timesteps and the starting latent (pure noise, or the init image noised to `strength`)
    scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
    scheduler.set_timesteps(params.steps, device=device)
    timesteps = scheduler.timesteps
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if init_image is None:
        x = noise * scheduler.init_noise_sigma
    else:
        init = flatten_alpha(init_image)[0].resize((width, height), Image.LANCZOS)
        skip = params.steps - max(1, round(params.steps * params.strength))
        timesteps = timesteps[skip * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip * scheduler.order)
        x = scheduler.add_noise(encode_image(pipe, init), noise, timesteps[:1])

    # 5. Denoising loop: each active unit adds its residuals to the UNet's
    n = len(timesteps)

    def residuals(i: int, t: torch.Tensor, model_in: torch.Tensor) -> dict:
        down, mid, intrablock = None, None, None
        for k, (unit, tensor) in enumerate(zip(units, maps)):
            if i / n < unit.start or (i + 1) / n > unit.end or unit.scale == 0:
                continue  # outside its window: no residual (diffusers would still run it at scale 0)
            if k in features:
                add = features[k]
                intrablock = add if intrablock is None else [a + b for a, b in zip(intrablock, add)]
                continue
            cn_in, cn_text = (model_in.chunk(2)[1], cond) if uncontrolled_branch else (model_in, context)
            d, m = unit.model(cn_in, t, encoder_hidden_states=cn_text,
                              controlnet_cond=tensor.expand(cn_in.shape[0], -1, -1, -1),
                              conditioning_scale=unit.scale, guess_mode=params.guess_mode, return_dict=False)
            if params.control_mode != "balanced":
                *soft, s_mid = control_scales(params.control_mode, len(d) + 1)
                d, m = [r * s for r, s in zip(d, soft)], m * s_mid
            if uncontrolled_branch:
                d, m = [torch.cat([torch.zeros_like(r), r]) for r in d], torch.cat([torch.zeros_like(m), m])
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        # the UNet pops the adapter's features as it goes: give it a fresh list each step
        return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid,
                    down_intrablock_additional_residuals=None if intrablock is None else list(intrablock))

    x = sample_loop(pipe, scheduler, x, context, params.cfg, timesteps=timesteps, generator=[generator],
                residuals=residuals, on_step=on_step, should_stop=should_stop, on_preview=on_preview)

    # 6. Decode (with the fp16 VAE guard)
    image = to_images(decode_latents(pipe, x))[0]
    return ControlResult(image, fitted, seed, time.perf_counter() - started, warnings)
