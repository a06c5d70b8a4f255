"""Small image conversions shared by the techniques (no model code, so anything may import it)."""

import numpy as np
from PIL import Image


def flatten_alpha(image: Image.Image) -> tuple[Image.Image, bool]:
    """RGB; transparent images are placed on white. Also says whether there was transparency to flatten."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"), True
    return image.convert("RGB"), False


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array (grey, RGBA, 16-bit) -> H x W x 3 uint8 RGB; transparency goes on white."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(image)
    if image.mode in ("I", "I;16", "F"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((array / max(array.max(), 1.0) * 255).astype(np.uint8))
    return np.asarray(flatten_alpha(image)[0])
