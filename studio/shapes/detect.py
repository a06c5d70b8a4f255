"""An OpenCV detector for Shapes images: colour clustering, then contour classification against templates.

Shape colours are saturated and backgrounds achromatic, so saturation separates shapes from background. Each
saturated pixel takes the palette colour nearest in hue; the connected regions of one colour are contours; a
contour's filled mask, scaled to a fixed box, is compared (IoU) with every shape's template drawn the same way. The
best IoU is also a confidence: a clean generated shape scores near 1, a smudge near 0.4.
"""

import colorsys
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image, ImageDraw

from studio.shapes.world import COLOURS, POSITIONS, SHAPES, outline

BOX = 32  # templates and contours are compared at this size
MIN_AREA = 0.004  # regions smaller than this fraction of the image are noise
HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()}


@dataclass(frozen=True)
class Detection:
    shape: str
    colour: str
    position: str
    confidence: float  # IoU of the region with its best template, 0..1
    mask: np.ndarray  # boolean, image-sized

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@cache
def _templates(shapes: tuple[str, ...] = SHAPES) -> dict[str, np.ndarray]:
    out = {}
    for shape in shapes:
        canvas = Image.new("L", (4 * BOX, 4 * BOX))
        ImageDraw.Draw(canvas).polygon(outline(shape, 2 * BOX, 2 * BOX, 1.6 * BOX), fill=255)
        out[shape] = _normalise(np.asarray(canvas) > 127)
    return out


def _normalise(mask: np.ndarray) -> np.ndarray:
    """Crop a mask to its bounding box and scale it to BOX x BOX: position and size drop out, the outline stays."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    return cv2.resize(crop, (BOX, BOX), interpolation=cv2.INTER_AREA) > 127


def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per pixel, the index into COLOURS of its nearest palette hue, or -1 for unsaturated (background) pixels."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue, sat, val = hsv[..., 0] * 360 / 256, hsv[..., 1] / 255, hsv[..., 2] / 255
    palette = np.array(list(HUES.values()), dtype=np.float32)
    distance = np.abs((hue[..., None] - palette + 180) % 360 - 180)
    labels = distance.argmin(-1)
    labels[(sat < 0.35) | (val < 0.25)] = -1
    return labels


def position_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    cell = (min(int(3 * ys.mean() / h), 2), min(int(3 * xs.mean() / w), 2))
    return next(name for name, rc in POSITIONS.items() if rc == cell)


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """All shapes found in an RGB image, largest first."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = colour_labels(rgb)
    min_area = MIN_AREA * labels.size
    found = []
    for index, colour in enumerate(COLOURS):
        layer = (labels == index).astype(np.uint8)
        # Close pinholes from noisy generations, then treat each outer contour as one shape.
        layer = cv2.morphologyEx(layer, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(layer, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            if cv2.contourArea(contour) < min_area:
                continue
            mask = np.zeros(labels.shape, np.uint8)
            cv2.drawContours(mask, [contour], -1, 1, thickness=cv2.FILLED)
            mask = mask.astype(bool)
            shape, score = classify_mask(mask)
            found.append(Detection(shape, colour, position_of(mask), score, mask))
    return sorted(found, key=lambda d: -d.area)


def classify_mask(mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> tuple[str, float]:
    """The shape whose template best matches a region's outline, and that IoU."""
    scores = {shape: iou(_normalise(mask), template) for shape, template in _templates(shapes).items()}
    shape = max(scores, key=scores.get)
    return shape, scores[shape]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
