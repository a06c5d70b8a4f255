"""ESD's claims measured on the shipped Shapes model (Gandikota et al. 2023): the shapes-erase preset, a cross-attention
LoRA trained in about a minute from the model's own images of "a star", takes stars out of "a star" images, while the
other shapes' prompts still draw their shape (the paper's specificity) in their colour."""

import pytest
from conftest import one_thread, shapes_images

from studio.shapes.detect import detect
from studio.trainer import TrainParams, presets, train

pytestmark = pytest.mark.slow
OTHERS = ["a red circle", "a blue square", "a yellow triangle", "a purple heart"]


@pytest.fixture(scope="module")
def eraser(manager, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras") / "no-star"
    params = TrainParams(**{**presets()["shapes-erase"], "erase_prompt": "a star", "resolution": 64,
                            "validate_every": 0, "checkpoint_every": 0})
    with one_thread():
        return train(manager, "shapes", folder, params)


def largest(manager, prompt, seeds, loras=None):
    """(shape, colour) of the largest region the detector sees in each image, (None, None) for none."""
    found = [detect(image) for image in shapes_images(manager, prompt, seeds, loras)]
    return [(f[0].shape, f[0].colour) if f else (None, None) for f in found]


def test_the_eraser_takes_stars_out_of_a_star(manager, eraser):
    """Measured (CPU, one thread, seeds 100-119): the base model draws a star in 10 of 20 "a star" images (its other
    guesses are circles and diamonds), the eraser in 0 (η = 3, 300 steps); with the paper's η = 1 it took 600 steps
    to get to 2 of 20."""
    base = [shape for shape, _ in largest(manager, "a star", 20)]
    erased = [shape for shape, _ in largest(manager, "a star", 20, [(eraser, 1.0)])]
    assert base.count("star") >= 6, base
    assert erased.count("star") <= 2, erased


def test_other_shapes_and_colours_are_unaffected(manager, eraser):
    """Measured: with the eraser the four other prompts drew their shape in 38 of 40 images (two blue squares came
    out as circles; without it 40 of 40), and the colour named in 40 of 40."""
    shapes = colours = 0
    for prompt in OTHERS:
        colour, shape = prompt.split()[1:]
        erased = largest(manager, prompt, 10, [(eraser, 1.0)])
        assert sum(s == shape for s, _ in erased) >= 7, (prompt, erased)
        shapes += sum(s == shape for s, _ in erased)
        colours += sum(c == colour for _, c in erased)
    assert shapes >= 0.8 * 10 * len(OTHERS) and colours >= 0.9 * 10 * len(OTHERS), (shapes, colours)
