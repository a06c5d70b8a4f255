"""InstructPix2Pix on the tiny model: our loop is diffusers' pipeline step for step, the two guidance scales are
the paper's Eq. 3, the model manager shares the base model's VAE and text encoder, and bad input gets a message."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from studio.ip2p import IP2PParams, fit_input, guidance_grid, run_ip2p
from studio.jobs import Cancelled
from studio.models import ModelUnavailable

IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
PARAMS = IP2PParams("make the circle blue", steps=4, resolution=64, scheduler="DDIM", seed=3)


@pytest.fixture
def pipe(manager):
    with manager.lend("tiny", StableDiffusionInstructPix2PixPipeline, unet=manager.instruct_unet("tiny-ip2p")) as pipe:
        pipe.set_progress_bar_config(disable=True)
        yield pipe


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a", "DPM++ 2M"])
def test_the_loop_is_diffusers_instruct_pix2pix_pipeline_step_for_step(pipe, scheduler):
    from studio.sampling import make_scheduler

    params = IP2PParams(PARAMS.instruction, text_guidance=6.0, image_guidance=1.8, steps=4, resolution=64,
                        scheduler=scheduler, seed=3)
    ours = run_ip2p(pipe, IMAGE, params).image
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    theirs = pipe(params.instruction, image=IMAGE, num_inference_steps=4, guidance_scale=6.0,
                  image_guidance_scale=1.8, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1


def test_the_pipeline_shares_the_base_models_vae_and_text_encoder(manager, pipe):
    base = manager.base("tiny")
    assert pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
    assert pipe.unet is not base.unet and pipe.unet.config.in_channels == 8
    assert manager.instruct_unet("tiny-ip2p") is pipe.unet, "loaded once, then cached"


def test_each_guidance_scale_changes_the_edit_and_the_seed_fixes_it(pipe):
    first, again = run_ip2p(pipe, IMAGE, PARAMS).image, run_ip2p(pipe, IMAGE, PARAMS).image
    assert np.array_equal(pixels(first), pixels(again))
    for change in ({"text_guidance": 1.0}, {"image_guidance": 3.0}):
        other = run_ip2p(pipe, IMAGE, IP2PParams(**{**PARAMS.__dict__, **change})).image
        assert np.abs(pixels(other) - pixels(first)).mean() > 0.5, change


def test_the_input_image_matters(pipe):
    other = Image.fromarray(255 - np.asarray(IMAGE))
    assert np.abs(pixels(run_ip2p(pipe, other, PARAMS).image) - pixels(run_ip2p(pipe, IMAGE, PARAMS).image)).mean() > 1


def test_the_grid_is_one_edit_per_pair_with_one_seed(pipe):
    params = IP2PParams(**{**PARAMS.__dict__, "seed": -1})
    steps = []
    grid = guidance_grid(pipe, IMAGE, params, [1.0, 7.5], [1.0, 1.5, 2.0], on_step=lambda i, n: steps.append((i, n)))
    assert len(grid.images) == 3 and all(len(row) == 2 for row in grid.images) and steps[-1] == (6, 6)
    cell = run_ip2p(pipe, IMAGE, IP2PParams(**{**PARAMS.__dict__, "text_guidance": 7.5, "image_guidance": 2.0,
                                                "seed": grid.seed})).image
    assert np.array_equal(pixels(cell), pixels(grid.images[2][1])), "the grid's cells are plain edits at its seed"


def test_inputs_are_fitted_to_the_resolution_and_odd_ones_explained(pipe):
    warnings = []
    assert fit_input(Image.new("RGB", (300, 150)), 64, warnings).size == (128, 64), "not squashed"
    fitted = fit_input(Image.new("RGBA", (300, 200)), 512, warnings)
    assert fitted.size == (512, 344) and fitted.mode == "RGB" and any("transparency" in w for w in warnings)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        fit_input(Image.new("RGB", (4, 64)), 64, [])
    result = run_ip2p(pipe, IMAGE.convert("L"), IP2PParams("", steps=2, resolution=64))
    assert result.image.size == (64, 64) and any("instruction is empty" in w for w in result.warnings)


def test_a_shared_studios_side_limit_bounds_the_output():
    from studio.limits import Limits

    with pytest.raises(ValueError, match="resolution 1024 is above this studio's limit of 768"):
        Limits.public().check(IP2PParams(resolution=1024))
    assert Limits.public().check(IP2PParams(resolution=512)).resolution == 512


def test_a_text_to_image_unet_is_refused_with_a_message(manager):
    with manager.lend("tiny") as plain, pytest.raises(ValueError, match="not an InstructPix2Pix"):
        run_ip2p(plain, IMAGE, PARAMS)
    with pytest.raises(ModelUnavailable, match="not an InstructPix2Pix model"):
        manager.instruct_unet(str(manager.resolve("tiny").location))


def test_cancel_stops_between_steps(pipe):
    calls = []
    with pytest.raises(Cancelled):
        run_ip2p(pipe, IMAGE, PARAMS, should_stop=lambda: len(calls) >= 2, on_step=lambda i, n: calls.append(i))
    assert calls == [1, 2]


def test_the_catalog_offers_the_models_that_fit_and_the_hub_one_fails_fast_offline(model_cache):
    from studio.models import ModelManager

    manager = ModelManager("cpu", cache_dir=model_cache, offline=True)
    assert manager.instruct_models_for("tiny") == ["tiny-ip2p"]
    assert manager.instruct_models_for("shapes") == ["shapes-ip2p"]
    assert manager.instruct_models_for("sd15") == ["instruct-pix2pix"]
    with pytest.raises(ModelUnavailable, match="timbrooks/instruct-pix2pix' is not on this machine"):
        manager.instruct_unet("instruct-pix2pix")
