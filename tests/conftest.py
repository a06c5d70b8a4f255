"""Shared fixtures: one tiny model family per test session, a model manager over it, and the live app."""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from studio.models import ModelManager


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still runs in CI)")
    config.addinivalue_line("markers", "browser: drives the real app in headless chromium")
    # diffusers' schedulers call np.array(tensor, copy=False); numpy 2 warns on every call. Not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")
    # Gradio's queue calls pandas options that pandas 3 deprecates. Not ours either.
    config.addinivalue_line("filterwarnings", "ignore::pandas.errors.Pandas4Warning")
    # Importing any controlnet-aux annotator imports all of them, with their dependencies' deprecation noise.
    for noise in ("Overwriting tiny_vit", "Importing from timm", "The module 'mediapipe'", "`torch.jit.script`",
                  "Please import `gaussian_filter`", "Mapping deprecated model name"):
        config.addinivalue_line("filterwarnings", f"ignore:{noise}")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if workers > 1:
        # Workers (pytest -n) split the cores between them: OpenMP threads spinning on a core another worker holds
        # make every small op wait, so two workers on two cores take one thread each.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@contextmanager
def one_thread() -> Iterator[None]:
    """Training the Shapes model on two shared cores: OpenMP's spinning workers make every small op wait for a
    descheduled thread, so one thread trains its 6M-parameter UNet several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shapes_images(manager: ModelManager, prompt: str, seeds: int, loras=None, embeddings=None) -> list:
    """`seeds` images of `prompt` from the Shapes model (seeds 100, 101, ...; 20 DPM++ 2M steps, 64x64)."""
    from studio.generate import GenerateParams, run_generate

    images = []
    with manager.lend("shapes", loras=loras, embeddings=embeddings) as pipe:
        pipe.set_progress_bar_config(disable=True)
        for first in range(100, 100 + seeds, 5):
            images += run_generate(pipe, GenerateParams(prompt, seed=first, steps=20, width=64, height=64,
                                                        n_images=min(5, 100 + seeds - first))).images
    return images


@pytest.fixture(autouse=True)
def hub_mode():
    """`ModelManager(offline=True)` switches the whole process offline, as `--offline` should; put it back after each
    test so the next one sees the mode it sets up itself."""
    import huggingface_hub.constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved, constant = {n: os.environ.get(n) for n in names}, huggingface_hub.constants.HF_HUB_OFFLINE
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    huggingface_hub.constants.HF_HUB_OFFLINE = constant


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models are built here once per test session (the tiny family takes a few seconds)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def manager(model_cache: Path) -> ModelManager:
    return ModelManager("cpu", cache_dir=model_cache)


@pytest.fixture(scope="session")
def tiny_root(manager: ModelManager) -> Path:
    """The tiny family's folder: sd/, controlnet/, t2i-adapter/ in diffusers layout."""
    return Path(manager.resolve("tiny").location).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(manager: ModelManager, tmp_path_factory: pytest.TempPathFactory):
    """The real app on 127.0.0.1, as `python app.py` builds it, with the tiny model."""
    from app import CRISP_SMALL_IMAGES, CSS, build_app, queued

    outputs = tmp_path_factory.mktemp("outputs")
    demo = build_app(manager, "tiny", outputs)
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                        head=CRISP_SMALL_IMAGES)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
