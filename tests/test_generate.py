"""Generation on the tiny model: reproducible seeds, PNG parameters, input checks, cancel."""

import numpy as np
import pytest
import torch

from studio.generate import GenerateParams, run_generate
from studio.sampling import SCHEDULERS, make_scheduler
from studio.jobs import Cancelled

FAST = dict(prompt="a red circle on the left", steps=4, width=64, height=64)


def generate(manager, **kwargs):
    with manager.lend("tiny") as pipe:
        return run_generate(pipe, GenerateParams(**{**FAST, **kwargs}), model_name="tiny")


def pixels(result, i=0):
    return np.asarray(result.images[i])


def test_same_seed_same_pixels_and_other_seed_other_pixels(manager):
    a, b, c = generate(manager, seed=7), generate(manager, seed=7), generate(manager, seed=8)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_random_seed_is_reported_and_reproduces(manager):
    first = generate(manager, seed=-1)
    assert 0 <= first.seed < 2**32
    assert np.array_equal(pixels(first), pixels(generate(manager, seed=first.seed)))


def test_batch_uses_consecutive_seeds(manager):
    batch = generate(manager, seed=10, n_images=3)
    assert len(batch.images) == 3
    assert [m["image_seed"] for m in batch.metadata] == [10, 11, 12]
    assert len({pixels(batch, i).tobytes() for i in range(3)}) == 3


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs_and_is_recorded(manager, scheduler):
    result = generate(manager, seed=1, scheduler=scheduler, steps=3)
    assert result.images[0].size == (64, 64) and result.metadata[0]["scheduler"] == scheduler
    assert pixels(result).std() > 0


@pytest.mark.parametrize("scheduler", ["DPM++ 2M Karras", "Euler a", "DPM++ 2M SDE Karras", "Heun"])
def test_the_loop_is_diffusers_own_step_for_step(manager, scheduler):
    """Our loop (prompt weights, previews, Karras sigmas) gives diffusers' StableDiffusionPipeline's pixels, for
    deterministic and noise-drawing samplers alike, image by image of a batch."""
    ours = generate(manager, seed=5, n_images=2, scheduler=scheduler, cfg=6.0, negative_prompt="blurry")
    with manager.lend("tiny") as pipe:
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        theirs = pipe(FAST["prompt"], negative_prompt="blurry", num_inference_steps=FAST["steps"], guidance_scale=6.0,
                      width=64, height=64, num_images_per_prompt=2, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed(5 + i) for i in range(2)]).images
    for i in range(2):
        assert np.abs(pixels(ours, i).astype(float) - theirs[i] * 255).max() <= 1


def test_live_previews_show_each_step_and_change_nothing(manager):
    """A preview every step (the predicted x0, decoded as the tab shows it) leaves the final pixels as they are, and
    its last one is close to the result."""
    from studio.sampling import Preview

    shown = []
    params = GenerateParams(**{**FAST, "seed": 4, "scheduler": "Euler a"})
    with manager.lend("tiny") as pipe:
        plain = run_generate(pipe, params)
        watched = run_generate(pipe, params, on_preview=lambda i, n, x0: shown.append((i, n, Preview.of(pipe)(pipe,
                                                                                                           x0))))
    assert np.array_equal(pixels(plain), pixels(watched))
    assert [(i, n) for i, n, _ in shown] == [(i, FAST["steps"]) for i in range(1, FAST["steps"] + 1)]
    last = np.asarray(shown[-1][2][0], float)
    assert last.shape == pixels(plain).shape and np.abs(last - pixels(plain)).mean() < 40


def test_ddim_never_clips_latents_even_when_the_config_omits_clip_sample():
    """Configs written without `clip_sample` (as many SD conversions are) made DDIM clip latents to [-1, 1]: grey,
    washed-out SDEdit results on the Shapes model."""
    scheduler = make_scheduler("DDIM", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    scheduler.set_timesteps(10)
    x = torch.full((1, 4, 2, 2), 3.0)
    out = scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)
    assert out.pred_original_sample.min() > 1.5


def test_size_is_rounded_to_a_multiple_of_8_with_a_note(manager):
    result = generate(manager, seed=1, width=70, height=100)
    assert result.images[0].size == (72, 96)
    assert any("70 was rounded to 72" in w for w in result.warnings)
    assert any("100 was rounded to 96" in w for w in result.warnings)


def test_long_prompt_is_read_whole_in_chunks_without_a_warning(manager):
    """Past 75 tokens the prompt goes on in a second chunk (studio/prompts.py), so its end still changes the image."""
    head = "a red circle and a blue square " * 11  # 77 tokens
    left, right = (generate(manager, seed=1, prompt=head + f"on the {side}") for side in ("left", "right"))
    assert not left.warnings and not right.warnings
    assert not np.array_equal(pixels(left), pixels(right))


@pytest.mark.parametrize("bad, match", [(dict(width=4096), "width must be between"),
                                        (dict(steps=0), "steps must be between"),
                                        (dict(n_images=20), "n images must be between"),
                                        (dict(scheduler="PLMS"), "Unknown scheduler")])
def test_bad_parameters_are_refused_with_a_message(manager, bad, match):
    with pytest.raises(ValueError, match=match):
        generate(manager, **bad)


def test_cancel_stops_between_steps(manager):
    steps_done = []
    with manager.lend("tiny") as pipe:
        with pytest.raises(Cancelled):
            run_generate(pipe, GenerateParams(**{**FAST, "steps": 50, "seed": 1}),
                         on_step=lambda i, n: steps_done.append(i), should_stop=lambda: len(steps_done) >= 2)
    assert len(steps_done) == 2, "no UNet step should run after the stop"
    assert generate(manager, seed=1).images, "the model is usable again after a cancel"
