"""The shipped Shapes model does what its card says, measured with the world's own detector (small CI sample)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.generate import GenerateParams, run_generate
from studio.sdedit import SDEditParams, run_sdedit, sweep
from studio.shapes.detect import detect
from studio.shapes.evaluate import score_text

pytestmark = pytest.mark.slow


def test_held_out_single_shape_captions_small_sample(manager):
    """The card's bars on 200 captions are colour ≥ 90%, shape ≥ 85%, position ≥ 80%; CI checks 40 captions
    against lower bars, so a broken model or pipeline fails while sampling noise does not."""
    with manager.lend("shapes") as pipe:
        pipe.set_progress_bar_config(disable=True)
        score = score_text(pipe, 1, 40, GenerateParams(steps=20, width=64, height=64))
    colour, shape, position = (x / score.n for x in (score.colour, score.shape, score.position))
    assert colour >= COLOUR_BAR and shape >= SHAPE_BAR and position >= POSITION_BAR, (colour, shape, position)


def test_generate_draws_the_named_shape(manager):
    with manager.lend("shapes") as pipe:
        result = run_generate(pipe, GenerateParams("a red circle", seed=0, steps=20, width=64, height=64, n_images=4))
    hits = sum(any(d.colour == "red" and d.shape == "circle" for d in detect(im)) for im in result.images)
    assert hits >= 3


def blob_on_white() -> Image.Image:
    canvas = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(canvas).ellipse([4, 22, 22, 42], fill=(210, 40, 40))  # a rough red blob on the left
    ImageDraw.Draw(canvas).line([6, 30, 20, 36], fill=(180, 30, 60), width=3)
    return canvas


def test_sdedit_turns_a_red_blob_into_a_red_circle_on_the_left(manager):
    found = 0
    with manager.lend("shapes") as pipe:
        for seed in range(6):
            result = run_sdedit(pipe, blob_on_white(), SDEditParams("a red circle on the left", t0=0.6, seed=seed))
            found += any((d.colour, d.shape, d.position) == ("red", "circle", "left") for d in detect(result.image))
    assert found >= 4, f"{found}/6 seeds"


def test_sdedit_faithfulness_falls_as_t0_rises(manager):
    with manager.lend("shapes") as pipe:
        points = sweep(pipe, blob_on_white(), SDEditParams("a blue square on the right", seed=1),
                       [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    distance = [p.faithfulness for p in points]
    assert np.corrcoef(range(len(distance)), distance)[0, 1] > 0.8, distance
    assert distance[0] < distance[-1]
    # At t0 = 1 the guide is forgotten: the prompt's blue square appears, the red blob does not.
    last = detect(points[-1].result.image)
    assert any(d.colour == "blue" for d in last) and not any(d.colour == "red" and d.position == "left" for d in last)


def test_sdedit_mask_keeps_everything_outside_it(manager):
    guide = blob_on_white()
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    with manager.lend("shapes") as pipe:
        result = run_sdedit(pipe, guide, SDEditParams("a blue star on the right", t0=0.8, seed=2, feather=4), mask=mask)
    assert np.array_equal(np.asarray(result.image)[:, :32], np.asarray(guide)[:, :32])
    assert any(d.colour == "blue" and d.position == "right" for d in detect(result.image))
