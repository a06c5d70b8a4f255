"""Semantic segmentation maps for ControlNet's `control_v11p_sd15_seg` and the T2I-Adapter seg model.

Both were trained on ADE20K label maps painted with MMSegmentation's 150-class ADE20K palette, so a condition image
must use exactly those colours. `segment` runs UperNet (Xiao et al., "Unified Perceptual Parsing for Scene
Understanding", ECCV 2018) with a ConvNeXt backbone trained on ADE20K, as diffusers' ControlNet seg docs do, and
paints each pixel's class id with its palette colour. `colour_regions` is a weight-free OpenCV stand-in for offline
use: k-means regions, not semantic classes.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, BaseImageProcessor, SegformerImageProcessor, UperNetForSemanticSegmentation

PALETTE_PATH = Path(__file__).resolve().parents[1] / "presets" / "ade20k_palette.json"
# (150, 3) uint8, row = class id. Road (6) and skyscraper (48) share a colour in the original; kept, since the
# ControlNet was trained on these exact colours.
ADE20K_PALETTE = np.array([c["rgb"] for c in json.loads(PALETTE_PATH.read_text())["classes"]], dtype=np.uint8)


@dataclass
class Segmenter:
    """An UperNet ADE20K model and the image processor that resizes and normalises its input."""

    model: UperNetForSemanticSegmentation
    processor: BaseImageProcessor

    def to(self, device: torch.device | str) -> "Segmenter":
        self.model.to(device)
        return self


def load_segmenter(location: str | Path, *, dtype: torch.dtype = torch.float32, use_safetensors: bool = True,
                   local_files_only: bool = False) -> Segmenter:
    """Load an UperNet ADE20K checkpoint (a Hub id or a folder) with `from_pretrained`; raises OSError if absent."""
    model = UperNetForSemanticSegmentation.from_pretrained(
        location, dtype=dtype, use_safetensors=use_safetensors, local_files_only=local_files_only)
    try:
        processor = AutoImageProcessor.from_pretrained(location, local_files_only=local_files_only)
    except OSError:
        # The weights are there but not preprocessor_config.json (e.g. only the model was cached): the openmmlab
        # UperNet checkpoints use this processor, 512x512 with ImageNet mean/std, so build it rather than fail.
        processor = SegformerImageProcessor(size={"height": 512, "width": 512}, do_reduce_labels=False)
    return Segmenter(model.eval(), processor)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")


@torch.inference_mode()
def segment_ids(image: np.ndarray, segmenter: Segmenter) -> np.ndarray:
    """Per-pixel ADE20K class ids (H, W) int64 at the input size: UperNet at the processor's size, then logits
    resized bilinearly and argmax-ed, as `SegformerImageProcessor.post_process_semantic_segmentation` does."""
    _check_image(image)
    model = segmenter.model
    inputs = segmenter.processor(images=image, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)
    logits = model(pixel_values=pixel_values).logits
    # Upsample in fp32: fp16 bilinear interpolation is not available on every device and ties flip in fp16.
    logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)[0].cpu().numpy()


def colourise(ids: np.ndarray) -> np.ndarray:
    """Paint ADE20K class ids (H, W) with the palette: (H, W, 3) uint8."""
    if ids.min() < 0 or ids.max() >= len(ADE20K_PALETTE):
        raise ValueError(f"class ids must be in [0, {len(ADE20K_PALETTE)}), got [{ids.min()}, {ids.max()}]")
    return ADE20K_PALETTE[ids]


def segment(image: np.ndarray, segmenter: Segmenter) -> np.ndarray:
    """The ControlNet seg condition for an (H, W, 3) uint8 RGB image: its UperNet ADE20K map in palette colours."""
    return colourise(segment_ids(image, segmenter))


def colour_regions(image: np.ndarray, k: int = 8, seed: int = 0) -> np.ndarray:
    """A stand-in for `segment` that needs no weights ("OpenCV fallback"): regions of similar colour, NOT semantic
    classes, so the ControlNet reads them as arbitrary ADE20K classes and only their layout carries over.

    k-means (Lloyd's algorithm with k-means++ seeding, `cv2.kmeans`) clusters the pixels in CIE Lab, where distances
    follow perceived colour difference; a median blur of the label map removes speckle. Regions are painted with
    distinct palette colours, largest region first, so the result is stable for a given image, k and seed.
    """
    _check_image(image)
    distinct = np.unique(ADE20K_PALETTE, axis=0, return_index=True)[1]
    colours = ADE20K_PALETTE[np.sort(distinct)]
    if not 1 <= k <= len(colours):
        raise ValueError(f"k must be in [1, {len(colours)}], got {k}")
    height, width = image.shape[:2]
    if height * width < k:
        raise ValueError(f"a {height}x{width} image has fewer pixels than k={k}")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float32)
    # cv2.kmeans draws from OpenCV's per-thread RNG; seeding it right here makes the call deterministic.
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, _ = cv2.kmeans(lab, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    labels = cv2.medianBlur(labels.reshape(height, width).astype(np.uint8), 5)
    # Rank regions by size (ties by label) so colour i always goes to the i-th largest region.
    order = np.argsort(-np.bincount(labels.ravel(), minlength=k), kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return colours[rank[labels]]
