"""Measure a Shapes model against the world's ground truth.

    python -m studio.shapes.evaluate --model models/shapes/sd --n 200 [--card models/shapes/README.md]
        [--controlnet shapes-controlnet] [--adapter shapes-t2i-adapter] [--ip2p shapes-ip2p]

For held-out (colour, shape, position) captions, generate one image per caption and run the OpenCV detector on it;
each named shape is matched with the detection nearest to its grid cell, whose colour, class and cell are scored. For
one-shape captions the figures are colour, shape class and position accuracy (the bars); for two- and three-shape
captions they are the same figures per named shape (attribute binding, reported without a bar). With a ControlNet
or T2I-Adapter, the condition is the Canny map of a held-out scene and the figure is the silhouette IoU between the
scene's shapes and the detected ones. With an InstructPix2Pix model, held-out edits of each kind
(`studio.shapes.edits`) are judged by the detector: the edit done, the other shapes kept.
"""

import argparse
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionInstructPix2PixPipeline,
)
from PIL import Image

from studio.generate import GenerateParams
from studio.ip2p import IP2PParams, run_ip2p
from studio.models import ModelManager
from studio.sampling import make_scheduler
from studio.shapes import independent
from studio.shapes.detect import detect, iou
from studio.shapes.edits import EDITS, judge, sample_edit
from studio.shapes.world import caption_for, sample_scene

CARD_START, CARD_END = "<!-- quality table -->", "<!-- end quality table -->"


@dataclass
class Score:
    n: int = 0
    colour: int = 0
    shape: int = 0
    position: int = 0

    def row(self, name: str) -> str:
        pct = [f"{100 * x / max(self.n, 1):.1f}%" for x in (self.colour, self.shape, self.position)]
        return f"| {name} | {self.n} | {' | '.join(pct)} |"


def sample(pipe: DiffusionPipeline, prompts: list[str], seed: int, params: GenerateParams,
           **extra: object) -> list[Image.Image]:
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=params.steps, guidance_scale=params.cfg, generator=generators,
                height=params.height, width=params.width, **extra).images


def score_text(pipe: DiffusionPipeline, n_shapes: int, n: int, params: GenerateParams, batch: int = 8) -> Score:
    score = Score()
    scenes = [sample_scene(10_000 + i, n_shapes=n_shapes, split="held_out") for i in range(n)]
    for start in range(0, n, batch):
        chunk = scenes[start : start + batch]
        # The prompt names the shapes only; the background is left to the model.
        prompts = [re.sub(r", on a .* background$", "", caption_for(s.shapes, s.background)) for s in chunk]
        for scene, image in zip(chunk, sample(pipe, prompts, start, params)):
            found = detect(image)
            for spec in scene.shapes:
                score.n += 1
                if not found:
                    continue
                # The detection meant for this named shape: the one nearest to where the caption puts it.
                cx, cy = spec.centre(image.width)
                d = min(found, key=lambda d: np.hypot(*(np.argwhere(d.mask).mean(0) - (cy, cx))))
                score.colour += d.colour == spec.colour
                score.shape += d.shape == spec.shape
                score.position += d.position == spec.position
    return score


def silhouette_iou(pipe: DiffusionPipeline, n: int, params: GenerateParams, **extra) -> float:
    from studio.shapes.train import canny

    ious = []
    for i in range(n):
        scene = sample_scene(20_000 + i, side=params.width, split="held_out")
        condition = Image.fromarray(canny(np.asarray(scene.image)))
        image = sample(pipe, [caption_for(scene.shapes, scene.background)], i, params, image=condition, **extra)[0]
        truth = np.any(scene.masks, axis=0)
        found = np.zeros_like(truth)
        for detection in detect(image):
            found |= detection.mask
        ious.append(iou(truth, found))
    return float(np.mean(ious))


@dataclass
class EditScore:
    """InstructPix2Pix edits of one kind: how many did what they were told (`done`), kept every shape they did not
    name (`kept`), and those shapes' mask IoU with the input."""

    n: int = 0
    done: int = 0
    kept: int = 0
    ious: list[float] = field(default_factory=list)

    def add(self, other: "EditScore") -> None:
        self.n, self.done, self.kept = self.n + other.n, self.done + other.done, self.kept + other.kept
        self.ious += other.ious

    def rate(self, what: str) -> float:
        return getattr(self, what) / max(self.n, 1)

    def row(self, name: str) -> str:
        iou_text = f"{np.mean(self.ious):.3f}" if self.ious else "–"
        return f"| {name} | {self.n} | {100 * self.rate('done'):.1f}% | {100 * self.rate('kept'):.1f}% | {iou_text} |"


