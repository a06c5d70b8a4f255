"""Text-to-image generation with reproducible seeds and PNGs that carry their own parameters.

Every image's PNG holds the parameters that made it (an A1111-style "parameters" text chunk that other tools read,
and a JSON chunk this studio reads back), and the same parameters give the same pixels on the same device: the
starting noise of image i is drawn on the CPU from seed + i, so it does not depend on the GPU's random generator.
"""

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import studio
from studio.jobs import StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.sampling import SCHEDULERS, SIZE_MULTIPLE, check_prompt, pick_seed, seed_field, snap_size, txt2img


@dataclass
class GenerateParams(Params):
    """One text-to-image request. Field metadata gives the UI its ranges and help text."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = seed_field(-1, "-1 picks a random seed; image i uses seed + i.")
    steps: int = ranged(25, 1, 150, 1, "Denoising steps: more is slower and usually finer.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance: how closely to follow the prompt (1 = off).")
    width: int = ranged(512, 64, 2048, SIZE_MULTIPLE, "Pixels; rounded to a multiple of 8.")
    height: int = ranged(512, 64, 2048, SIZE_MULTIPLE, "Pixels; rounded to a multiple of 8.")
    scheduler: str = choice("DPM++ 2M", tuple(SCHEDULERS), "The sampler that walks the noise down; DPM++ 2M and "
                            "UniPC need the fewest steps.")
    n_images: int = ranged(1, 1, 8, 1, "Images per click, each from the next seed.")


@dataclass
class GenerateResult:
    images: list[Image.Image]
    seed: int
    metadata: list[dict]
    warnings: list[str]


def run_generate(pipe: DiffusionPipeline, params: GenerateParams, *, model_name: str = "",
                 on_step: StepFn | None = None, should_stop: StopFn | None = None) -> GenerateResult:
    """Generate `params.n_images` images. `pipe` is the caller's own (from `ModelManager.lend`): its scheduler is
    replaced here. Raises `Cancelled` if `should_stop()` turns true between steps."""
    # 1. Check inputs (the ranges were checked when `params` was built)
    warnings: list[str] = []
    bounds = {"lo": GenerateParams.meta("width")["min"], "hi": GenerateParams.meta("width")["max"]}
    width = snap_size(params.width, "width", warnings, **bounds)
    height = snap_size(params.height, "height", warnings, **bounds)
    for text in (params.prompt, params.negative_prompt):
        if warning := check_prompt(pipe.tokenizer, text):
            warnings.append(warning)
    if not params.prompt.strip():
        warnings.append("The prompt is empty: the model draws whatever it likes (unconditional sample).")
    params = replace(params, seed=pick_seed(params.seed, params.n_images), width=width, height=height)

    # 2. Denoise with per-image CPU generators, then decode ourselves (with the fp16 VAE guard)
    images = txt2img(pipe, params.prompt, seed=params.seed, n=params.n_images, steps=params.steps, cfg=params.cfg,
                     width=width, height=height, scheduler=params.scheduler, negative_prompt=params.negative_prompt,
                     on_step=on_step, should_stop=should_stop)
    device = str(pipe.unet.device)
    metadata = [image_metadata(params, i, model_name, device) for i in range(len(images))]
    return GenerateResult(images, params.seed, metadata, warnings)


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
    """The parameters saved in a studio PNG; raises ValueError for other files, and for parameters that are damaged
    or incomplete."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            text = image.info.get("diffusion-studio")
    except (OSError, SyntaxError):
        raise ValueError(f"{name} is not a PNG image.") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is far too large to be a picture made here.") from None
    if text is None:
        raise ValueError(f"{name} carries no Diffusion Studio parameters")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{name}: its Diffusion Studio parameters are damaged (not JSON).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: its Diffusion Studio parameters are not a set of named values.")
    if missing := [f.name for f in fields(GenerateParams) if f.name not in meta]:
        raise ValueError(f"{name}: its Diffusion Studio parameters lack {', '.join(missing)}.")
    return GenerateParams(**{f.name: meta[f.name] for f in fields(GenerateParams)})
