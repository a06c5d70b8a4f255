"""Prompt-to-Prompt on the shipped Shapes model, measured with the world's detector (30 DDIM steps, CFG 3).

Since the UNet reads the words themselves (models/shapes/README.md: its training hides the end and padding tokens),
the "circle" token's cross-attention lies on the circle, LocalBlend confines an edit to the circle's region, and a word
swap keeps the circle in place. Guidance matters on this model: at zero terminal SNR its first step fixes the layout,
and CFG 7.5 amplifies the new colour word's values enough to move the circle in some seeds (mean IoU 0.47, against
0.85 at CFG 3). Reweighting a colour word moves that colour's share monotonically for a background colour; not met
(see the model card) for the shape's colour word: the "circle" token, which sees "red" through CLIP's causal mask,
carries the colour as well.
"""

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.inversion import invert
from studio.p2p import P2PParams, run_p2p
from studio.shapes.detect import detect, iou
from studio.shapes.world import BACKGROUNDS, COLOURS, SHAPES, sample_scene
from tabs import model_examples

pytestmark = pytest.mark.slow
SEEDS = range(8)
CFG = 3.0


def share(image: Image.Image, rgb: tuple[int, int, int], within: int) -> float:
    """The fraction of pixels within `within` (summed over channels) of a colour."""
    return float((np.abs(np.asarray(image, float) - np.array(rgb, float)).sum(-1) < within).mean())


def main_shape(image):
    found = detect(image)
    return max(found, key=lambda d: d.mask.sum()) if found else None


def upsample(m: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(m.astype(np.float32)).resize((side, side), Image.BILINEAR))


@pytest.fixture(scope="module")
def swaps(manager):
    """"a red circle" -> "a blue circle" per seed, plain and with LocalBlend on "circle", and the regeneration."""
    out = []
    with manager.lend("shapes") as pipe:
        for seed in SEEDS:
            edit = run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=30, cfg=CFG, seed=seed))
            blended = run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=30, cfg=CFG, seed=seed,
                                              blend_words=["circle"]))
            plain = run_p2p(pipe, P2PParams("a blue circle", "a blue circle", steps=30, cfg=CFG, seed=seed)).source
            out.append((edit, blended, plain))
    return out


def test_word_swap_changes_the_colour_and_keeps_the_circle(swaps):
    kept, regenerated, blue = [], [], 0
    for edit, _, plain in swaps:
        s, e, p = main_shape(edit.source), main_shape(edit.edited), main_shape(plain)
        kept.append(iou(s.mask, e.mask) if s and e else 0.0)
        regenerated.append(iou(s.mask, p.mask) if s and p else 0.0)
        blue += e is not None and e.colour == "blue"
    assert blue >= 7, f"the edit is blue in {blue}/{len(SEEDS)} seeds"
    # Measured on CPU: IoU >= 0.8 in 6 of 8 seeds (0.62 and 0.52 in the others), mean 0.85 (the bar: 0.8),
    # against 0.30 for regenerating from the edited prompt with the same seed. Bars a seed below that.
    assert sum(k >= 0.8 for k in kept) >= 5 and np.mean(kept) >= 0.75, np.round(kept, 2)
    assert np.mean(kept) > np.mean(regenerated) + 0.3, (np.round(kept, 2), np.round(regenerated, 2))


def test_the_circle_token_attends_to_the_circle(swaps):
    """Share of the "circle" token's 8x8 map inside the drawn circle, over the share its area would get by chance."""
    ratios = []
    for edit, _, _ in swaps:
        shape = main_shape(edit.source)
        m = upsample(edit.maps.token_map(0, edit.source_tokens.index("circle"), sides=[8]), 64)
        ratios.append(m[shape.mask].sum() / m.sum() / shape.mask.mean())
    # Measured 2.45x on average, 2.0x at least (before the UNet read the words: 1.04x, i.e. chance).
    assert np.mean(ratios) >= 2 and min(ratios) >= 1.4, np.round(ratios, 2)


def test_local_blend_edits_the_circle_and_leaves_the_background(swaps):
    areas = []
    for edit, blended, _ in swaps:
        mask = np.asarray(blended.blend_mask) > 0
        shape = main_shape(blended.source)
        assert (mask & shape.mask).sum() >= 0.95 * shape.mask.sum(), "the mask must cover the circle"
        areas.append(mask.mean())
        # Outside the mask, widened by one latent pixel (the VAE decoder mixes neighbours), nothing changes.
        outside = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
        diff = np.abs(np.asarray(blended.edited, float) - np.asarray(blended.source, float)).mean(-1)
        if outside.any():
            assert diff[outside].mean() < 3, f"background changed by {diff[outside].mean():.1f}/255"
        colours = [d.colour for d in detect(blended.edited)]
        assert "blue" in colours and "red" not in colours, colours
    assert np.mean(areas) < 0.5, f"the masks cover {np.mean(areas):.0%} of the image on average"  # measured 25%