def score_edits(pipe: DiffusionPipeline, n: int, params: IP2PParams, *, kinds: tuple[str, ...] = EDITS,
                split: str = "held_out", first_seed: int = 1_000_000, drawn: str = "world") -> dict[str, EditScore]:
    """`n` edits of each kind (held-out combinations of edit, shape and value by default, on scenes the model was
    not trained on), each judged by the detector; seed i for the i-th edit of a kind. `drawn="independent"` gives
    the model the same scenes drawn by other code (`studio.shapes.independent`)."""
    if drawn not in ("world", "independent"):
        raise ValueError(f"drawn must be 'world' or 'independent', not {drawn!r}")
    scores = {}
    for kind in kinds:
        score = scores[kind] = EditScore()
        for i in range(n):
            edit = sample_edit(first_seed + i, kind=kind, split=split)
            if drawn == "independent":
                edit = replace(edit, before=independent.render(edit.before.shapes, edit.before.background, seed=i))
            image = run_ip2p(pipe, edit.before.image, replace(params, instruction=edit.instruction, seed=i)).image
            verdict = judge(edit, image)
            score.n, score.done, score.kept = score.n + 1, score.done + verdict.done, score.kept + verdict.kept
            score.ious += [] if verdict.iou is None else [verdict.iou]
    return scores


def pooled(scores: dict[str, EditScore]) -> EditScore:
    """Every kind's edits as one score."""
    total = EditScore()
    for score in scores.values():
        total.add(score)
    return total


def edit_table(scores: dict[str, EditScore]) -> str:
    return "\n".join(["| edit | n | done | others kept | their mask IoU |", "|---|---|---|---|---|",
                      *(score.row(kind) for kind, score in scores.items()), pooled(scores).row("all")])


def guidance_scores(pipe: DiffusionPipeline, n: int, params: IP2PParams, text_scales: list[float],
                    image_scales: list[float], kinds: tuple[str, ...] = ("recolour", "reshape")) -> dict:
    """(s_T, s_I) -> all kinds' EditScore of `score_edits` at those scales: the paper's guidance trade-off."""
    grid = {}
    for s_text in text_scales:
        for s_image in image_scales:
            grid[s_text, s_image] = pooled(score_edits(
                pipe, n, replace(params, text_guidance=s_text, image_guidance=s_image), kinds=kinds))
    return grid


def evaluate(model: str, n: int, *, controlnet: str | None = None, adapter: str | None = None,
             ip2p: str | None = None, steps: int = 20, cfg: float = 7.5, device: str | None = None) -> str:
    """Run the evaluation and return the markdown table."""
    manager = ModelManager(device)
    params = GenerateParams(steps=steps, cfg=cfg, width=64, height=64)
    pipe = manager.pipeline(model)
    pipe.scheduler = make_scheduler("DPM++ 2M", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lines = ["| captions | named shapes | colour | shape | position |", "|---|---|---|---|---|"]
    for k in (1, 2, 3):
        lines.append(score_text(pipe, k, n if k == 1 else max(n // 4, 4), params).row(f"{k} shape{'s' * (k > 1)}"))
    for name, spec, cls, key in (("ControlNet", controlnet, StableDiffusionControlNetPipeline, "controlnet"),
                                 ("T2I-Adapter", adapter, StableDiffusionAdapterPipeline, "adapter")):
        if spec:
            derived = manager.pipeline(model, cls, **{key: manager.component(spec)})
            derived.scheduler = pipe.scheduler
            derived.set_progress_bar_config(disable=True)
            lines.append(f"\n{name} silhouette IoU (held-out scenes, n={max(n // 4, 4)}): "
                         f"{silhouette_iou(derived, max(n // 4, 4), params):.3f}")
    if ip2p:
        with manager.lend(model, StableDiffusionInstructPix2PixPipeline, unet=manager.instruct_unet(ip2p)) as edit:
            for drawn in ("world", "independent"):
                scores = score_edits(edit, max(n // 4, 4), IP2PParams(steps=steps, resolution=64,
                                                                      scheduler="DPM++ 2M"), drawn=drawn)
                lines.append(f"\nInstructPix2Pix ({ip2p}), held-out edits on scenes drawn by the {drawn} renderer, "
                             f"{steps} DPM++ 2M steps, s_T 7.5, s_I 1.5:\n")
                lines.append(edit_table(scores))
    return "\n".join(lines)


def write_card(card: Path, table: str) -> None:
    text = card.read_text()
    block = f"{CARD_START}\n{table}\n{CARD_END}"
    text = re.sub(re.escape(CARD_START) + ".*" + re.escape(CARD_END), block, text, flags=re.S) \
        if CARD_START in text else text + "\n" + block + "\n"
    card.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/shapes/sd")
    p.add_argument("--controlnet", help="catalog name, e.g. shapes-controlnet")
    p.add_argument("--adapter", help="catalog name, e.g. shapes-t2i-adapter")
    p.add_argument("--ip2p", help="catalog name, e.g. shapes-ip2p")
    p.add_argument("--n", type=int, default=200, help="one-shape captions; multi-shape and IoU use n/4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--device")
    p.add_argument("--card", type=Path, help="also write the table into this model card")
    args = p.parse_args(argv)
    table = evaluate(args.model, args.n, controlnet=args.controlnet, adapter=args.adapter, ip2p=args.ip2p,
                     steps=args.steps,
                     cfg=args.cfg, device=args.device)
    print(table)
    if args.card:
        write_card(args.card, table)


if __name__ == "__main__":
    main()
