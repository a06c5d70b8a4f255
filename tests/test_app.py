"""The real app, launched on 127.0.0.1 and driven through gradio_client, as an API user would."""

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import parse_args


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def generate(client, prompt="a red circle", seed=5, steps=3, width=64, height=80, scheduler="Euler a", n=1):
    return client.predict(prompt, "", seed, steps, 7.5, width, height, scheduler, n, api_name="/generate")


def test_generate_returns_pngs_of_the_requested_size_with_parameters(client):
    gallery, info = generate(client, n=2)
    assert len(gallery) == 2
    with Image.open(gallery[0]["image"]) as image:
        assert image.format == "PNG" and image.size == (64, 80)
        assert "Seed: 5, Size: 64x80" in image.info["parameters"]
    assert "Seed 5–6" in info


def test_restore_parameters_from_a_generated_png(client):
    gallery, _ = generate(client, prompt="a blue square", seed=42, scheduler="UniPC", n=2)
    summary, found = client.predict(handle_file(gallery[1]["image"]), api_name="/restore")
    assert "**Generate** settings" in summary and found["tab"] == "generate"
    settings = found["settings"]
    assert (settings["prompt"], settings["scheduler"]) == ("a blue square", "UniPC")
    assert (settings["seed"], settings["n_images"]) == (43, 1), "the second image's own seed, alone"


def test_bad_input_gets_a_message_and_the_app_stays_up(client):
    with pytest.raises(AppError, match="5000 is greater than maximum value 2048"):
        generate(client, width=5000)
    gallery, _ = generate(client)
    assert len(gallery) == 1


def test_missing_model_gets_a_clear_message(manager, tmp_path):
    # A second app pointed at a hub model that is not cached, with the Hub unreachable, answers at once.
    from app import build_app
    from tests.conftest import free_port

    offline = type(manager)("cpu", cache_dir=manager.cache_dir, offline=True)
    demo = build_app(offline, "sd15", tmp_path)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(AppError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
            generate(Client(f"http://127.0.0.1:{port}/", verbose=False))
    finally:
        demo.close()


def test_flags():
    args = parse_args(["--model", "sd15", "--device", "cpu", "--host", "0.0.0.0", "--port", "7000", "--share",
                       "--offline", "--compile", "--memory-budget", "6"])
    assert (args.model, args.device, args.host, args.port, args.memory_budget) == ("sd15", "cpu", "0.0.0.0", 7000, 6)
    assert args.share and args.offline and args.compile and not args.allow_pickle
    assert parse_args([]).model == "shapes"


def test_cancel_stops_a_running_generation(client):
    import time

    job = client.submit("a slow one", "", 1, 150, 7.5, 512, 512, "Euler", 1, api_name="/generate")
    while not job.status().progress_data and not job.done():
        time.sleep(0.05)  # wait until denoising has started
    started = time.perf_counter()
    client.predict(api_name="/cancel_generate")
    with pytest.raises(Exception, match="(?i)cancel"):
        job.result()
    assert time.perf_counter() - started < 3, "the job should stop at the next step"
    assert len(generate(client)[0]) == 1, "the app works after a cancel"
