"""Prompt-to-Prompt on the shipped Shapes model, measured with the world's detector.

What holds today (12 seeds, 30 DDIM steps): a colour word swap turns the shape blue in 11/12 seeds and keeps the
source's silhouette better than regenerating from the edited prompt with the same seed (mean IoU 0.41 vs 0.22).
The issue's bars (IoU ≥ 0.8, token maps over the shape, monotone reweighting) are not met: this model routes its
text through the padding tokens, so word maps are diffuse (see models/shapes/README.md).
"""

import numpy as np
import pytest

from studio.inversion import invert
from studio.p2p import P2PParams, run_p2p
from studio.shapes.detect import detect, iou
from studio.shapes.world import sample_scene

pytestmark = pytest.mark.slow
SEEDS = range(12)


def main_shape(image):
    found = detect(image)
    return max(found, key=lambda d: d.mask.sum()) if found else None


def test_word_swap_changes_the_colour_and_keeps_the_layout_better_than_regenerating(manager):
    kept, regenerated, blue = [], [], 0
    with manager.lend("shapes") as pipe:
        for seed in SEEDS:
            edit = run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=30, seed=seed))
            plain = run_p2p(pipe, P2PParams("a blue circle", "a blue circle", steps=30, seed=seed)).source
            s, e, p = main_shape(edit.source), main_shape(edit.edited), main_shape(plain)
            kept.append(iou(s.mask, e.mask) if s and e else 0.0)
            regenerated.append(iou(s.mask, p.mask) if s and p else 0.0)
            blue += e is not None and e.colour == "blue"
    assert blue >= 9, f"the edit is blue in {blue}/{len(SEEDS)} seeds"
    assert np.mean(kept) > np.mean(regenerated) + 0.1, (np.round(kept, 2), np.round(regenerated, 2))


def test_null_text_inversion_reconstructs_a_shapes_image(manager):
    """Mokady et al.'s claim: with guidance, DDIM inversion alone drifts; optimised null-texts bring it back."""
    scene = sample_scene(40_001, n_shapes=1, split="held_out")
    with manager.lend("shapes") as pipe:
        inversion = invert(pipe, scene.image, scene.caption, steps=25)
        edit = run_p2p(pipe, P2PParams(scene.caption, scene.caption.replace("purple", "blue", 1), steps=25),
                       inversion=inversion)
    assert inversion.psnr >= 25 and inversion.psnr > inversion.psnr_ddim + 3, (inversion.psnr, inversion.psnr_ddim)
    assert [(d.colour, d.shape) for d in detect(edit.edited)] == [("blue", "diamond")]
