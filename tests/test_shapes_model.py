"""The shipped Shapes model, measured with the world's own detector (small CI sample, bars below the card's).

The model is still in training (see models/shapes/README.md): colour and mostly shape class are learned, position
is not yet. These tests hold what it does today, so a broken model, pipeline or tokenizer fails CI.
"""

import pytest

from studio.generate import GenerateParams
from studio.shapes.evaluate import score_text

pytestmark = pytest.mark.slow


def test_held_out_single_shape_captions_get_their_colour(manager):
    """A random model names the right colour about 1 time in 5 and the shape 1 in 6; the card measures 89% and 71%
    on 80 captions."""
    with manager.lend("shapes") as pipe:
        pipe.set_progress_bar_config(disable=True)
        score = score_text(pipe, 1, 40, GenerateParams(steps=20, width=64, height=64))
    assert score.colour / score.n >= 0.7 and score.shape / score.n >= 0.45, score
