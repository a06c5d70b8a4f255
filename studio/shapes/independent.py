"""Shapes drawn by other code: the same scenes as the world's, drawn with OpenCV instead of the world's PIL polygons.

A model that has only seen its own renderer's pixels may not understand a shape someone drew in a paint program. To
measure that, this module draws a world scene (its shapes, colours, cells, sizes and background) with nothing of
`world.render`: its own outlines and proportions (an equilateral triangle, a heart made of two discs and a wedge, a
narrower diamond), OpenCV's antialiasing at 3x instead of PIL at 4x, a shade of each colour rather than the palette's
exact RGB, and each shape a little off its cell's centre, resized and slightly turned. A person would call every picture
by the world scene's caption. Shared with the world: its vocabulary (names, palette, cells, sizes, background
greys) and its captions, nothing of its drawing.
"""

import math

import cv2
import numpy as np
from PIL import Image

from studio.shapes.world import BACKGROUNDS, COLOURS, POSITIONS, SIZES, Scene, ShapeSpec, caption_for

SCALE = 3  # drawn 3x larger, then averaged down
SHIFT = 4  # OpenCV's fixed-point vertex bits: sub-pixel outlines
TURN = 5  # degrees either way


def shade(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A shade a person still calls `colour`: hue within ±6°, a little less saturated or darker than the palette's."""
    hsv = cv2.cvtColor(np.uint8([[COLOURS[colour]]]), cv2.COLOR_RGB2HSV_FULL)[0, 0].astype(float)
    hsv += (rng.uniform(-4, 4), rng.uniform(-50, 0), rng.uniform(-35, 10))  # hue in 1/256 of a turn
    rgb = cv2.cvtColor(np.uint8([[np.clip(hsv, 0, 255)]]), cv2.COLOR_HSV2RGB_FULL)[0, 0]
    return tuple(int(v) for v in rgb)


def contours(shape: str, r: float) -> list[np.ndarray]:
    """The outline(s) of `shape` around the origin inside a box of half-side r, as float (x, y) arrays."""
    if shape == "circle":
        a = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if shape == "square":
        k = 0.8 * r
        return [np.array([(-k, -k), (k, -k), (k, k), (-k, k)])]
    if shape == "triangle":  # equilateral, pointing up
        a = np.radians([-90, 30, 150])
        return [np.stack([r * np.cos(a), 0.15 * r + r * np.sin(a)], 1)]
    if shape == "diamond":
        return [np.array([(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)])]
    if shape == "star":
        a = np.arange(10) * math.pi / 5 - math.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        return [np.stack([radius * np.cos(a), radius * np.sin(a)], 1)]
    if shape == "heart":  # two discs and the wedge below them
        a = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        disc = 0.5 * r * np.stack([np.cos(a), np.sin(a)], 1)
        return [disc + (-0.47 * r, -0.38 * r), disc + (0.47 * r, -0.38 * r),
                np.array([(-0.93 * r, -0.25 * r), (0.93 * r, -0.25 * r), (0, 0.95 * r)])]
    raise ValueError(f"no independent outline for {shape!r}")


def render(shapes: list[ShapeSpec], background: tuple[str, ...], seed: int, side: int = 64) -> Scene:
    """The scene of `shapes` on `background`, drawn this module's way; `seed` picks the shades and the jitter."""
    rng = np.random.default_rng(seed)
    big = side * SCALE
    canvas = np.empty((big, big, 3), np.uint8)
    canvas[:] = BACKGROUNDS[background[0]]
    if len(background) == 2:
        canvas[:, big // 2:] = BACKGROUNDS[background[1]]
    masks = []
    for spec in shapes:
        row, col = POSITIONS[spec.position]
        centre = np.array([(col + 0.5) * big / 3, (row + 0.5) * big / 3]) + rng.uniform(-0.035, 0.035, 2) * big
        r = SIZES[spec.size] * big * rng.uniform(0.9, 1.08)
        # A slight turn; more and the detector that judges the models reads a square as a circle.
        turn = math.radians(rng.uniform(-TURN, TURN))
        rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
        points = [np.round((c @ rotation.T + centre) * 2**SHIFT).astype(np.int32) for c in contours(spec.shape, r)]
        colour, mask = shade(spec.colour, rng), np.zeros((big, big), np.uint8)
        for part in points:  # one at a time: fillPoly fills several polygons even-odd, making overlaps holes
            cv2.fillPoly(canvas, [part], colour, lineType=cv2.LINE_AA, shift=SHIFT)
            cv2.fillPoly(mask, [part], 255, lineType=cv2.LINE_AA, shift=SHIFT)
        masks.append(cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA) >= 128)
    image = Image.fromarray(cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA))
    return Scene(image, caption_for(shapes, background), list(shapes), background, masks)
