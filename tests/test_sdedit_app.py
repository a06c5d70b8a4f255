"""The SDEdit tab through gradio_client: layers in, edit out; sweep; composite; clear errors."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

SETTINGS = dict(prompt="a red circle", negative="", t0=0.6, steps=10, cfg=7.5, eta=0.0, repeats=1, seed=3, feather=0)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture
def layers(tmp_path):
    rng = np.random.default_rng(0)
    background = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    strokes = Image.new("RGBA", (64, 64))
    strokes.paste((220, 30, 30, 255), (8, 20, 28, 44))  # a red blob on the left
    mask = Image.new("RGBA", (64, 64))
    mask.paste((255, 255, 255, 255), (0, 0, 32, 64))  # may change: the left half
    paths = {}
    for name, image in (("background", background), ("strokes", strokes), ("mask", mask)):
        image.save(tmp_path / f"{name}.png")
        paths[name] = handle_file(str(tmp_path / f"{name}.png"))
    return paths, background, strokes


def editor(paths, with_mask=True):
    return {"background": paths["background"], "layers": [paths["strokes"], *([paths["mask"]] if with_mask else [])],
            "composite": None, "id": None}


def test_strokes_and_mask_layer_edit_only_the_masked_half(client, layers):
    paths, background, strokes = layers
    result, views, info = client.predict(editor(paths), True, *SETTINGS.values(), api_name="/sdedit")
    out = np.asarray(Image.open(result))
    guide = np.asarray(Image.alpha_composite(background.convert("RGBA"), strokes).convert("RGB"))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:, 32:], guide[:, 32:]), "the right half (not in the mask) is pixel-exact"
    assert not np.array_equal(out[:, :32], guide[:, :32])
    assert len(views) >= 2 and "timestep 501" in info and "inside the mask only" in info


def test_without_the_mask_layer_the_whole_image_changes(client, layers):
    paths, background, _ = layers
    result, _, info = client.predict(editor(paths), False, *SETTINGS.values(), api_name="/sdedit")
    assert "whole image" in info
    assert not np.array_equal(np.asarray(Image.open(result))[:, 32:], np.asarray(background)[:, 32:])


def test_sweep_returns_a_strip_and_the_two_curves(client, layers):
    paths, _, _ = layers
    strip, plot = client.predict(editor(paths), True, *SETTINGS.values(), api_name="/sdedit_sweep")
    assert len(strip) == 6
    measures = {row[2] for row in plot["data"]} if "data" in plot else set(plot["value"]["measure"])
    assert measures == {"distance to guide", "denoising error"}


def test_composite_puts_the_pasted_region_in_the_mask_layer(client, layers, tmp_path):
    paths, _, _ = layers
    Image.new("RGB", (40, 40), (30, 70, 225)).save(tmp_path / "patch.png")
    value = client.predict(editor(paths), handle_file(str(tmp_path / "patch.png")), 0.75, 0.5, 0.25,
                           api_name="/sdedit_composite")
    mask = np.asarray(Image.open(value["layers"][1]))[..., 3] > 0
    assert 200 < mask.sum() < 300 and mask[:, 48].any() and not mask[:, :40].any()


def test_no_image_gets_a_clear_message(client):
    with pytest.raises(AppError, match="Upload an image"):
        client.predict(None, True, *SETTINGS.values(), api_name="/sdedit")
