"""The Train tab through gradio_client: a Shapes concept's images, a short job in the background, its status, loss
and validation, then "try it" and both downloads; bad input gets a message."""

import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.pnginfo import read_png
from studio.trainer import TrainParams
from tabs.train import SETTINGS


@pytest.fixture(scope="module")
def client(app_url):
    client = Client(app_url, verbose=False)
    yield client
    # The app shares the test session's model: no job of this module may still be training when others start.
    for name in ("app-job", "app-resume", "app-ti", "app-cd", "app-erase"):
        client.predict(name, api_name="/train_cancel")
        wait_done(client, name, until=("done", "cancelled", "failed"))


def settings(**changes):
    values = {**{name: getattr(TrainParams(), name) for name in SETTINGS}, "resolution": 64, "steps": 3,
              "validate_every": 0, "checkpoint_every": 0, **changes}
    return [values[name] for name in SETTINGS]


def path_of(file) -> str:
    return file if isinstance(file, str) else file.get("path") or file["value"]


def start(client, files, name, instance="a sks star", identifier="sks", class_prompt="a star", *, method="dreambooth",
          files_2=None, instance_prompt_2="", identifier_2="", class_prompt_2="", erase_prompt="", **changes):
    return client.predict([handle_file(path_of(f)) for f in files], name, instance, identifier, class_prompt, "",
                          *settings(**changes), method, files_2, instance_prompt_2, identifier_2, class_prompt_2,
                          erase_prompt, api_name="/train_start")


def wait_done(client, name, timeout=240, until=("done",)):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = client.predict(name, api_name="/train_status")
        if any(f" · {phase}" in result[0] for phase in until) or "⚠️" in result[0] or not result[0]:
            return result
        time.sleep(1)
    raise AssertionError(f"{name} did not finish: {result[0]}")


def test_train_watch_try_and_download(client):
    files, instance, identifier, class_prompt, name, preset, *second = client.predict(
        "green cross", "dreambooth", api_name="/train_concept")
    assert len(files) == 5 and instance == "a sks star" and identifier == "sks" and class_prompt == "a star"
    assert preset == "shapes-concept" and second == [None, "", "", ""]
    status = start(client, files, "app-job")[0]
    assert "app-job" in status
    status, loss, validation, drift, downloads, lora, _ = wait_done(client, "app-job")
    assert "step 3 of 3" in status and " · done" in status, status
    assert len(validation) == 8  # 2 prompts x 2 seeds, before and after
    assert [v["caption"].split(" · ")[0] for v in validation] == ["step 3"] * 4 + ["step 0"] * 4  # newest first
    assert [d["caption"] for d in drift] == ["before · seed 0", "before · seed 1", "after · seed 0", "after · seed 1"]
    assert sorted(Path(path_of(f)).name for f in downloads) == ["app-job_kohya.safetensors",
                                                                "pytorch_lora_weights.safetensors"]
    trained = read_png(path_of(validation[0]["image"]))  # every validation image holds the job's settings
    assert (trained.tab, trained.settings["name"], trained.settings["steps"]) == ("train", "app-job", 3)
    assert trained.settings["instance_prompt"] == "a sks star" and trained.extra["step"] == 3
    images = client.predict("app-job", "a sks star", 0.5, api_name="/train_try")
    assert len(images) == 4
    tried = read_png(path_of(images[1]["image"]))  # a Generate recipe with the LoRA that made it
    assert (tried.tab, tried.settings["seed"], tried.settings["prompt"]) == ("generate", 1, "a sks star")
    assert [(lora["name"], lora["weight"]) for lora in tried.loras] == [("app-job", 0.5)]
    assert "<lora:app-job:0.5>" in Image.open(path_of(images[1]["image"])).info["parameters"]
    check_the_header_applies_it_in_other_tabs(client, "app-job")


def check_the_header_applies_it_in_other_tabs(client, name):
    """The header's picker puts a library LoRA under every tab's jobs for this session; scale 0 is the base model."""
    def generate() -> np.ndarray:
        gallery = client.predict("a sks star", "", 5, 3, 7.5, 64, 64, "Euler", 1, api_name="/generate")[0]
        return np.asarray(Image.open(path_of(gallery[0]["image"])))

    base = generate()
    assert "**app-job** × 1" in client.predict(name, 1.0, None, 1.0, api_name="/loras_pick")
    with_lora = generate()
    client.predict(name, 0.0, None, 1.0, api_name="/loras_pick")
    at_zero = generate()
    assert client.predict(None, 1.0, None, 1.0, api_name="/loras_pick") == "No LoRA applied."
    assert not (with_lora == base).all() and (at_zero == base).all()
    with pytest.raises(AppError, match="No finished LoRA named nothing-here"):
        client.predict("nothing-here", 1.0, None, 1.0, api_name="/loras_pick")


