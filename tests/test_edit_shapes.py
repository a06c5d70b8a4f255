"""The real-image methods' claims on the shipped Shapes model, measured with the world's detector and its exact masks.

DiffEdit (Couairon et al. 2023) finds the region the edit concerns from the prompts alone and changes only it; DDIB
(Su et al. 2023) translates through x_T and comes back (cycle consistency); Imagic (Kawar et al. 2023) redraws the
image at η = 0, the target at η = 1, and moves between them as η grows, leaving the shared model as it was.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from studio.ddib import DDIBParams, run_ddib
from studio.diffedit import DiffEditParams, run_diffedit
from studio.imagic import ImagicParams, imagic_generate, run_imagic
from studio.inversion import ddim_invert
from studio.shapes.detect import detect, iou
from studio.shapes.world import COLOURS, ShapeSpec, render, sample_scene

pytestmark = pytest.mark.slow
TWO_SHAPES = [("left", "right"), ("top left", "bottom right"), ("bottom left", "top right"), ("right", "left")]


def upsampled(mask: np.ndarray, side: int = 64) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)) > 0


def share(image: Image.Image, colour: str) -> float:
    return float((np.abs(np.asarray(image, float) - np.array(COLOURS[colour], float)).sum(-1) < 90).mean())


def best_match(image: Image.Image, mask: np.ndarray):
    found = detect(image)
    return max(found, key=lambda d: iou(d.mask, mask)) if found else None


@pytest.fixture(scope="module")
def shapes(manager):
    with manager.lend("shapes") as pipe:
        yield pipe


@pytest.fixture(scope="module")
def diffedits(shapes):
    """The issue's edit, "a red circle and a blue square" → "… a green square", on four layouts of the two shapes."""
    out = []
    for circle_at, square_at in TWO_SHAPES:
        image, (circle, square) = render([ShapeSpec("circle", "red", circle_at, "large"),
                                          ShapeSpec("square", "blue", square_at, "large")], ("white",))
        result = run_diffedit(shapes, image, DiffEditParams("a red circle and a blue square",
                                                            "a red circle and a green square", steps=25))
        out.append((image, circle, square, result))
    return out


def test_diffedit_finds_the_square_and_not_the_circle(diffedits):
    """The estimated mask (16x16 latents, upsampled) covers the square (the issue's bar: IoU >= 0.5) and not the
    circle. Measured: IoU 0.69, 0.90, 0.81, 0.65; none of the circle's pixels."""
    ious = []
    for _, circle, square, result in diffedits:
        mask = upsampled(result.estimate.mask)
        ious.append(iou(mask, square))
        assert (mask & circle).sum() <= 0.05 * circle.sum(), "the mask reaches into the circle"
    assert min(ious) >= 0.5, np.round(ious, 2)


def test_diffedit_turns_the_square_green_and_leaves_the_circle(diffedits):
    """Inside the mask the square turns green; outside, the latent follows the inversion back to the input, so the
    circle changes by little more than the VAE's own rounding (measured: 5.6 to 6.3 of 255 on average)."""
    for image, circle, square, result in diffedits:
        change = np.abs(np.asarray(result.image, float) - np.asarray(image, float)).mean(-1)
        assert change[circle].mean() < 12, f"the circle changed by {change[circle].mean():.1f}/255"
        found = best_match(result.image, square)
        assert found is not None and (found.colour, found.shape) == ("green", "square"), found
        kept = best_match(result.image, circle)
        assert (kept.colour, kept.shape) == ("red", "circle") and iou(kept.mask, circle) > 0.8, kept


@pytest.fixture(scope="module")
def translations(shapes):
    """One-shape held-out scenes, their colour word changed; DDIB at 50 steps with the round trip."""
    out = []
    for seed in (100, 101, 102):
        scene = sample_scene(seed, n_shapes=1, split="held_out")
        colour = scene.shapes[0].colour
        new = "green" if colour == "blue" else "blue"
        params = DDIBParams(scene.caption, scene.caption.replace(colour, new, 1), steps=50, round_trip=True)
        out.append((scene, new, run_ddib(shapes, scene.image, params)))
    return out


def test_ddib_translates_the_colour_and_keeps_the_shape(translations):
    """Measured at 25 steps on six scenes: the new colour everywhere, the shape's mask kept at IoU 0.89 to 0.98."""
    for scene, new, result in translations:
        found = best_match(result.image, scene.masks[0])
        assert found is not None and found.colour == new and found.shape == scene.shapes[0].shape, (scene.caption,
                                                                                                  found)
        assert iou(found.mask, scene.masks[0]) >= 0.7, (scene.caption, iou(found.mask, scene.masks[0]))


