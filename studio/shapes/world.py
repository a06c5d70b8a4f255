"""The Shapes world: procedural scenes of 1-3 coloured shapes with English captions and exact ground truth.

Every scene is a pure function of its seed. Shapes sit in the cells of a 3x3 grid ("at the top left", "in the
center"), come in two sizes, and never overlap (cells of a scene are at least two cells apart). Shape colours are
saturated and well separated in hue; backgrounds are achromatic (white, gray, black, or two of them split in half),
so colour alone separates a shape from its background. Some (colour, shape, position) combinations are held out of
training to measure generalisation (`HELD_OUT`).
"""

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
# Drawn only as concepts to teach the model (the LoRA trainer's Shapes presets); `sample_scene` never uses them, so
# the shipped model has never seen one.
UNSEEN_SHAPES = ("cross", "moon")
COLOURS = {"red": (220, 30, 30), "yellow": (235, 205, 20), "green": (30, 170, 50), "blue": (30, 70, 225),
           "purple": (150, 40, 200)}
BACKGROUNDS = {"white": (255, 255, 255), "gray": (128, 128, 128), "black": (0, 0, 0)}
POSITIONS = {  # name -> (row, column) in the 3x3 grid
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
PHRASE = {"top left": "at the top left", "top": "at the top", "top right": "at the top right", "left": "on the left",
          "center": "in the center", "right": "on the right", "bottom left": "at the bottom left",
          "bottom": "at the bottom", "bottom right": "at the bottom right"}
SIZES = {"small": 0.125, "large": 0.17}  # half the bounding box, as a fraction of the image side
SUPERSAMPLE = 4  # draw 4x larger, then downsample: smooth edges like a real image


def _held_out() -> frozenset[tuple[str, str, str]]:
    """One (colour, shape, position) triple in ten, fixed forever, never shown in training."""
    rng = random.Random(1234)
    triples = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    return frozenset(rng.sample(triples, len(triples) // 10))


HELD_OUT = _held_out()


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    position: str
    size: str

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.position

    def centre(self, side: int) -> tuple[float, float]:
        row, col = POSITIONS[self.position]
        return (col + 0.5) * side / 3, (row + 0.5) * side / 3


@dataclass
class Scene:
    """An image, its caption, and the ground truth: one boolean mask per shape (aligned with `shapes`)."""

    image: Image.Image
    caption: str
    shapes: list[ShapeSpec]
    background: tuple[str, ...]
    masks: list[np.ndarray] = field(repr=False)


def outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The polygon of a shape centred at (cx, cy) inside a 2r x 2r box (y grows downwards)."""
    if shape == "circle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    if shape == "square":
        k = 0.85 * r  # a square looks larger than a circle of the same box: shrink it a little
        return [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.sin(i * math.pi / 5),
                 cy - (r if i % 2 == 0 else 0.45 * r) * math.cos(i * math.pi / 5)) for i in range(10)]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [(cx + r * xi / 16.5, cy - r * (yi + 2.5) / 15) for xi, yi in zip(x, y)]
    if shape == "cross":  # a plus sign with arms a third of the box wide
        w = r / 3
        corners = [(w, r), (w, w), (r, w)]  # one quarter, counter-clockwise from the bottom arm
        quarter = [(cx + a, cy + b) for a, b in corners]
        return [*quarter, *[(cx + b, cy - a) for a, b in corners], *[(cx - a, cy - b) for a, b in corners],
                *[(cx - b, cy + a) for a, b in corners]]
    if shape == "moon":  # a crescent opening to the right: the box's circle less a circle shifted right
        d, inner = 0.55 * r, 0.85 * r
        x = (r * r - inner * inner + d * d) / (2 * d)  # where the two circles cross, at (x, ±y) from the centre
        y = math.sqrt(r * r - x * x)
        outer_from, inner_from = math.atan2(y, x), math.atan2(y, x - d)
        return [*((cx + r * math.cos(a), cy + r * math.sin(a))
                  for a in np.linspace(outer_from, 2 * math.pi - outer_from, 48)),
                *((cx + d + inner * math.cos(a), cy + inner * math.sin(a))
                  for a in np.linspace(2 * math.pi - inner_from, inner_from, 40))]
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES + UNSEEN_SHAPES}")


def render(shapes: list[ShapeSpec], background: tuple[str, ...],
           side: int = 64) -> tuple[Image.Image, list[np.ndarray]]:
    big = side * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[background[0]])
    if len(background) == 2:  # two-tone: the second colour fills the right half
        ImageDraw.Draw(canvas).rectangle([big // 2, 0, big, big], fill=BACKGROUNDS[background[1]])
    masks = []
    for spec in shapes:
        cx, cy = spec.centre(big)
        polygon = outline(spec.shape, cx, cy, SIZES[spec.size] * big)
        ImageDraw.Draw(canvas).polygon(polygon, fill=COLOURS[spec.colour])
        alpha = Image.new("L", (big, big))
        ImageDraw.Draw(alpha).polygon(polygon, fill=255)
        masks.append(np.asarray(alpha.resize((side, side), Image.BOX)) >= 128)
    return canvas.resize((side, side), Image.LANCZOS), masks


def caption_for(shapes: list[ShapeSpec], background: tuple[str, ...], rng: random.Random | None = None) -> str:
    """The full caption, or with `rng` a random shortening of it (sizes, positions or background left out), so that
    the model learns short prompts as well as long ones."""
    keep_size = keep_position = keep_background = True
    if rng is not None:
        keep_size, keep_position, keep_background = rng.random() < 0.5, rng.random() < 0.7, rng.random() < 0.4
    parts = []
    for spec in shapes:
        words = ["a", spec.size if keep_size else "", spec.colour, spec.shape]
        text = " ".join(w for w in words if w)
        parts.append(f"{text} {PHRASE[spec.position]}" if keep_position else text)
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if keep_background:
        text += f", on a {' and '.join(background)} background"
    return text


def vocabulary() -> list[str]:
    """Full captions that together hold every word a caption can: each shape, colour, size, position phrase and
    background once, and the template's own words ("a", "and", "on", ",") as `caption_for` writes them."""
    backgrounds, colours, sizes = tuple(BACKGROUNDS), list(COLOURS), list(SIZES)
    return [caption_for([ShapeSpec(SHAPES[i % len(SHAPES)], colours[i % len(colours)], position,
                                   sizes[i % len(sizes)])], backgrounds)
            for i, position in enumerate(POSITIONS)]


def sample_scene(seed: int, *, side: int = 64, n_shapes: int | None = None, split: str = "train",
                 short_captions: bool = False) -> Scene:
    """The scene of `seed`. `split="train"` never uses a held-out triple; with `split="held_out"` the first shape is
    a held-out triple and any others are not."""
    rng = random.Random(seed)
    n = n_shapes or rng.choice((1, 1, 2, 2, 3))
    shapes: list[ShapeSpec] = []
    if split == "held_out":
        colour, shape, position = rng.choice(sorted(HELD_OUT))
        shapes.append(ShapeSpec(shape, colour, position, rng.choice(list(SIZES))))
    while len(shapes) < n:
        free = [p for p in POSITIONS if all(far_apart(p, s.position) for s in shapes)]
        if not free:  # e.g. a shape in the center leaves no room for another
            break
        spec = ShapeSpec(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(free), rng.choice(list(SIZES)))
        if spec.triple not in HELD_OUT:
            shapes.append(spec)
    names = list(BACKGROUNDS)
    background = (rng.choice(names),) if rng.random() < 0.7 else tuple(rng.sample(names, 2))
    image, masks = render(shapes, background, side)
    caption = caption_for(shapes, background, rng if short_captions else None)
    return Scene(image, caption, shapes, background, masks)


def far_apart(a: str, b: str) -> bool:
    """Cells at least two apart (Chebyshev distance), so even two large shapes never touch."""
    (r1, c1), (r2, c2) = POSITIONS[a], POSITIONS[b]
    return max(abs(r1 - r2), abs(c1 - c2)) >= 2