def test_cancel_then_resume_from_the_ui(client):
    files = client.predict("green cross", api_name="/train_concept")[0]
    start(client, files, "app-resume", steps=300, checkpoint_every=0)
    while "step 0 of" in client.predict("app-resume", api_name="/train_status")[0]:
        time.sleep(0.5)
    client.predict("app-resume", api_name="/train_cancel")
    status = wait_done(client, "app-resume")[0]
    assert "cancelled" in status and "Resume continues" in status, status
    stopped = int(status.split("step ")[1].split(" ")[0])
    assert 0 < stopped < 300
    client.predict("app-resume", 300, api_name="/train_resume")
    status, loss = wait_done(client, "app-resume")[:2]
    assert "step 300 of 300" in status and " · done" in status, status
    steps = [row[0] for row in loss["data"]] if "data" in loss else list(loss["value"]["step"])
    assert steps == list(range(1, 301)), "the loss curve continues where the cancel stopped it"


@pytest.mark.parametrize("n_files, changes, match", [
    (2, {}, "3 to 20 images"),
    (5, {"instance": "a star"}, "must contain the identifier"),
    (5, {"identifier": ""}, "must contain the identifier"),
])
def test_bad_input_gets_a_message(client, n_files, changes, match):
    files = client.predict("green cross", api_name="/train_concept")[0][:n_files]
    with pytest.raises(AppError, match=match):
        start(client, files, "bad-job", **changes)


def test_bad_names_and_trying_without_a_lora(client):
    files = client.predict("green cross", api_name="/train_concept")[0]
    with pytest.raises(AppError, match="LoRA name"):
        start(client, files, "../escape")
    with pytest.raises(AppError, match="Pick a finished LoRA"):
        client.predict("no-such-lora", "a sks star", 1.0, api_name="/train_try")


def test_textual_inversion_from_the_ui_is_an_embedding_every_tab_reads(client):
    """The method picker's Textual Inversion: the concept button fills a new token, the job makes an embedding (not a
    LoRA) that the library lists by kind, that Try it draws with, and whose two formats download."""
    files, instance, identifier, class_prompt, name, preset, *_ = client.predict(
        "green cross", "textual-inversion", api_name="/train_concept")
    assert (instance, identifier, name, preset) == ("a ti-cross", "ti-cross", "ti-cross", "shapes-textual-inversion")
    start(client, files, "app-ti", instance, identifier, class_prompt, method="textual-inversion")
    status, _, validation, drift, downloads, library, _ = wait_done(client, "app-ti")
    assert " · done" in status, status
    assert len(drift) == 4  # the token at its initializer word, then as learned
    assert sorted(Path(path_of(f)).name for f in downloads) == ["learned_embeds.safetensors"]
    assert ["app-ti · embedding", "app-ti"] in library["choices"], library
    images = client.predict("app-ti", "a ti-cross", 1.0, api_name="/train_try")
    assert len(images) == 4


def test_custom_diffusion_two_concepts_and_an_eraser_from_the_ui(client):
    files, instance, identifier, class_prompt, name, preset, files_2, instance_2, identifier_2, class_2 = \
        client.predict("green cross", "custom-diffusion", api_name="/train_concept")
    assert (instance, identifier, instance_2, identifier_2) == ("a v1-cross star", "v1-cross", "a v2-moon circle",
                                                                "v2-moon")
    assert len(files_2) == 5 and preset == "shapes-custom-diffusion"
    start(client, files, "app-cd", instance, identifier, class_prompt, method="custom-diffusion",
          files_2=[handle_file(path_of(f)) for f in files_2], instance_prompt_2=instance_2, identifier_2=identifier_2,
          class_prompt_2=class_2, prior_preservation=False)
    status, *_, downloads, library, _ = wait_done(client, "app-cd")
    assert " · done" in status, status
    assert {"pytorch_custom_diffusion_weights.safetensors", "v1-cross.safetensors", "v2-moon.safetensors",
            "pytorch_lora_weights.safetensors"} <= {Path(path_of(f)).name for f in downloads}
    assert ["app-cd · Custom Diffusion", "app-cd"] in library["choices"]
    start(client, [], "app-erase", "", "", "", method="erase", erase_prompt="a star")
    status, *_, library, _ = wait_done(client, "app-erase")
    assert " · done" in status and ["app-erase · ESD eraser", "app-erase"] in library["choices"], status
