"""The Classify tab through gradio_client: one image, bad class lists, cancel-free batch over a zip."""

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from studio.pnginfo import read_png
from tests.test_classify import dataset, image


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def classify(client, path, classes="red circle\nblue square\ngreen star", templates="a {}", schedule="custom",
             custom="4:2, 8:1"):
    return client.predict(handle_file(str(path)), classes, templates, schedule, custom, "l2", 0, 64,
                          api_name="/classify")


def test_classify_an_image_shows_the_prediction_ranking_and_stages(client, tmp_path):
    image().save(tmp_path / "a.png")
    info, ranking, curves, stages, report = classify(client, tmp_path / "a.png")
    names = [row[0] for row in ranking["data"]]
    assert sorted(names) == ["blue square", "green star", "red circle"]
    assert f"Prediction: **{names[0]}**" in info and "20 UNet evaluations" in info  # 3 x 4 + 2 x 4
    assert [row[1] for row in stages["data"]] == [4, 8]
    recipe = read_png(report)  # the report PNG: the image, the settings and the prediction, for Restore
    assert recipe.tab == "classify" and recipe.extra["prediction"] == names[0]
    assert recipe.settings["custom"] == "4:2, 8:1" and len(recipe.images) == 1


@pytest.mark.parametrize("classes, templates, custom, match", [
    ("cat", "a {}", "4:1", "at least two"),
    ("cat\ndog\ncat", "a {}", "4:1", "repeated: cat"),
    ("cat\ndog", "a photo", "4:1", "needs a"),
    ("cat\ndog", "a {}", "four:1", "samples:kept"),
])
def test_bad_settings_get_a_message_and_the_app_stays_up(client, tmp_path, classes, templates, custom, match):
    image().save(tmp_path / "a.png")
    with pytest.raises(AppError, match=match):
        classify(client, tmp_path / "a.png", classes, templates, custom=custom)
    assert classify(client, tmp_path / "a.png")[0].startswith("### Prediction")


def test_batch_over_a_zip_reports_accuracy_and_confusion(client, tmp_path):
    accuracy, confusion, rows = client.predict(handle_file(str(dataset(tmp_path / "set.zip"))), "", "", "a {}",
                                               "custom", "4:1", "l2", 0, 64, api_name="/classify_batch")
    assert "on 4 images · 2 classes" in accuracy
    assert confusion["headers"] == ["truth", "blue square", "red circle"] and len(rows["data"]) == 4
