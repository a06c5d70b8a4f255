"""The ControlNet / T2I-Adapter tab through gradio_client: preview a map, generate with it, compare, run every
preprocessor, and clear messages for what is missing."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.test_preprocess import square

OFF = [False, None, None, 1.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "square.png"
    square().save(path)
    return path


def preview(client, path, preprocessor="Canny edges"):
    knobs = [100, 200, 0.1, 0.1, False, False, False, False, 0.1, 6.0, 32, 0, 8, 64, False]
    return client.predict(handle_file(str(path)), preprocessor, True, 512, 64, 64, *knobs, api_name="/control_preview")


def editor(value: dict) -> dict:
    return {"background": handle_file(value["composite"]), "layers": [], "composite": handle_file(value["composite"])}


def settings(seed=3):
    return ["a red circle", "", 4, 7.5, seed, 64, 64, "UniPC", False, "balanced", "crop and resize", None, 0.75]


def test_preview_gives_the_canny_map_of_the_image(client, picture):
    value = preview(client, picture)
    edges = np.asarray(Image.open(value["composite"]).convert("L")) > 0
    assert edges.shape == (64, 64) and edges[15, 20:44].all() and not edges[24:40, 24:40].any()


def test_generate_with_one_condition_shows_the_result_and_the_map_it_used(client, picture):
    edited = editor(preview(client, picture))
    image, fed, info = client.predict(*settings(), True, "tiny-controlnet", edited, 1.0, 0.0, 1.0, *OFF, *OFF,
                                      api_name="/control")
    assert Image.open(image).size == (64, 64) and len(fed) == 1
    assert "seed 3" in info and "tiny-controlnet" in info


def test_compare_runs_no_control_controlnet_and_adapter_with_times(client, picture):
    edited = editor(preview(client, picture))
    shown, table = client.predict(*settings(), edited, "tiny-controlnet", "tiny-t2i-adapter",
                                  api_name="/control_compare")
    assert [item["caption"].split(" · ")[0] for item in shown] == [
        "no control", "ControlNet tiny-controlnet", "T2I-Adapter tiny-t2i-adapter"]
    assert "× no control" in table


def test_every_weight_free_preprocessor_runs_and_the_missing_ones_are_named(client, picture):
    maps, note = client.predict(handle_file(str(picture)), 64, 64, api_name="/control_all_preprocessors")
    captions = [item["caption"] for item in maps]
    assert any(c.startswith("Canny edges") for c in captions) and any(c.startswith("Colour grid") for c in captions)
    assert "Soft edges (HED)" in note


def test_missing_map_and_missing_weights_get_messages_and_the_app_stays_up(client, picture):
    with pytest.raises(AppError, match="Condition 1 has no map"):
        client.predict(*settings(), True, "tiny-controlnet", None, 1.0, 0.0, 1.0, *OFF, *OFF, api_name="/control")
    with pytest.raises(AppError, match="ControlNetHED.pth"):
        preview(client, picture, "Soft edges (HED)")
    assert preview(client, picture)["composite"]
