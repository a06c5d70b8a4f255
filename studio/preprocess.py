"""Preprocessors (annotators): the condition maps ControlNet and T2I-Adapter models were trained on.

Each preprocessor turns an RGB image into a map (edges, lines, depth, normals, pose, segmentation, colour grid...)
at the image's own size. Network annotators come from controlnet-aux with the weights of `lllyasviel/Annotators`,
which the model manager downloads and caches (`ModelManager.annotator`); controlnet-aux reads those .pth files
with torch's weights-only loader, so no code inside them runs. Weight-free preprocessors (canny, content shuffle,
lineart-standard, XDoG scribble, colour grid, tile, the OpenCV fallbacks) work offline and need no detector.

`detect_resolution` is the side the image is scaled to (short side, as the annotators expect) before detection;
the map is then scaled back to the input's size, so a preview lines up with the image it came from.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
from PIL import Image

from studio.images import to_rgb_array
from studio.params import Params, flag, ranged
from studio.sampling import seed_field

ANNOTATORS_REPO = "lllyasviel/Annotators"


@dataclass
class Knobs(Params):
    """Every preprocessor setting; `Preprocessor.knobs` says which ones a preprocessor reads."""

    detect_resolution: int = ranged(512, 64, 2048, 64, "The image's short side during detection (64-multiples).")
    low_threshold: int = ranged(100, 1, 255, 1, "Canny: gradients below this are never edges.")
    high_threshold: int = ranged(200, 1, 255, 1, "Canny: gradients above this are always edges.")
    value_threshold: float = ranged(0.1, 0.01, 2.0, 0.01, "MLSD: confidence a line needs (thr_v).")
    distance_threshold: float = ranged(0.1, 0.01, 20.0, 0.01, "MLSD: merge line ends closer than this (thr_d).")
    safe: bool = flag(False, "HED / PiDiNet: quantise the soft edges (the 'safe' variant, fewer artefacts).")
    coarse: bool = flag(False, "Lineart: the coarse model (bolder lines).")
    hands: bool = flag(False, "OpenPose: also detect hands.")
    face: bool = flag(False, "OpenPose: also detect the face.")
    background_threshold: float = ranged(0.1, 0.0, 1.0, 0.01, "MiDaS: depth below this is background.")
    sigma: float = ranged(6.0, 0.5, 20.0, 0.5, "Blur before thresholding (lineart-standard, XDoG).")
    threshold: int = ranged(32, 1, 255, 1, "XDoG / lineart-standard: how strong a line must be.")
    seed: int = seed_field(0, "Content shuffle and segmentation fallback: the random pattern.", random=False)
    segments: int = ranged(8, 2, 32, 1, "Colour-region fallback: how many regions.")
    block: int = ranged(64, 4, 256, 4, "Colour grid / tile: pixels per cell.")
    invert: bool = flag(False, "Swap black and white (e.g. a black-on-white drawing for a scribble model).")

    def check(self) -> None:
        if self.low_threshold > self.high_threshold:
            raise ValueError("Canny: the low threshold must not be above the high threshold")


@dataclass(frozen=True)
class Preprocessor:
    """One annotator. `run(image, detector, knobs)` gets the image at detect resolution (H, W, 3 uint8 RGB)."""

    name: str
    label: str
    condition: str  # the `condition` of the catalog's ControlNets and adapters it feeds
    run: Callable[[np.ndarray, Any, Knobs], np.ndarray]
    knobs: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()  # files of `repo` it needs; empty: weight-free
    loader: Callable[[str], Any] | None = None  # folder with `weights` -> the detector
    repo: str = ANNOTATORS_REPO
    fallback: bool = False  # an OpenCV stand-in, not the annotator the models were trained with

    @property
    def needs_weights(self) -> bool:
        return bool(self.weights)


def _aux(method: str = "__call__", **fixed: Any) -> Callable[[np.ndarray, Any, Knobs], np.ndarray]:
    """Call a controlnet-aux detector at the image's own size (it resizes to `image_resolution` otherwise)."""

    def run(image: np.ndarray, detector: Any, knobs: Knobs) -> np.ndarray:
        side = min(image.shape[:2])
        kwargs = {key: (getattr(knobs, value) if isinstance(value, str) and value in KNOB_NAMES else value)
                  for key, value in fixed.items()}
        out = getattr(detector, method)(image, detect_resolution=side, image_resolution=side, output_type="np",
                                        **kwargs)
        return out[0] if isinstance(out, tuple) else out

    return run


