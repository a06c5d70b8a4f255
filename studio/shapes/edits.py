"""Instruction edits in the Shapes world: exact (scene, instruction, edited scene) triples, for InstructPix2Pix.

An edit takes a world scene and changes one thing: a shape's colour ("make the star green"), its shape ("turn the
square into a heart"), its place ("move the circle to the top left"), adds or removes a shape, or changes the
background. The edited scene is rendered by the world itself, so everything the instruction does not name stays
pixel for pixel the same, and the ground truth of both scenes is known. Instructions are phrased several ways.
One (edit, shape, new value) combination in eight is held out of training (`HELD_OUT_EDITS`) to measure whether
the model generalises, e.g. it has recoloured stars and made other shapes green, but never made a star green.
"""

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from studio.shapes.detect import detect, iou
from studio.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    PHRASE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeSpec,
    caption_for,
    far_apart,
    render,
    sample_scene,
)

EDITS = ("recolour", "reshape", "move", "add", "remove", "background")
PHRASINGS = {
    "recolour": ("make {ref} {value}", "turn {ref} {value}", "colour {ref} {value}", "paint {ref} {value}",
                 "change the color of {ref} to {value}"),
    "reshape": ("turn {ref} into a {value}", "make {ref} a {value}", "replace {ref} with a {value}",
                "change {ref} into a {value}"),
    "move": ("move {ref} to the {value}", "put {ref} {where}"),
    "add": ("add {thing} {where}", "draw {thing} {where}", "put {thing} {where}"),
    "remove": ("remove {ref}", "delete {ref}", "take away {ref}", "get rid of {ref}"),
    "background": ("put it on a {value} background", "make the background {value}",
                   "change the background to {value}"),
}


def _combinations() -> list[tuple[str, str, str]]:
    """(edit, the shape it acts on, the new value) for every edit but the background's, which has too few."""
    return ([("recolour", s, c) for s in SHAPES for c in COLOURS] + [("reshape", s, t) for s in SHAPES for t in SHAPES
            if s != t] + [("move", s, p) for s in SHAPES for p in POSITIONS]
            + [(kind, s, c) for kind in ("add", "remove") for s in SHAPES for c in COLOURS])


