"""Text-to-image generation with reproducible seeds and PNGs that carry their own parameters.

Every image's PNG holds the parameters that made it (an A1111-style "parameters" text chunk that other tools read,
and a JSON chunk this studio reads back), and the same parameters give the same pixels on the same device: the
starting noise of image i is drawn on the CPU from seed + i, so it does not depend on the GPU's random generator.
"""

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import studio
from studio.params import Ranged, ranged
from studio.jobs import Cancelled, StepFn, StopFn
from studio.models import decode_latents, to_images

SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    # Latents are not bounded to [-1, 1]: a config that omits clip_sample would make DDIM clip them (grey images).
    "DDIM": (DDIMScheduler, {"clip_sample": False}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "UniPC": (UniPCMultistepScheduler, {}),
}
SIZE_MULTIPLE = 8  # the VAE's downsampling factor: latents are (height/8, width/8)
MAX_SEED = 2**32 - 1


@dataclass
class GenerateParams(Ranged):
    """One text-to-image request. Field metadata gives the UI its ranges and help text."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = ranged(-1, -1, MAX_SEED, 1, "-1 picks a random seed; image i uses seed + i.")
    steps: int = ranged(25, 1, 150, 1, "Denoising steps: more is slower and usually finer.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance: how closely to follow the prompt (1 = off).")
    width: int = ranged(512, 64, 2048, SIZE_MULTIPLE, "Pixels; rounded to a multiple of 8.")
    height: int = ranged(512, 64, 2048, SIZE_MULTIPLE, "Pixels; rounded to a multiple of 8.")
    scheduler: str = "DPM++ 2M"
    n_images: int = ranged(1, 1, 8, 1, "Images per click, each from the next seed.")


@dataclass
class GenerateResult:
    images: list[Image.Image]
    seed: int
    metadata: list[dict]
    warnings: list[str]


def check_prompt(tokenizer: Any, prompt: str) -> str | None:
    """A warning if the prompt is longer than the text encoder reads (77 tokens for CLIP), else None."""
    ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1])
    return (f"The prompt is {len(ids)} tokens; the text encoder reads only {limit}, so everything after "
            f"\"…{kept[-40:]}\" is ignored.")


def snap_size(value: int, name: str, warnings: list[str]) -> int:
    lo, hi = GenerateParams.meta(name)["min"], GenerateParams.meta(name)["max"]
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi} pixels, got {value}")
    snapped = max(lo, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if snapped != value:
        warnings.append(f"{name.capitalize()} {value} was rounded to {snapped}, a multiple of {SIZE_MULTIPLE}.")
    return snapped


def make_scheduler(name: str, config: dict) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def run_generate(pipe: DiffusionPipeline, params: GenerateParams, *, model_name: str = "",
                 on_step: StepFn | None = None, should_stop: StopFn | None = None) -> GenerateResult:
    """Generate `params.n_images` images. `pipe` is the caller's own (from `ModelManager.lend`): its scheduler is
    replaced here. Raises `Cancelled` if `should_stop()` turns true between steps."""
    # 1. Check inputs
    warnings: list[str] = []
    if not 1 <= params.n_images <= GenerateParams.meta("n_images")["max"]:
        raise ValueError(f"n_images must be between 1 and {GenerateParams.meta('n_images')['max']}")
    if not 1 <= params.steps <= GenerateParams.meta("steps")["max"]:
        raise ValueError(f"steps must be between 1 and {GenerateParams.meta('steps')['max']}")
    width, height = snap_size(params.width, "width", warnings), snap_size(params.height, "height", warnings)
    for text in (params.prompt, params.negative_prompt):
        if warning := check_prompt(pipe.tokenizer, text):
            warnings.append(warning)
    if not params.prompt.strip():
        warnings.append("The prompt is empty: the model draws whatever it likes (unconditional sample).")
    seed = random.randint(0, MAX_SEED - params.n_images) if params.seed < 0 else int(params.seed)
    params = GenerateParams(**{**asdict(params), "seed": seed, "width": width, "height": height})

    # 2. Scheduler and per-image generators (on the CPU, so the noise is the same whatever the device)
    pipe.scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(params.n_images)]

    def step_end(p: DiffusionPipeline, step: int, timestep: int, tensors: dict) -> dict:
        if on_step:
            on_step(step + 1, params.steps)
        if should_stop and should_stop():
            p._interrupt = True  # diffusers skips the remaining steps
        return tensors

    # 3. Denoise, then decode ourselves (with the fp16 VAE guard)
    latents = pipe(prompt=params.prompt, negative_prompt=params.negative_prompt or None,
                   num_inference_steps=params.steps, guidance_scale=params.cfg, width=width, height=height,
                   num_images_per_prompt=params.n_images, generator=generators, output_type="latent",
                   callback_on_step_end=step_end).images
    if should_stop and should_stop():
        raise Cancelled("Generation cancelled")
    images = to_images(decode_latents(pipe, latents))
    device = str(pipe.unet.device)
    metadata = [image_metadata(params, i, model_name, device) for i in range(len(images))]
    return GenerateResult(images, seed, metadata, warnings)


def image_metadata(params: GenerateParams, index: int, model_name: str, device: str) -> dict:
    return {**asdict(params), "index": index, "image_seed": params.seed + index, "model": model_name,
            "device": device, "versions": {"studio": studio.__version__, "diffusers": diffusers.__version__,
                                           "torch": torch.__version__, "transformers": transformers.__version__}}


def a1111_text(meta: dict) -> str:
    """The "parameters" text other tools (A1111, ComfyUI, civitai) read."""
    lines = [meta["prompt"]]
    if meta["negative_prompt"]:
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(f"Steps: {meta['steps']}, Sampler: {meta['scheduler']}, CFG scale: {meta['cfg']}, "
                 f"Seed: {meta['image_seed']}, Size: {meta['width']}x{meta['height']}, Model: {meta['model']}, "
                 f"Version: diffusion-studio {meta['versions']['studio']}")
    return "\n".join(lines)


def save_png(image: Image.Image, meta: dict, path: Path) -> Path:
    info = PngInfo()
    info.add_text("parameters", a1111_text(meta))
    info.add_text("diffusion-studio", json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def read_png_params(path: Path | str) -> GenerateParams:
    """The parameters saved in a studio PNG; raises ValueError for other images."""
    with Image.open(path) as image:
        text = image.info.get("diffusion-studio")
    if text is None:
        raise ValueError(f"{Path(path).name} carries no Diffusion Studio parameters")
    meta = json.loads(text)
    return GenerateParams(**{f.name: meta[f.name] for f in fields(GenerateParams)})