def _canny(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    return cv2.Canny(image, knobs.low_threshold, knobs.high_threshold)


def _xdog(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    """Scribble by the eXtended Difference of Gaussians (Winnemöller et al. 2012): a thin blur minus a wide one is
    strongly negative on dark lines; threshold it into white strokes on black, as scribble models expect."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    dog = cv2.GaussianBlur(grey, (0, 0), 0.5) - cv2.GaussianBlur(grey, (0, 0), knobs.sigma)
    return np.where(-dog > knobs.threshold / 4, 255, 0).astype(np.uint8)


def _lineart_standard(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    from controlnet_aux.lineart_standard import LineartStandardDetector

    side = min(image.shape[:2])
    return LineartStandardDetector()(image, guassian_sigma=knobs.sigma, intensity_threshold=knobs.threshold // 4,
                                     detect_resolution=side, output_type="np")


def _shuffle(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    from controlnet_aux.shuffle import ContentShuffleDetector

    # controlnet-aux draws its random flow field from numpy's global generator: seed it, then put it back.
    state = np.random.get_state()
    try:
        np.random.seed(knobs.seed)
        side = min(image.shape[:2])
        return ContentShuffleDetector()(image, detect_resolution=side, image_resolution=side, output_type="np")
    finally:
        np.random.set_state(state)


def _colour_grid(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    """T2I-Adapter's colour condition: the image averaged over `block`-pixel cells (a palette layout)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // knobs.block), max(1, h // knobs.block)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _tile(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    """ControlNet tile's condition: the image with its detail blurred away (down- then up-sampled)."""
    h, w = image.shape[:2]
    scale = max(1, knobs.block // 8)
    small = cv2.resize(image, (max(1, w // scale), max(1, h // scale)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _segment(image: np.ndarray, segmenter: Any, _: Knobs) -> np.ndarray:
    from studio.segment import segment

    return segment(image, segmenter)


def _regions(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    from studio.segment import colour_regions

    return colour_regions(image, knobs.segments, knobs.seed)


def _load_segmenter(folder: str) -> Any:
    from studio.segment import load_segmenter

    # UperNet + ConvNeXt-S on ADE20K (512x512), as diffusers' ControlNet seg docs use. Its repository ships a .bin
    # state dict only; transformers reads it with torch's weights-only loader.
    return load_segmenter(folder, use_safetensors=False, local_files_only=True)


def _as_is(image: np.ndarray, _: Any, knobs: Knobs) -> np.ndarray:
    return image


def _from_folder(cls_path: str, **kwargs: Any) -> Callable[[str], Any]:
    def load(folder: str) -> Any:
        module, _, name = cls_path.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        return cls.from_pretrained(folder, **kwargs)

    return load


EDGE_KNOBS = ("detect_resolution", "safe")
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("canny", "Canny edges", "canny", _canny, ("detect_resolution", "low_threshold", "high_threshold")),
    Preprocessor("softedge_hed", "Soft edges (HED)", "softedge", _aux(safe="safe"), EDGE_KNOBS,
                 ("ControlNetHED.pth",), _from_folder("controlnet_aux.hed.HEDdetector")),
    Preprocessor("softedge_pidinet", "Soft edges (PiDiNet)", "softedge", _aux(safe="safe"), EDGE_KNOBS,
                 ("table5_pidinet.pth",), _from_folder("controlnet_aux.pidi.PidiNetDetector")),
    Preprocessor("sketch_pidinet", "Sketch (PiDiNet, thin)", "sketch", _aux(safe=True, apply_filter=True),
                 ("detect_resolution",), ("table5_pidinet.pth",), _from_folder("controlnet_aux.pidi.PidiNetDetector")),
    Preprocessor("scribble_hed", "Scribble (HED)", "scribble", _aux(scribble=True), ("detect_resolution",),
                 ("ControlNetHED.pth",), _from_folder("controlnet_aux.hed.HEDdetector")),
    Preprocessor("scribble_xdog", "Scribble (XDoG, weight-free)", "scribble", _xdog,
                 ("detect_resolution", "sigma", "threshold")),
    Preprocessor("mlsd", "Straight lines (M-LSD)", "mlsd", _aux(thr_v="value_threshold", thr_d="distance_threshold"),
                 ("detect_resolution", "value_threshold", "distance_threshold"), ("mlsd_large_512_fp32.pth",),
                 _from_folder("controlnet_aux.mlsd.MLSDdetector")),
    Preprocessor("lineart", "Lineart", "lineart", _aux(coarse="coarse"), ("detect_resolution", "coarse"),
                 ("sk_model.pth", "sk_model2.pth"), _from_folder("controlnet_aux.lineart.LineartDetector")),
    Preprocessor("lineart_anime", "Lineart (anime)", "lineart_anime", _aux(), ("detect_resolution",), ("netG.pth",),
                 _from_folder("controlnet_aux.lineart_anime.LineartAnimeDetector")),
    Preprocessor("lineart_standard", "Lineart (standard, weight-free)", "lineart", _lineart_standard,
                 ("detect_resolution", "sigma", "threshold")),
    Preprocessor("openpose", "OpenPose (body, hands, face)", "openpose",
                 _aux(include_body=True, include_hand="hands", include_face="face"),
                 ("detect_resolution", "hands", "face"),
                 ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                 _from_folder("controlnet_aux.open_pose.OpenposeDetector")),
    Preprocessor("depth_midas", "Depth (MiDaS)", "depth", _aux(bg_th="background_threshold"),
                 ("detect_resolution", "background_threshold"), ("dpt_hybrid-midas-501f0c75.pt",),
                 _from_folder("controlnet_aux.midas.MidasDetector")),
    Preprocessor("depth_zoe", "Depth (ZoeDepth)", "zoedepth", _aux(), ("detect_resolution",), ("ZoeD_M12_N.pt",),
                 _from_folder("controlnet_aux.zoe.ZoeDetector")),
    Preprocessor("normalbae", "Surface normals (NormalBAE)", "normalbae", _aux(), ("detect_resolution",),
                 ("scannet.pt",), _from_folder("controlnet_aux.normalbae.NormalBaeDetector")),
    Preprocessor("segmentation", "Segmentation (UperNet, ADE20K colours)", "segmentation", _segment,
                 ("detect_resolution",), ("config.json", "preprocessor_config.json", "pytorch_model.bin"),
                 _load_segmenter, repo="openmmlab/upernet-convnext-small"),
    Preprocessor("segmentation_regions", "Segmentation (colour regions, OpenCV fallback)", "segmentation", _regions,
                 ("detect_resolution", "segments", "seed"), fallback=True),
    Preprocessor("shuffle", "Content shuffle", "shuffle", _shuffle, ("detect_resolution", "seed")),
    Preprocessor("color", "Colour grid", "color", _colour_grid, ("block",)),
    Preprocessor("tile", "Tile (blurred image)", "tile", _tile, ("block",)),
    Preprocessor("none", "None: use the image as the map", "none", _as_is, ("invert",)),
]}
KNOB_NAMES = frozenset(f.name for f in fields(Knobs))


def run_preprocessor(name: str, image: Image.Image | np.ndarray, knobs: Knobs | None = None,
                     detector: Any = None) -> Image.Image:
    """The condition map of `image` (an RGB image of the same size). Network preprocessors need their `detector`
    (from `ModelManager.annotator(name)`)."""
    if name not in PREPROCESSORS:
        raise ValueError(f"Unknown preprocessor '{name}'; choose one of {', '.join(PREPROCESSORS)}")
    pre, knobs = PREPROCESSORS[name], knobs or Knobs()
    if pre.needs_weights and detector is None:
        raise ValueError(f"{pre.label} needs its annotator network; ask the model manager for it")
    rgb = to_rgb_array(image)
    h, w = rgb.shape[:2]
    if min(h, w) < 8:
        raise ValueError(f"The image is {w}×{h}; preprocessors need at least 8 pixels a side")
    scale = knobs.detect_resolution / min(h, w) if "detect_resolution" in pre.knobs else 1.0
    work = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC) if scale != 1 else rgb
    out = np.asarray(pre.run(work, detector, knobs))
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    out = out[..., :3].astype(np.uint8)
    if knobs.invert:
        out = 255 - out
    if out.shape[:2] != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA if out.shape[0] > h else cv2.INTER_LINEAR)
    return Image.fromarray(out)


def preprocessors_for(condition: str) -> list[str]:
    """Preprocessor names whose maps a model trained on `condition` expects (best first)."""
    return [p.name for p in PREPROCESSORS.values() if p.condition == condition]
