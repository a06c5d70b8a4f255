"""Images in and out: the one loader every input goes through, and small conversions (no model code, so anything may
import it).

`load_image` reads what PIL can read (any mode, 16-bit, CMYK, palette, EXIF-rotated, animated: the first frame) and
refuses what it can't, naming the file and the reason, before any pixel is decoded when the picture is too large
(a 90 kB PNG can hold 400 megapixels). Techniques receive RGB or RGBA images; they decide what transparency means.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # about 8000 x 8000: far above any model's size, far below a decompression bomb


def load_image(source: str | Path | bytes | Image.Image, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image (RGBA if it has transparency) from a path, bytes or a PIL image; ValueError for anything else."""
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "The image")
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if image.width * image.height > max_pixels:
            raise ValueError(f"{label} is {image.width}×{image.height} ({image.width * image.height / 1e6:.0f} "
                             f"megapixels); this studio takes images of at most {max_pixels / 1e6:.0f} megapixels.")
        image.seek(0)  # an animation's first frame
        image.load()
    except Image.DecompressionBombError:
        raise ValueError(f"{label} is far too large to open (a decompression bomb?); this studio takes images of at "
                         f"most {max_pixels / 1e6:.0f} megapixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        why = "not in an image format PIL can read" if isinstance(error, UnidentifiedImageError) else \
            f"damaged or cut short ({error})"
        raise ValueError(f"{label} is not a readable image: it is {why}.") from None
    image = ImageOps.exif_transpose(image)  # photos taken sideways come the right way up
    return _normalise(image)


def _normalise(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when there is transparency; 16-bit and float images are scaled to 8 bits, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = max(float(array.max()), 1.0)
        image = Image.fromarray((array / high * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def flatten_alpha(image: Image.Image) -> tuple[Image.Image, bool]:
    """RGB; transparent images are placed on white. Also says whether there was transparency to flatten."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"), True
    return image.convert("RGB"), False


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array (grey, RGBA, 16-bit) -> H x W x 3 uint8 RGB; transparency goes on white."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(image)
    return np.asarray(flatten_alpha(_normalise(image))[0])
