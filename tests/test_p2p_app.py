"""The Prompt-to-Prompt tab through gradio_client: an edit with a word weight, and bad input."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

WEIGHTS = [1.0] * 12


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def edit(client, source="a red circle", target="a blue circle", kind="replace", blend="", weights=WEIGHTS, real=None,
         windows="", levels=()):
    return client.predict(source, target, kind, 0.0, 0.8, windows, 0.4, blend, 0.3, levels, 5, 7.5, 1, real, *weights,
                          api_name="/p2p")


def test_an_edit_returns_source_and_edited_images_and_says_what_was_done(client):
    source, edited, info, _, mask = edit(client, weights=[1.0, 1.0, 2.0] + [1.0] * 9, blend="circle")[:5]
    with Image.open(source) as a, Image.open(edited) as b:
        assert a.size == b.size == (64, 64) and a.format == "PNG"
    assert info.startswith("replace · seed 1") and "circle ×2" in info
    assert mask["visible"] and Image.open(mask["value"]).size == (64, 64)  # LocalBlend's mask, shown on the edit


@pytest.mark.parametrize("kwargs, match", [(dict(source=""), "source prompt"),
                                           (dict(target="a blue circle today"), "one for one"),
                                           (dict(kind="reweight", target=""), "at least one word"),
                                           (dict(windows="blue 0-0.4"), "word:start-end"),
                                           (dict(windows="green:0-0.4"), "not a word of the target")])
def test_bad_input_gets_a_message_and_the_app_stays_up(client, kwargs, match):
    with pytest.raises(AppError, match=match):
        edit(client, **kwargs)
    assert edit(client)[2].startswith("replace")


def test_a_real_image_is_inverted_and_the_psnr_shown(client, tmp_path):
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "real.png")
    info = edit(client, real=handle_file(str(tmp_path / "real.png")))[2]
    assert "reconstruction PSNR" in info and "DDIM inversion alone" in info


def test_the_localblend_mask_is_shown_on_the_edit_with_what_stays_dimmed():
    from tabs.p2p import blend_view

    edited = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255  # the right half may change
    view = np.asarray(blend_view(edited, Image.fromarray(mask)))
    assert (view[:, 4:] == 200).all() and (view[:, :4] == 60).all()


def test_typing_in_the_prompt_keeps_the_weights_of_words_still_there():
    from tabs.p2p import MAX_WEIGHT_WORDS, P2PTab

    words, *sliders = P2PTab.relabel("a big blue circle", "", "a blue circle", [1.0, 2.0, 0.5, *[1.0] * 9])
    assert words == "a big blue circle" and len(sliders) == MAX_WEIGHT_WORDS
    assert [(s["label"], s["value"]) for s in sliders[:4]] == [("a", 1), ("big", 1), ("blue", 2.0), ("circle", 0.5)]
    assert not any(s["visible"] for s in sliders[4:])


def test_examples_set_the_weights_they_name_on_their_words():
    import yaml

    from tabs import PRESETS
    from tabs.p2p import MAX_WEIGHT_WORDS, P2PTab

    row = P2PTab.example("a smiling bunny doll", "a smiling bunny doll", "reweight", "", 7.5, 0, {"smiling": 5})
    assert row[6] == "a smiling bunny doll" and row[7:] == [1, 5, 1, 1] + [1] * (MAX_WEIGHT_WORDS - 4)
    for model, rows in yaml.safe_load((PRESETS / "p2p.yaml").read_text()).items():
        for label, source, target, *_, weights in (row for row in rows if len(row) == 8):
            assert set(weights) <= set(P2PTab.words(target, source)), (model, label)  # a typo would weigh nothing
