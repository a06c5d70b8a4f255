"""Concepts for teaching the Shapes model with the trainer, and checking what it learned.

A concept is a shape in one colour: its training images are renders of the world at varied cells and backgrounds,
and a generated image shows the concept when its largest region's outline matches the shape's template better than
every other's. The cross and the moon (`UNSEEN_SHAPES`) are shapes the model has never seen, what DreamBooth teaches;
the purple heart and the red triangle are looks it can already draw, where Textual Inversion, which keeps the model
frozen, finds a word for them (and fails on the unseen ones: README, "Train a LoRA").
"""

import random

from PIL import Image

from studio.shapes.detect import classify_mask, detect
from studio.shapes.world import BACKGROUNDS, POSITIONS, SHAPES, UNSEEN_SHAPES, ShapeSpec, render

# name -> (shape, colour, the class noun DreamBooth's prompts use); the unseen shapes first
CONCEPTS = {"green cross": ("cross", "green", "star"), "yellow moon": ("moon", "yellow", "circle"),
            "purple heart": ("heart", "purple", "heart"), "red triangle": ("triangle", "red", "triangle")}


def concept_images(name: str, n: int = 5, *, side: int = 64, seed: int = 0) -> list[Image.Image]:
    """`n` renders of the concept, one shape each, at different cells, on each background in turn, all large: a LoRA
    taught small crosses too drew many small ones whose arms, a few pixels wide, blurred into a diamond."""
    shape, colour, _ = CONCEPTS[name]
    rng = random.Random(seed)
    cells = rng.sample(list(POSITIONS), n) if n <= len(POSITIONS) else rng.choices(list(POSITIONS), k=n)
    backgrounds = list(BACKGROUNDS)  # each in turn, so that no background comes to belong to the concept
    return [render([ShapeSpec(shape, colour, cell, "large")], (backgrounds[i % len(backgrounds)],), side)[0]
            for i, cell in enumerate(cells)]


def shown_shape(image: Image.Image) -> str | None:
    """The shape of the largest region, among the known shapes and the unseen ones; None when nothing is found."""
    found = detect(image)
    if not found:
        return None
    return classify_mask(max(found, key=lambda d: d.area).mask, SHAPES + UNSEEN_SHAPES)[0]
