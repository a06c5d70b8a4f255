"""The shipped Shapes model, measured with the world's own detector (small CI sample, bars below the card's).

The model is still in training (see models/shapes/README.md): colour and mostly shape class are learned, position
is not yet. These tests hold what it does today, so a broken model, pipeline or tokenizer fails CI.
"""

import pytest
import torch

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


def test_the_words_are_the_only_place_the_prompt_reaches_the_unet(manager):
    """The training recipe (models/shapes/README.md): from the end token on, the text encoder outputs the empty
    prompt's embedding, so the UNet must read the words. A retrain that loses this makes word maps diffuse again."""
    with manager.lend("shapes") as pipe:
        ids = pipe.tokenizer(["", "a red circle on the left"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            empty, prompt = pipe.text_encoder(ids).last_hidden_state.float()
    end = int((ids[1] == pipe.tokenizer.eos_token_id).nonzero()[0])
    scale = (empty**2).mean()
    assert ((prompt[end:] - empty[end:]) ** 2).mean() < 1e-3 * scale  # measured 1e-5
    assert ((prompt[1:end] - empty[1:end]) ** 2).mean() > 0.1 * scale  # the words do differ
