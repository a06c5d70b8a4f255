"""The InstructPix2Pix tab through gradio_client: an edit shows before and after with its recipe, the guidance grid
is one picture per pair, and bad input gets a message while the app stays up."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.pnginfo import read_png

# The API's order (tabs/ip2p.py, IP2PTab._wire): image, instruction, model, s_T, s_I, steps, resolution, sampler, seed
SETTINGS = dict(model="tiny-ip2p", text_guidance=7.5, image_guidance=1.5, steps=3, resolution=64, scheduler="Euler a",
                seed=5)


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return handle_file(str(path))


def call(client, api, image, instruction="make the square red", **settings):
    return client.predict(image, instruction, *{**SETTINGS, **settings}.values(), api_name=api)


def test_an_edit_shows_the_input_and_the_result_with_its_recipe(client, picture):
    (before, after), info = call(client, "/ip2p", picture)
    with Image.open(before) as b, Image.open(after) as a:
        assert b.size == a.size == (104, 64), "the shorter side at 64 pixels, the aspect kept, multiples of 8"
    assert "“make the square red”" in info and "seed 5" in info
    recipe = read_png(after)
    assert recipe.tab == "ip2p" and recipe.settings["instruction"] == "make the square red"
    assert recipe.settings["model"] == "tiny-ip2p" and recipe.settings["image_guidance"] == 1.5


def test_the_grid_has_a_cell_per_pair_named_by_its_scales(client, picture):
    cells, info = call(client, "/ip2p_grid", picture, steps=1)
    captions = [cell["caption"] for cell in cells]
    assert len(captions) == 16 and captions[0] == "s_T 3 · s_I 1" and captions[-1] == "s_T 10 · s_I 2"
    assert "seed 5 in every cell" in info


@pytest.mark.parametrize("change, message", [
    ({"model": "tiny"}, "not an InstructPix2Pix model"),
    ({"model": ""}, "Choose an InstructPix2Pix model"),
    ({"model": "no/such/model"}, "not found"),
])
def test_bad_settings_get_a_message(client, picture, change, message):
    with pytest.raises(AppError, match=message):
        call(client, "/ip2p", picture, **change)


def test_no_image_or_a_broken_file_gets_a_message_and_the_app_stays_up(client, tmp_path, picture):
    with pytest.raises(AppError, match="Upload an image"):
        call(client, "/ip2p", None)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(AppError, match="The input image is not a readable image"):
        call(client, "/ip2p", handle_file(str(broken)))
    assert call(client, "/ip2p", picture, steps=1)[1]