def test_ddib_round_trip_returns_to_the_input(translations):
    """Cycle consistency (Sec. 3.2): source → target → source. Measured at 50 steps on twelve scenes: median 36.4 dB,
    within 0.1 to 2.2 dB of the inversion's own reconstruction in eleven, one at 21.8 dB; here 36.6, 36.2 and 37.4 dB.
    At 25 steps two of six came back with their background swapped: at zero terminal SNR the first step decides the
    layout from x_T."""
    cycles = [result.cycle_psnr for _, _, result in translations]
    assert np.median(cycles) >= 30 and min(cycles) >= 20, np.round(cycles, 1)


@pytest.fixture(scope="module")
def imagic(shapes):
    """A red circle edited towards "… yellow circle …" with the Shapes settings of presets/edit.yaml."""
    image, masks = render([ShapeSpec("circle", "red", "left", "large")], ("white",))
    before = ({k: v.clone() for k, v in shapes.unet.state_dict().items()},
              [p.requires_grad for p in shapes.unet.parameters()])
    params = ImagicParams("a large yellow circle on the left, on a white background", embedding_steps=100,
                          embedding_lr=1e-2, finetune_steps=100, finetune_lr=5e-4, cfg=3, steps=25, eta=0)
    result = run_imagic(shapes, image, params)
    etas = (0.25, 0.5, 0.75, 1.0)
    drawn = [result.image] + [imagic_generate(shapes, result.tuned, eta, steps=25, cfg=3) for eta in etas]
    return image, masks[0], before, result, drawn


def test_imagic_redraws_the_image_at_eta_0_and_the_target_at_eta_1(imagic):
    image, mask, _, _, drawn = imagic
    start, end = (best_match(drawn[i], mask) for i in (0, -1))
    assert (start.colour, start.shape, start.position) == ("red", "circle", "left"), start
    assert end.colour == "yellow" and end.shape == "circle", end


def test_imagic_moves_monotonically_with_eta(imagic):
    """Measured (η 0, 0.25, 0.5, 0.75, 1): red share 0.088 0.089 0.017 0 0, yellow 0 0 0.055 0.087 0.089."""
    drawn = imagic[4]
    red, yellow = ([share(image, colour) for image in drawn] for colour in ("red", "yellow"))
    assert all(b <= a + 0.01 for a, b in zip(red, red[1:])), np.round(red, 3)
    assert all(b >= a - 0.01 for a, b in zip(yellow, yellow[1:])), np.round(yellow, 3)
    assert red[0] > 0.05 and yellow[-1] > 0.05 and red[-1] < 0.01 and yellow[0] < 0.01, (red, yellow)


def test_imagic_leaves_the_shared_unet_as_it_was(shapes, imagic):
    weights, flags = imagic[2]
    after = shapes.unet.state_dict()
    assert set(after) == set(weights), "adapter weights left on the shared UNet"
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert [p.requires_grad for p in shapes.unet.parameters()] == flags


def test_the_inversion_behind_these_methods_reconstructs(shapes):
    """DDIM inversion alone, unguided, redraws a one-shape scene (measured 34.5 to 39.5 dB at 25 to 50 steps)."""
    scene = sample_scene(100, n_shapes=1, split="held_out")
    assert ddim_invert(shapes, scene.image, scene.caption, steps=25).psnr >= 30


def test_the_tabs_shapes_examples_do_what_they_show(shapes):
    """presets/edit.yaml's Shapes rows with their settings: the DiffEdit and Imagic rows are the edits measured above;
    the DDIB row turns the heart blue in place (measured IoU 0.95), the inversion row redraws the star (34.4 dB)."""
    from tabs import PRESETS, model_examples

    preset = model_examples("edit", "shapes")
    steps, rows = preset["settings"]["steps"], {row[4]: row for row in preset["examples"]}
    assert set(rows) == {"DDIM inversion", "DDIB", "DiffEdit", "Imagic"}
    _, file, caption, target, _ = rows["DDIB"]
    image = Image.open(PRESETS / "examples" / file)
    result = run_ddib(shapes, image, DDIBParams(caption, target, steps=steps, **preset["settings"]["DDIB"]))
    before = best_match(image, np.ones((64, 64), bool))
    after = best_match(result.image, before.mask)
    assert (after.colour, after.shape, after.position) == ("blue", "heart", before.position)
    assert iou(after.mask, before.mask) >= 0.8
    _, file, caption, _, _ = rows["DDIM inversion"]
    assert ddim_invert(shapes, Image.open(PRESETS / "examples" / file), caption, steps=steps).psnr >= 30