def _held_out() -> frozenset[tuple[str, str, str]]:
    rng = random.Random(4321)
    combos = _combinations()
    return frozenset(rng.sample(combos, len(combos) // 8))


HELD_OUT_EDITS = _held_out()


@dataclass
class Edit:
    """`before.shapes[i]` is `after.shapes[i]` changed or not; an added shape is last in `after`, a removed one is
    gone from it. `target` indexes the shape the instruction names in `before` (for "add": in `after`; None for a
    background edit)."""

    kind: str
    instruction: str
    before: Scene
    after: Scene
    target: int | None
    value: str  # the new colour, shape, position or background

    @property
    def combination(self) -> tuple[str, str, str] | None:
        if self.kind == "background":
            return None
        shapes = self.after.shapes if self.kind == "add" else self.before.shapes
        return self.kind, shapes[self.target].shape, self.value


def _refer(spec: ShapeSpec, others: list[ShapeSpec], rng: random.Random) -> str:
    """The shortest unambiguous name, sometimes with the colour added anyway (people say "the red star" too)."""
    if any(o.shape == spec.shape and o.colour == spec.colour for o in others):
        return f"the {spec.shape} {PHRASE[spec.position]}"
    if any(o.shape == spec.shape for o in others) or rng.random() < 0.5:
        return f"the {spec.colour} {spec.shape}"
    return f"the {spec.shape}"


def _scene(shapes: list[ShapeSpec], background: tuple[str, ...], side: int) -> Scene:
    image, masks = render(shapes, background, side)
    return Scene(image, caption_for(shapes, background), shapes, background, masks)


def make_edit(before: Scene, kind: str, rng: random.Random, side: int = 64) -> Edit | None:
    """A random edit of `kind` on `before`, or None where the scene leaves no room for one (e.g. nowhere to move)."""
    shapes, background = before.shapes, before.background
    if kind == "background":
        value = rng.choice([b for b in BACKGROUNDS if (b,) != background])
        text = rng.choice(PHRASINGS[kind]).format(value=value)
        return Edit(kind, text, before, _scene(shapes, (value,), side), None, value)
    if kind == "add":
        free = [p for p in POSITIONS if all(far_apart(p, s.position) for s in shapes)]
        if not free or len(shapes) >= 3:
            return None
        spec = ShapeSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(free), rng.choice(list(SIZES)))
        thing = f"a {spec.size} {spec.colour} {spec.shape}" if rng.random() < 0.5 else f"a {spec.colour} {spec.shape}"
        text = rng.choice(PHRASINGS[kind]).format(thing=thing, where=PHRASE[spec.position])
        return Edit(kind, text, before, _scene([*shapes, spec], background, side), len(shapes), spec.colour)
    target = rng.randrange(len(shapes))
    spec, others = shapes[target], shapes[:target] + shapes[target + 1:]
    ref = _refer(spec, others, rng)
    if kind == "remove":
        if not others:  # the world has no empty scenes, so neither does its edit model
            return None
        text = rng.choice(PHRASINGS[kind]).format(ref=ref)
        return Edit(kind, text, before, _scene(others, background, side), target, spec.colour)
    if kind == "recolour":
        value = rng.choice([c for c in COLOURS if c != spec.colour])
        changed = replace(spec, colour=value)
    elif kind == "reshape":
        value = rng.choice([s for s in SHAPES if s != spec.shape])
        changed = replace(spec, shape=value)
    elif kind == "move":
        free = [p for p in POSITIONS if p != spec.position and all(far_apart(p, o.position) for o in others)]
        if not free:
            return None
        value = rng.choice(free)
        changed = replace(spec, position=value)
    else:
        raise ValueError(f"unknown edit {kind!r}; choose from {EDITS}")
    text = rng.choice(PHRASINGS[kind]).format(ref=ref, value=value, where=PHRASE[value] if kind == "move" else "")
    after = [changed if i == target else s for i, s in enumerate(shapes)]
    return Edit(kind, text, before, _scene(after, background, side), target, value)


def sample_edit(seed: int, *, kind: str | None = None, split: str = "train", side: int = 64) -> Edit:
    """The edit of `seed`, on a world training scene. `split="held_out"` draws only held-out combinations (and
    background edits, which have none), "train" never does."""
    rng = random.Random(seed)
    kind = kind or rng.choice(EDITS)
    while True:
        edit = make_edit(sample_scene(rng.randrange(2**31), side=side), kind, rng, side)
        if edit is not None and (edit.combination in HELD_OUT_EDITS) == (split == "held_out" and kind != "background"):
            return edit


@dataclass
class Judgement:
    """What the detector sees in an edit's output. `done`: the instructed change is there; `kept`: every shape the
    instruction does not name is still there in its colour, shape and place; `iou`: the least mask IoU of those
    shapes with their input masks (None if there are none)."""

    done: bool
    kept: bool
    iou: float | None


def on_background(image: np.ndarray, shapes: list, name: str) -> bool:
    """Whether nine in ten of the pixels outside every detected shape are the background `name` (within 40 of its
    grey level): a two-tone background is then not "white" although half of it is."""
    outside = ~np.any([d.mask for d in shapes], axis=0) if shapes else np.ones(image.shape[:2], bool)
    close = np.abs(image[outside].mean(-1) - BACKGROUNDS[name][0]) < 40
    return bool(close.size and close.mean() >= 0.9)


def judge(edit: Edit, image: Image.Image | np.ndarray) -> Judgement:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    found = detect(rgb)

    def seen(spec: ShapeSpec) -> bool:
        return any((d.shape, d.colour, d.position) == (spec.shape, spec.colour, spec.position) for d in found)

    if edit.kind == "background":
        done = on_background(rgb, found, edit.value)
    elif edit.kind == "remove":
        gone = edit.before.shapes[edit.target]
        done = not any((d.colour, d.position) == (gone.colour, gone.position) for d in found)
    else:
        done = seen(edit.after.shapes[edit.target])
    named = {edit.target} if edit.kind in ("recolour", "reshape", "move", "remove") else set()
    untouched = [(spec, mask) for i, (spec, mask) in enumerate(zip(edit.before.shapes, edit.before.masks))
                 if i not in named]
    ious = [max((iou(d.mask, mask) for d in found), default=0.0) for _, mask in untouched]
    return Judgement(done, all(seen(spec) for spec, _ in untouched), min(ious) if ious else None)
