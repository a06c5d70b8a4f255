"""Concepts the Shapes model has never seen, for teaching it with the LoRA trainer and checking what it learned.

A concept is a shape of `UNSEEN_SHAPES` in one colour: its training images are renders of the world at varied cells,
sizes and backgrounds, and a generated image shows the concept when its largest region's outline matches the new
shape's template better than every known shape's.
"""

import random

from PIL import Image

from studio.shapes.detect import classify_mask, detect
from studio.shapes.world import BACKGROUNDS, POSITIONS, SHAPES, SIZES, UNSEEN_SHAPES, ShapeSpec, render

# name -> (shape, colour, the class noun DreamBooth's prompts use)
CONCEPTS = {"green cross": ("cross", "green", "star")}


def concept_images(name: str, n: int = 5, *, side: int = 64, seed: int = 0) -> list[Image.Image]:
    """`n` renders of the concept, one shape each, at different cells, sizes and backgrounds."""
    shape, colour, _ = CONCEPTS[name]
    rng = random.Random(seed)
    cells = rng.sample(list(POSITIONS), n) if n <= len(POSITIONS) else rng.choices(list(POSITIONS), k=n)
    return [render([ShapeSpec(shape, colour, cell, rng.choice(list(SIZES)))],
                   (rng.choice(list(BACKGROUNDS)),), side)[0] for cell in cells]


def shown_shape(image: Image.Image) -> str | None:
    """The shape of the largest region, among the known shapes and the unseen ones; None when nothing is found."""
    found = detect(image)
    if not found:
        return None
    return classify_mask(max(found, key=lambda d: d.area).mask, SHAPES + UNSEEN_SHAPES)[0]
