"""controlnet-aux detectors with random weights, so every network preprocessor's code path runs offline.

The real weights (lllyasviel/Annotators) cannot be downloaded here; the maps these draw are meaningless, but their
size, type and the plumbing around them are what the tests check.
"""

import functools
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation


def save_tiny_upernet(folder: Path, *, with_processor: bool = True) -> Path:
    """The real UperNet + ConvNeXt classes at tiny sizes, saved as from_pretrained expects them."""
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, num_labels=150, hidden_size=16, pool_scales=[1, 2],
                           use_auxiliary_head=False)
    torch.manual_seed(0)
    UperNetForSemanticSegmentation(config).save_pretrained(folder, safe_serialization=True)
    if with_processor:
        SegformerImageProcessor(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(folder)
    return folder


def _hed() -> Any:
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    return HEDdetector(ControlNetHED_Apache2())


def _pidinet() -> Any:
    from controlnet_aux.pidi import PidiNetDetector
    from controlnet_aux.pidi.model import pidinet

    return PidiNetDetector(pidinet())


def _mlsd() -> Any:
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MLSDdetector(MobileV2_MLSD_Large())


def _lineart() -> Any:
    from controlnet_aux.lineart import Generator, LineartDetector

    return LineartDetector(Generator(3, 1, 3), Generator(3, 1, 3))


def _lineart_anime() -> Any:
    from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return LineartAnimeDetector(UnetGenerator(3, 1, 8, 64, norm_layer=norm))


def _openpose() -> Any:
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face, FaceNet
    from controlnet_aux.open_pose.hand import Hand
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    # Their constructors read weight files; build the same objects around fresh networks instead.
    body, hand, face = Body.__new__(Body), Hand.__new__(Hand), Face.__new__(Face)
    body.model, hand.model = bodypose_model().eval(), handpose_model().eval()
    face.model, face.inference_size, face.sigma, face.threshold = FaceNet().eval(), 368, 2.5, 0.1
    return OpenposeDetector(body, hand, face)


def _midas() -> Any:
    from controlnet_aux.midas import MidasDetector
    from controlnet_aux.midas.api import MiDaSInference
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    inference = MiDaSInference.__new__(MiDaSInference)
    torch.nn.Module.__init__(inference)
    inference.model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True).eval()
    return MidasDetector(inference)


def _zoe() -> Any:
    from controlnet_aux.zoe import ZoeDetector
    from controlnet_aux.zoe.zoedepth.models.zoedepth import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    config = get_config("zoedepth", "infer")
    config["pretrained_resource"] = None
    return ZoeDetector(ZoeDepth.build_from_config(config).eval())


def _normalbae() -> Any:
    from controlnet_aux.normalbae import NormalBaeDetector
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    return NormalBaeDetector(NNET(args).eval())


def _segmenter() -> Any:
    from studio.segment import load_segmenter

    return load_segmenter(save_tiny_upernet(Path(tempfile.mkdtemp())), local_files_only=True)


RANDOM_DETECTORS: dict[str, Callable[[], Any]] = {
    "softedge_hed": _hed, "scribble_hed": _hed, "softedge_pidinet": _pidinet, "sketch_pidinet": _pidinet,
    "mlsd": _mlsd, "lineart": _lineart, "lineart_anime": _lineart_anime, "openpose": _openpose,
    "depth_midas": _midas, "depth_zoe": _zoe, "normalbae": _normalbae, "segmentation": _segmenter,
}
