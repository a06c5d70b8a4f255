"""ControlNet and T2I-Adapter on the shipped Shapes models, through the tab's own loop: shapes follow the edges of
held-out scenes, scale 0 is the uncontrolled picture, and two conditions are both respected."""

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.control import ControlParams, ControlUnit, run_control
from studio.preprocess import Knobs, run_preprocessor
from studio.shapes.detect import detect, iou
from studio.shapes.world import caption_for, sample_scene

pytestmark = pytest.mark.slow
PIXEL_PERFECT = Knobs(detect_resolution=64)


def drawn(image: Image.Image) -> np.ndarray:
    """Where the detector finds shapes in a generated image."""
    found = np.zeros((image.height, image.width), bool)
    for detection in detect(image):
        found |= detection.mask
    return found


def params(scene, seed: int) -> ControlParams:
    return ControlParams(caption_for(scene.shapes, scene.background), steps=20, width=64, height=64, seed=seed)


@pytest.fixture(scope="module")
def shapes(manager):
    with manager.lend("shapes") as pipe:
        yield pipe, manager.component("shapes-controlnet"), manager.component("shapes-t2i-adapter")


@pytest.mark.parametrize("kind, bar", [("controlnet", 0.75), ("adapter", 0.65)])
def test_generated_shapes_follow_the_edges_of_held_out_scenes(shapes, kind, bar):
    """Silhouette IoU between a scene's shapes and those drawn from its Canny map, 12 held-out scenes, 20 UniPC
    steps. Measured on CPU: 0.87 (ControlNet) and 0.86 (adapter); the issue's bars are 0.75 and 0.65. A random
    placement scores near 0."""
    pipe, controlnet, adapter = shapes
    model = controlnet if kind == "controlnet" else adapter
    scores = []
    for i in range(12):
        scene = sample_scene(20_000 + i, side=64, split="held_out")
        condition = run_preprocessor("canny", scene.image, PIXEL_PERFECT)
        image = run_control(pipe, [ControlUnit(model, condition)], params(scene, i)).image
        scores.append(iou(np.any(scene.masks, axis=0), drawn(image)))
    assert np.mean(scores) >= bar, scores


def test_scale_zero_reproduces_the_uncontrolled_image(shapes):
    pipe, controlnet, adapter = shapes
    scene = sample_scene(20_001, side=64, split="held_out")
    condition = run_preprocessor("canny", scene.image, PIXEL_PERFECT)
    plain = np.asarray(run_control(pipe, [], params(scene, 0)).image)
    off = run_control(pipe, [ControlUnit(controlnet, condition, 0.0), ControlUnit(adapter, condition, 0.0)],
                      params(scene, 0)).image
    on = run_control(pipe, [ControlUnit(controlnet, condition)], params(scene, 0)).image
    assert (np.asarray(off) == plain).all() and not (np.asarray(on) == plain).all()


def test_two_conditions_are_both_respected(shapes):
    """Each of a two-shape scene's shapes gets its own edge map: the first to the ControlNet, the second to the
    adapter. Together they draw both shapes on their edges; with the adapter off, the second shape lands on its edges
    less. Measured on 5 scenes: the worse of the two shapes together 0.72 / 0.77 / 0.81 / 0.78 / 0.86; the second
    shape 0.79 on average with its unit, 0.18 without (the prompt names where it goes, and in 1 of 5 scenes the model
    drew it there anyway)."""
    pipe, controlnet, adapter = shapes
    together, alone = [], []
    for i in range(6):
        scene = sample_scene(30_000 + i, side=64, n_shapes=2, split="held_out")
        if len(scene.shapes) < 2:
            continue
        edges = np.asarray(run_preprocessor("canny", scene.image, PIXEL_PERFECT))
        near = [cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0 for m in scene.masks]
        maps = [Image.fromarray(edges * (cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)[..., None])
                for m in scene.masks]
        units = [ControlUnit(controlnet, maps[0]), ControlUnit(adapter, maps[1])]
        both = drawn(run_control(pipe, units, params(scene, i)).image)
        together.append([iou(scene.masks[k], both & near[k]) for k in (0, 1)])
        first = drawn(run_control(pipe, units[:1], params(scene, i)).image)
        alone.append(iou(scene.masks[1], first & near[1]))
    together = np.array(together)
    assert np.median(together.min(axis=1)) >= 0.6 and np.mean(alone) < together[:, 1].mean() - 0.15, (together, alone)
