"""The Edit a real image tab through gradio_client: every method, the comparison, the mask editor, Imagic's η, the
inversion shared with Prompt-to-Prompt, and bad input."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

CAPTION, TARGET = "a red ball on the grass", "a blue ball on the grass"
# The API's order (tabs/edit.py, EditTab._wire): image, caption, target, method, steps, seed, then DDIB's, DiffEdit's,
# Imagic's and the comparison's settings. DiffEdit's threshold is low: the tiny model's prompts barely differ.
DEFAULTS = dict(steps=5, seed=0, ddib_cfg=1.0, round_trip=False, domain="this model", lora_scale=1.0, strength=0.5,
                diffedit_cfg=7.5, n_noise=2, mask_strength=0.5, clamp_ratio=3.0, threshold=0.1, own_mask=False,
                mask=None, embedding_steps=2, embedding_lr=1e-2, finetune_steps=2, finetune_lr=1e-3, rank=2,
                imagic_cfg=3.0, eta=0.7, p2p_cfg=3.0)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def picture(tmp_path, seed: int) -> object:
    """An image no other test uses, so the shared cache starts without it."""
    path = tmp_path / f"picture-{seed}.png"
    Image.fromarray(np.random.default_rng(1000 + seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return handle_file(str(path))


def call(client, api, image, method="DDIB", caption=CAPTION, target=TARGET, **settings):
    values = {**DEFAULTS, **settings}
    return client.predict(image, caption, target, method, *values.values(), api_name=api)


@pytest.mark.parametrize("method, says", [("DDIM inversion", "reconstruction PSNR"), ("DDIB", "target domain"),
                                          ("DiffEdit", "mask estimated from 2 noise samples"),
                                          ("Imagic", "final losses")])
def test_each_method_shows_the_image_before_and_after_and_says_what_it_did(client, tmp_path, method, says):
    result, info, _, trajectory, difference, editor = call(client, "/edit", picture(tmp_path, 1), method)
    with Image.open(result[0]) as before, Image.open(result[1]) as after:
        assert before.size == after.size == (64, 64)
    assert says in info and info.startswith(f"**{method}**")
    if method != "Imagic":
        assert len(trajectory) == 6 and trajectory[0]["caption"].endswith("(x_T)")
    if method == "DiffEdit":
        assert Image.open(difference).size == (64, 64) and editor["layers"], "the mask goes to the editor"


def test_compare_all_methods_shows_them_in_one_row_with_their_times(client, tmp_path):
    compared, info, *_ = call(client, "/edit_compare", picture(tmp_path, 2))
    captions = [item["caption"] for item in compared["value"]]
    assert captions[0] == "input" and captions[1].startswith("DDIM inversion ·") and len(captions) == 6
    assert [c.split(" ·")[0] for c in captions[2:]] == ["DDIB", "DiffEdit", "Imagic", "Prompt-to-Prompt"]
    assert all(c.endswith(" s") for c in captions[1:]) and "| Prompt-to-Prompt" in info


def test_one_inversion_serves_both_tabs_and_a_changed_key_inverts_again(client, tmp_path):
    image = picture(tmp_path, 3)
    assert "DDIM inversion computed" in call(client, "/edit", image, "DDIB")[1]
    assert "DDIM inversion reused" in call(client, "/edit", image, "DiffEdit")[1]
    p2p = client.predict(CAPTION, TARGET, "replace", 0.0, 0.8, "", 0.4, "", 0.3, [], 5, 7.5, 1, image, *[1.0] * 12,
                         api_name="/p2p")[2]
    assert "DDIM inversion reused from the cache, null-text inversion computed" in p2p
    assert "Inversion reused from the cache" in client.predict(CAPTION, TARGET, "replace", 0.0, 0.8, "", 0.4, "", 0.3,
                                                               [], 5, 7.5, 1, image, *[1.0] * 12, api_name="/p2p")[2]
    assert "DDIM inversion computed" in call(client, "/edit", image, "DDIB", steps=6)[1]  # steps are a key
    assert "DDIM inversion computed" in call(client, "/edit", image, "DDIB", caption="a ball")[1]


def test_a_painted_mask_is_what_diffedit_edits(client, tmp_path):
    image = picture(tmp_path, 4)
    difference, editor, info = call(client, "/edit_mask", image, "DiffEdit")
    assert "DiffEdit mask" in info and Image.open(difference).size == (64, 64)
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[:, :16] = (255, 0, 200, 255)  # a quarter of the image
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    mask = {"background": handle_file(editor["background"]), "layers": [handle_file(str(tmp_path / "layer.png"))],
            "composite": None}
    info = call(client, "/edit", image, "DiffEdit", own_mask=True, mask=mask)[1]
    assert "mask painted, 25% of the image" in info


def test_imagic_eta_redraws_stage_c_only(app_url, tmp_path):
    client = Client(app_url, verbose=False)  # its own session: the tuned stages are kept per session
    image = picture(tmp_path, 5)
    eta = client.predict(image, 0.3, 5, 3.0, api_name="/edit_eta")
    assert "Run Imagic on this image first" in eta[1]
    call(client, "/edit", image, "Imagic")
    result, info = client.predict(image, 0.3, 5, 3.0, api_name="/edit_eta")
    assert "η 0.3 · stage C only" in info and Image.open(result[1]).size == (64, 64)
    assert "stages A and B reused" in call(client, "/edit", image, "Imagic", eta=1.0)[1]


@pytest.mark.parametrize("settings, match", [
    (dict(image=None), "Upload an image first"),
    (dict(caption=""), "caption"),
    (dict(method="DiffEdit", target=CAPTION), "mask is where the two differ"),
    (dict(method="DiffEdit", own_mask=True), "The mask below is empty"),
    (dict(method="DiffEdit", threshold=0.95, clamp_ratio=10.0), "lower the mask threshold"),
    (dict(method="Imagic", target=""), "target prompt"),
    (dict(domain="no-such-model"), "Model 'no-such-model' not found"),
])
def test_bad_input_gets_a_message_and_the_app_stays_up(client, tmp_path, settings, match):
    image = settings.pop("image", picture(tmp_path, 6))
    with pytest.raises(AppError, match=match):
        call(client, "/edit", image, **settings)
    assert call(client, "/edit", picture(tmp_path, 6), "DDIM inversion")[1].startswith("**DDIM inversion**")