def test_turning_the_noun_down_removes_what_it_names(manager):
    """Reweighting acts where this model reads the prompt. Measured at CFG 7.5 (red share of the image at weights -1 /
    0 / 1): "circle" 0.000 / 0.043 / 0.044 and 0.000 / 0.076 / 0.112 for seeds 0 and 1. Reweighting "red" instead
    changes the picture by at most 1.3/255 between -1 and 2 (the issue's colour-word claim, not met here): the
    "circle" token sees "red" through CLIP's causal mask and carries the colour itself."""
    with manager.lend("shapes") as pipe:
        for seed in range(2):
            shares = []
            for weight in (-1.0, 0.0, 1.0):
                edit = run_p2p(pipe, P2PParams("a red circle", "a red circle", edit="reweight",
                                               weights={"circle": weight}, steps=30, seed=seed))
                shares.append(share(edit.edited, COLOURS["red"], 90))
            assert shares[0] < 0.005 and shares[0] < shares[1] <= shares[2] + 0.005, (seed, np.round(shares, 3))


def test_reweighting_a_background_colour_word_moves_its_share_monotonically(manager):
    """The issue's colour-word claim, on the colour words this model reads from their own tokens: those after the
    shape's name, which its token cannot see. Measured (black share of the image at weights -1 / 0 / 1 / 2, 8 seeds):
    0.23 / 0.35 / 0.93 / 0.94, monotone in every seed. Turning the weight up cannot add much: a background already
    fills the picture. Where the background goes, the heart mostly moves as well (50 steps, 16 seeds: kept at IoU >=
    0.9 in 1 of the 9 seeds whose background went at weight 0, 4 of 14 at weight -1; the tab's example uses one): at
    zero terminal SNR the first step sets the layout, and the changed background word changes it."""
    prompt = "a blue heart on a black background"
    shares = []
    with manager.lend("shapes") as pipe:
        for seed in range(6):
            edits = [run_p2p(pipe, P2PParams(prompt, prompt, edit="reweight", weights={"black": weight}, steps=30,
                                             cfg=CFG, seed=seed)).edited for weight in (0.0, 1.0, 2.0)]
            shares.append([share(edit, BACKGROUNDS["black"], 60) for edit in edits])
            assert shares[-1][0] <= shares[-1][1] + 0.01 <= shares[-1][2] + 0.02, (seed, np.round(shares[-1], 3))
            assert [found and found.shape for found in map(main_shape, edits)] == ["heart"] * 3, seed
    down, kept, up = np.mean(shares, axis=0)
    assert down < kept - 0.3 and kept > 0.8 and up >= kept - 0.01, np.round((down, kept, up), 3)


def test_null_text_inversion_reconstructs_a_shapes_image(manager):
    """Mokady et al.'s claim: with guidance, DDIM inversion alone drifts; optimised null-texts bring it back."""
    scene = sample_scene(40_002, n_shapes=1, split="held_out")  # a large yellow square at the top left
    with manager.lend("shapes") as pipe:
        inversion = invert(pipe, scene.image, scene.caption, steps=25)
        edit = run_p2p(pipe, P2PParams(scene.caption, scene.caption.replace("yellow", "blue", 1), steps=25),
                       inversion=inversion)
    # Measured 35.1 dB, DDIM inversion alone 23.3 dB (on other scenes this zero-SNR model's DDIM inversion alone
    # reaches 34-36 dB, and null-text adds 1-4 dB).
    assert inversion.psnr >= 25 and inversion.psnr > inversion.psnr_ddim + 3, (inversion.psnr, inversion.psnr_ddim)
    assert [(d.colour, d.shape, d.position) for d in detect(edit.edited)] == [("blue", "square", "top left")]


def test_the_tabs_shapes_examples_do_what_they_show(manager):
    """Each example the tab offers on Shapes (presets/p2p.yaml, with its own guidance and seed) draws the edited
    prompt's colour and shape where the source had its shape, and changes the picture."""
    with manager.lend("shapes") as pipe:
        for _, source, target, edit, blend, cfg, seed, *weights in model_examples("p2p", "shapes"):
            result = run_p2p(pipe, P2PParams(source, target, edit, weights=weights[0] if weights else {},
                                             blend_words=blend.split(), cfg=cfg, seed=seed))
            before, after = main_shape(result.source), main_shape(result.edited)
            colour, shape = (next(w for w in target.split() if w in names) for names in (COLOURS, SHAPES))
            assert before and after and after.position == before.position, (target, before, after)
            assert (after.colour, after.shape) == (colour, shape), (target, after)
            change = np.abs(np.asarray(result.edited, float) - np.asarray(result.source, float)).mean()
            assert change > 3, (target, change)  # measured 5.1 to 240; an edit that did nothing: 0.4
