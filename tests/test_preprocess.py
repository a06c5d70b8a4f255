"""Preprocessors: every one returns an RGB map of the input's size; weight-free ones work offline and draw what
they should; network ones load through the model manager or say clearly what is missing."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from studio.models import ModelManager, ModelUnavailable
from studio.preprocess import PREPROCESSORS, Knobs, preprocessors_for, run_preprocessor
from tests.random_annotators import RANDOM_DETECTORS

PHOTO = Image.fromarray(data.astronaut()).resize((130, 97))  # odd sizes on purpose


def square(side: int = 64, inner: int = 32) -> Image.Image:
    array = np.zeros((side, side, 3), np.uint8)
    lo = (side - inner) // 2
    array[lo : lo + inner, lo : lo + inner] = 255
    return Image.fromarray(array)


def test_every_network_preprocessor_has_a_random_stand_in_for_the_tests():
    assert {p.name for p in PREPROCESSORS.values() if p.needs_weights} == set(RANDOM_DETECTORS)


@pytest.mark.parametrize("name", [n for n in PREPROCESSORS if n != "depth_zoe"])
def test_each_preprocessor_returns_an_rgb_map_of_the_input_size(name):
    detector = RANDOM_DETECTORS[name]() if name in RANDOM_DETECTORS else None
    with torch.no_grad():
        out = run_preprocessor(name, PHOTO, Knobs(detect_resolution=128), detector)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == PHOTO.size


@pytest.mark.slow
def test_zoe_depth_returns_a_map_of_the_input_size():
    """ZoeDepth's BEiT-L backbone is the heaviest annotator (about 15 s on two cores at 128 px)."""
    out = run_preprocessor("depth_zoe", PHOTO, Knobs(detect_resolution=64), RANDOM_DETECTORS["depth_zoe"]())
    assert out.size == PHOTO.size and out.mode == "RGB"


def test_canny_draws_the_outline_of_a_square_and_nothing_else():
    edges = np.asarray(run_preprocessor("canny", square(), Knobs(detect_resolution=64)))[..., 0] > 0
    ring = np.zeros((64, 64), bool)
    ring[14:50, 14:50] = True
    ring[18:46, 18:46] = False
    assert edges[ring].sum() > 100 and not edges[~ring].any()


def test_xdog_scribble_turns_a_dark_line_on_white_into_a_white_stroke_on_black():
    array = np.full((64, 64, 3), 255, np.uint8)
    array[:, 30:33] = 0
    out = np.asarray(run_preprocessor("scribble_xdog", Image.fromarray(array), Knobs(detect_resolution=64)))[..., 0]
    assert out[:, 30:33].mean() > 200 and out[:, :20].max() == 0 and out[:, 45:].max() == 0


def test_colour_grid_is_constant_in_each_cell_and_shuffle_is_reproducible():
    grid = np.asarray(run_preprocessor("color", PHOTO.resize((128, 128)), Knobs(block=32)))
    for y in range(0, 128, 32):
        for x in range(0, 128, 32):
            assert len(np.unique(grid[y : y + 32, x : x + 32].reshape(-1, 3), axis=0)) == 1
    a, b, c = (np.asarray(run_preprocessor("shuffle", PHOTO, Knobs(detect_resolution=128, seed=s))) for s in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()


def test_inputs_in_odd_formats_are_accepted():
    for image in (PHOTO.convert("RGBA"), PHOTO.convert("L"), PHOTO.convert("P"),
                  Image.fromarray((np.asarray(PHOTO.convert("L")).astype(np.uint16) * 257))):
        assert run_preprocessor("canny", image, Knobs(detect_resolution=64)).size == PHOTO.size
    inverted = run_preprocessor("none", square(), Knobs(invert=True))
    assert np.asarray(inverted)[0, 0, 0] == 255 and np.asarray(inverted)[32, 32, 0] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: run_preprocessor("sobel", PHOTO), "Unknown preprocessor"),
    (lambda: run_preprocessor("canny", PHOTO, Knobs(low_threshold=200, high_threshold=100)), "low threshold"),
    (lambda: run_preprocessor("canny", PHOTO, Knobs(detect_resolution=10_000)), "detect resolution"),
    (lambda: run_preprocessor("canny", Image.new("RGB", (4, 4))), "at least 8 pixels"),
    (lambda: run_preprocessor("softedge_hed", PHOTO), "annotator network"),
])
def test_bad_input_gets_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_annotator_weights_load_once_through_the_manager_from_a_local_folder(tmp_path):
    """The real from_pretrained path of controlnet-aux, with a random HED saved under the Hub's file name."""
    torch.save(RANDOM_DETECTORS["softedge_hed"]().netNetwork.state_dict(), tmp_path / "ControlNetHED.pth")
    manager = ModelManager("cpu", offline=True, annotators_dir=tmp_path)
    detector = manager.annotator("softedge_hed")
    assert manager.annotator("scribble_hed") is not detector  # one cache entry per preprocessor name
    assert manager.annotator("softedge_hed") is detector and manager.load_count == 2
    assert run_preprocessor("softedge_hed", PHOTO, Knobs(detect_resolution=64), detector).size == PHOTO.size
    assert manager.annotator("canny") is None  # weight-free
    with pytest.raises(ModelUnavailable, match="table5_pidinet.pth"):
        manager.annotator("softedge_pidinet")


def test_missing_annotator_weights_offline_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty Hub cache
    with pytest.raises(ModelUnavailable) as error:
        ModelManager("cpu", offline=True).annotator("depth_midas")
    text = str(error.value)
    assert "dpt_hybrid-midas-501f0c75.pt" in text and "lllyasviel/Annotators" in text and "--annotators" in text
    assert "canny" in text  # the weight-free ones are named as what still works


def test_each_catalog_condition_has_a_preprocessor():
    """Every ControlNet and adapter in the catalog can be fed from the tab (none = the image itself)."""
    from studio.models import Catalog

    catalog = Catalog.load()
    conditions = {e["condition"] for s in ("controlnet", "t2i_adapter") for e in catalog.sections[s].values()}
    missing = {c for c in conditions if not preprocessors_for(c)} - {"inpaint", "keypose", "segmentation"}
    assert not missing, missing
