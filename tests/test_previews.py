"""Live previews through the app: the picture forms in the result while it denoises, the final image is the one a run
without previews makes, the interval is each session's own, and Cancel still stops a streaming job."""

import time

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

STEPS = 6


def generate(client, seed=9, steps=STEPS, size=64, wait=True):
    args = ("a red circle", "", seed, steps, 7.5, size, size, "Euler a", 2)
    return client.submit(*args, api_name="/generate") if not wait else client.predict(*args, api_name="/generate")


def pixels(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in gallery]


@pytest.fixture
def watching(app_url):
    client = Client(app_url, verbose=False)
    client.predict(2, api_name="/preview_every")
    return client


def test_previews_arrive_during_the_job_and_the_result_is_unchanged(app_url, watching):
    job = generate(watching, wait=False)
    final = job.result()
    outputs = job.outputs()
    previews = outputs[:-1]
    assert len(previews) == (STEPS - 1) // 2, "a preview after steps 2 and 4 (the last step gives the result)"
    for gallery, _ in previews:
        assert len(gallery) == 2  # one per image of the batch, at the final size
        assert all(p.shape == (64, 64, 3) for p in pixels(gallery))
    quiet = Client(app_url, verbose=False)
    quiet.predict(0, api_name="/preview_every")
    plain, _ = generate(quiet)
    job = generate(quiet, wait=False)
    job.result()
    assert len(job.outputs()) == 1, "previews off: the result alone"
    for a, b in zip(pixels(final[0]), pixels(plain)):
        assert np.array_equal(a, b)


def test_cancel_stops_a_job_that_streams_previews(watching):
    job = generate(watching, steps=150, size=256, wait=False)
    while len(job.outputs()) < 1 and not job.done():
        time.sleep(0.05)  # a preview has arrived: the job is denoising
    started = time.perf_counter()
    watching.predict(api_name="/cancel_generate")
    with pytest.raises(Exception, match="(?i)cancel"):
        job.result()
    assert time.perf_counter() - started < 5
    assert len(generate(watching)[0]) == 2, "the app works after a cancel"
