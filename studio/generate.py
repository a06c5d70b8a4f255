"""Text-to-image generation with reproducible seeds.

The same parameters give the same pixels on the same device: the starting noise of image i is drawn on the CPU from
seed + i, so it does not depend on the GPU's random generator. Each image's metadata (its seed, the versions) goes
into its PNG with the rest of its recipe (studio/pnginfo.py).
"""

from dataclasses import asdict, dataclass, replace

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline
from PIL import Image

import studio
from studio.jobs import PreviewFn, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.sampling import SCHEDULERS, SIZE_MULTIPLE, pick_seed, seed_field, snap_size, txt2img


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
                 on_step: StepFn | None = None, should_stop: StopFn | None = None,
                 on_preview: PreviewFn | None = None) -> GenerateResult:
    """Generate `params.n_images` images. `pipe` is the caller's own (from `ModelManager.lend`): its scheduler is
    replaced here. Raises `Cancelled` if `should_stop()` turns true between steps."""
    # 1. Check inputs (the ranges were checked when `params` was built)
    warnings: list[str] = []
    bounds = {"lo": GenerateParams.meta("width")["min"], "hi": GenerateParams.meta("width")["max"]}
    width = snap_size(params.width, "width", warnings, **bounds)
    height = snap_size(params.height, "height", warnings, **bounds)
    if not params.prompt.strip():
        warnings.append("The prompt is empty: the model draws whatever it likes (unconditional sample).")
    params = replace(params, seed=pick_seed(params.seed, params.n_images), width=width, height=height)

    # 2. Denoise with per-image CPU generators, then decode ourselves (with the fp16 VAE guard)
    images = txt2img(pipe, params.prompt, seed=params.seed, n=params.n_images, steps=params.steps, cfg=params.cfg,
                     width=width, height=height, scheduler=params.scheduler, negative_prompt=params.negative_prompt,
                     on_step=on_step, should_stop=should_stop, on_preview=on_preview)
    device = str(pipe.unet.device)
    metadata = [image_metadata(params, i, model_name, device) for i in range(len(images))]
    return GenerateResult(images, params.seed, metadata, warnings)


def image_metadata(params: GenerateParams, index: int, model_name: str, device: str) -> dict:
    return {**asdict(params), "index": index, "image_seed": params.seed + index, "model": model_name,
            "device": device, "versions": {"studio": studio.__version__, "diffusers": diffusers.__version__,
                                           "torch": torch.__version__, "transformers": transformers.__version__}}
