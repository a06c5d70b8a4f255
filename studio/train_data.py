"""The trainer's data: instance images (checked, augmented, VAE-encoded once), the class images DreamBooth's prior
needs (drawn by the frozen base model, cached on disk), and the job folder that makes a job resumable.

The VAE encode of a 512 image costs more than a UNet forward, so every augmented view (crop x flip) is encoded once
before the first step; a step only indexes the cache.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from studio.images import MAX_PIXELS, flatten_alpha, load_image
from studio.jobs import StopFn
from studio.models import ModelManager
from studio.sampling import encode_image, txt2img

MIN_IMAGES, MAX_IMAGES = 3, 20
RANDOM_CROPS = 4  # crops cached per image with crop="random"
CLASS_BATCH = 4  # class images drawn per model call


def check_images(images: list[Image.Image | str | Path], max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """Readable RGB images (transparency placed on white), 3 to 20 of them."""
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise ValueError(f"Give {MIN_IMAGES} to {MAX_IMAGES} images of the subject; got {len(images)}.")
    out = []
    for item in images:
        image = load_image(item, max_pixels=max_pixels)
        if min(image.size) < 32:
            raise ValueError(f"An image is {image.width}×{image.height}; the subject needs at least 32 pixels a side.")
        out.append(flatten_alpha(image)[0])
    return out


def check_concepts(concepts: list[list | None], max_pixels: int = MAX_PIXELS) -> list[list[Image.Image]]:
    """`check_images` for each concept's images; with several concepts a message says which one."""
    checked = []
    for k, images in enumerate(concepts):
        try:
            checked.append(check_images(images or [], max_pixels))
        except ValueError as error:
            raise ValueError(f"Concept {k + 1}: {error}" if len(concepts) > 1 else str(error)) from None
    return checked


def views(image: Image.Image, resolution: int, crop: str, flip: bool, generator: torch.Generator) -> list[Image.Image]:
    """Augmented copies: shorter side scaled to `resolution`, a centre crop or RANDOM_CROPS random ones, and their
    mirror images with `flip`."""
    scale = resolution / min(image.size)
    image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                         Image.BICUBIC)
    spare_x, spare_y = image.width - resolution, image.height - resolution
    if crop == "center":
        corners = [(spare_x // 2, spare_y // 2)]
    else:
        corners = [(int(torch.randint(spare_x + 1, (1,), generator=generator)),
                    int(torch.randint(spare_y + 1, (1,), generator=generator))) for _ in range(RANDOM_CROPS)]
    crops = [image.crop((x, y, x + resolution, y + resolution)) for x, y in corners]
    return crops + [ImageOps.mirror(c) for c in crops] if flip else crops


def encode_views(pipe: Any, images: list[Image.Image], resolution: int, crop: str, flip: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """VAE latents of every view of every image, (N, C, h, w) on the UNet's device and dtype."""
    every = [v for image in images for v in views(image, resolution, crop, flip, generator)]
    return torch.cat([encode_image(pipe, v) for v in every])


def class_folder(manager: ModelManager, spec: str, class_prompt: str, resolution: int, cache: Path) -> Path:
    """Where the class images of this model, prompt and resolution are cached (later jobs of the class reuse them)."""
    key = hashlib.sha1(json.dumps([manager.resolve(spec).location, class_prompt, resolution])
                       .encode()).hexdigest()[:12]
    return cache / key


def class_images(manager: ModelManager, spec: str, class_prompt: str, n: int, resolution: int, cache: Path,
                 should_stop: StopFn | None = None) -> list[Image.Image]:
    """`n` images of the class prompt drawn by the base model (seeds 0, 1, ...), cached on disk (`class_folder`);
    only the missing ones are drawn, so a call for fewer than all draws a share of them."""
    folder = class_folder(manager, spec, class_prompt, resolution, cache)
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    while have < n:
        batch = min(CLASS_BATCH, n - have)
        with manager.lend(spec) as pipe:
            pipe.set_progress_bar_config(disable=True)
            images = txt2img(pipe, class_prompt, seed=have, n=batch, width=resolution, height=resolution,
                             should_stop=should_stop)
        for i, image in enumerate(images):
            image.save(folder / f"{have + i:05d}.png")
        have += batch
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))[:n]]


def check_new_job(folder: Path) -> None:
    if (folder / "job.json").exists():
        raise ValueError(f"A job named {folder.name!r} exists already: Resume it, or choose another name.")


def check_resumable(folder: Path) -> None:
    if not (folder / "job.json").exists():
        raise ValueError(f"There is no job named {folder.name!r} to resume.")


def save_job(folder: Path, spec: str, settings: dict, concepts: list[list[Image.Image]]) -> None:
    """The job's images (a folder per concept: `instance`, `instance-2`) and settings, so it can resume without the
    browser that started it."""
    check_new_job(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, images in enumerate(concepts):
        (folder / instance_folder(k)).mkdir()
        for i, image in enumerate(images):
            image.save(folder / instance_folder(k) / f"{i:02d}.png")
    (folder / "job.json").write_text(json.dumps({"model": spec, "params": settings}, indent=2))


def instance_folder(k: int) -> str:
    return "instance" if k == 0 else f"instance-{k + 1}"


def raise_steps(folder: Path, steps: int) -> None:
    """Resume with more steps: the job's saved total becomes `steps` if that is more."""
    job = json.loads((folder / "job.json").read_text())
    job["params"]["steps"] = max(job["params"]["steps"], int(steps))
    (folder / "job.json").write_text(json.dumps(job, indent=2))


def load_job(folder: Path) -> tuple[str, dict, list[list[Image.Image]]]:
    """(model, settings as saved, each concept's images) of a job folder."""
    check_resumable(folder)
    job = json.loads((folder / "job.json").read_text())
    concepts, k = [], 0
    while (folder / instance_folder(k)).is_dir():
        concepts.append([Image.open(p).convert("RGB") for p in sorted((folder / instance_folder(k)).glob("*.png"))])
        k += 1
    return job["model"], job["params"], concepts
