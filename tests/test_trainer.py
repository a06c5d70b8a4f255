"""The LoRA/DreamBooth trainer on the tiny model: a job runs, saves, reloads and reproduces; resume, cancel, the NaN
guard; the kohya export; scale 0; the shared UNet is left as it was; bad input is refused."""

import threading
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

import studio.trainer as trainer
from studio.generate import GenerateParams, run_generate
from studio.jobs import Cancelled
from studio.lora import WEIGHTS, library, to_kohya
from studio.trainer import (TrainingDiverged, TrainJob, TrainParams, TrainState, identifier_report, min_snr_weights,
                            presets, train)

FAST = dict(instance_prompt="a sks dog", class_prompt="a dog", resolution=64, steps=4, lr=1e-3, validate_every=0,
            checkpoint_every=0)


def subject(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (72, 64, 3), dtype=np.uint8)) for _ in range(n)]


def params(**kwargs):
    return TrainParams(**{**FAST, **kwargs})


def draw(manager, loras=None, prompt="a sks dog"):
    with manager.lend("tiny", loras=loras) as pipe:
        pipe.set_progress_bar_config(disable=True)
        images = run_generate(pipe, GenerateParams(prompt, seed=0, steps=20, width=64, height=64, n_images=2)).images
    return np.stack([np.asarray(i) for i in images])


def assert_base_restored(manager):
    pipe = manager.base("tiny")
    for model in (pipe.unet, pipe.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()), "adapter layers left behind"
        assert not getattr(model, "peft_config", None)


@pytest.fixture(scope="module")
def trained(manager, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras") / "sks-tiny"
    state = TrainState()
    train(manager, "tiny", folder, params(train_text_encoder=True), subject(), state=state)
    return folder, state


def test_a_job_saves_both_formats_metadata_and_validation(manager, trained):
    folder, state = trained
    assert [s for s, _ in state.losses] == [1, 2, 3, 4] and state.phase == "done"
    assert library(folder.parent) == ["sks-tiny"]
    meta = (folder / "metadata.json").read_text()
    assert '"steps": 4' in meta and '"base_model": "tiny"' in meta and "a sks dog" in meta
    keys = load_file(folder / WEIGHTS)
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    kohya = load_file(folder / "sks-tiny_kohya.safetensors")
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya
    steps = {s for s, _, _ in state.validation}
    assert steps == {0, 4} and len(state.validation) == 8  # 2 prompts x 2 seeds, before and after
    assert_base_restored(manager)


def test_the_saved_lora_reproduces_what_training_drew(manager, trained):
    folder, state = trained
    last = [np.asarray(Image.open(p)) for s, caption, p in state.validation if s == 4 and "sks" in caption]
    again = draw(manager, [(folder, 1.0)])
    assert np.abs(again.astype(int) - np.stack(last)).max() <= 1
    assert not np.array_equal(again, draw(manager)), "the LoRA changes the picture"
    assert_base_restored(manager)


def test_scale_zero_is_exactly_the_base_model(manager, trained):
    folder, _ = trained
    assert np.array_equal(draw(manager, [(folder, 0.0)]), draw(manager))


def test_kohya_export_loads_through_diffusers_and_matches(manager, trained):
    folder, _ = trained
    kohya = folder / "sks-tiny_kohya.safetensors"
    assert np.abs(draw(manager, [(kohya, 1.0)]).astype(int) - draw(manager, [(folder, 1.0)])).max() <= 1
    assert_base_restored(manager)


def test_kohya_keys():
    state = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight": torch.ones(4, 8),
             "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_B.weight": torch.ones(8, 4)}
    stem = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0"
    assert set(to_kohya(state)) == {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"}
    assert to_kohya(state)[f"{stem}.alpha"] == 4


def test_language_drift_pairs_show_the_class_prompt_wherever_it_is_listed(manager, trained, tmp_path):
    _, state = trained
    assert [p.name for _, p in state.drift] == ["step-000000-p1-s0.png", "step-000000-p1-s1.png",
                                             "step-000004-p1-s0.png", "step-000004-p1-s1.png"]
    state = TrainState()
    train(manager, "tiny", tmp_path / "j", params(steps=2, validation_prompts=["a dog", "a sks dog"]),
          subject(), state=state)
    assert [p.name[:14] for _, p in state.drift] == ["step-000000-p0"] * 2 + ["step-000002-p0"] * 2
    state = TrainState()
    train(manager, "tiny", tmp_path / "k", params(steps=2, validation_prompts=["a sks dog"]), subject(), state=state)
    assert state.drift == []  # the class prompt is not drawn: nothing to compare


def test_same_seed_same_lora(manager, tmp_path):
    for name in ("a", "b"):
        train(manager, "tiny", tmp_path / name, params(steps=2, crop="random"), subject())
    a, b = load_file(tmp_path / "a" / WEIGHTS), load_file(tmp_path / "b" / WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_saves_a_checkpoint_and_resume_continues_to_the_same_lora(manager, tmp_path):
    state = TrainState()
    with pytest.raises(Cancelled, match="at step 3"):
        train(manager, "tiny", tmp_path / "cut", params(steps=6, checkpoint_every=2), subject(), state=state,
              should_stop=lambda: state.step >= 3)
    assert_base_restored(manager)
    assert not (tmp_path / "cut" / WEIGHTS).exists()
    resumed = TrainState()
    train(manager, "tiny", tmp_path / "cut", resume=True, state=resumed)
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    train(manager, "tiny", tmp_path / "straight", params(steps=6, checkpoint_every=2), subject())
    a, b = load_file(tmp_path / "cut" / WEIGHTS), load_file(tmp_path / "straight" / WEIGHTS)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "resume continues the same run"


def test_weight_average_is_what_gets_saved_and_a_resume_keeps_it(manager, tmp_path):
    """With `ema_decay` the saved LoRA is the moving average of the steps' weights: the same trajectory as a run
    without it (same seed), but lagging behind it (LoRA's B starts at zero and grows, so the average is smaller);
    and a cancelled, resumed run saves the same average as a straight one."""
    train(manager, "tiny", tmp_path / "last", params(steps=6), subject())
    state = TrainState()
    with pytest.raises(Cancelled):
        train(manager, "tiny", tmp_path / "cut", params(steps=6, checkpoint_every=2, ema_decay=0.9), subject(),
              state=state, should_stop=lambda: state.step >= 3)
    train(manager, "tiny", tmp_path / "cut", resume=True)
    train(manager, "tiny", tmp_path / "straight", params(steps=6, ema_decay=0.9), subject())
    last, cut, straight = (load_file(tmp_path / name / WEIGHTS) for name in ("last", "cut", "straight"))
    assert all(torch.allclose(cut[k], straight[k], atol=1e-6) for k in straight), "resume keeps the average"
    ups = [k for k in last if "lora_B" in k or "lora_up" in k]
    assert ups and sum(straight[k].norm() for k in ups) < 0.98 * sum(last[k].norm() for k in ups)


def test_resume_can_add_steps(manager, tmp_path):
    train(manager, "tiny", tmp_path / "job", params(steps=2, checkpoint_every=2), subject())
    state = TrainState()
    train(manager, "tiny", tmp_path / "job", params(steps=4), resume=True, state=state)
    assert [s for s, _ in state.losses] == [1, 2, 3, 4]
    assert '"steps": 4' in (tmp_path / "job" / "metadata.json").read_text()


def test_nan_loss_stops_the_job_with_a_clear_message(manager, tmp_path, monkeypatch):
    real = trainer._loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (float("nan") if len(calls) == 2 else 1)

    monkeypatch.setattr(trainer, "_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2.*Lower the learning rate"):
        train(manager, "tiny", tmp_path / "nan", params(), subject())
    assert_base_restored(manager)


def test_other_jobs_see_the_base_model_while_a_job_trains(manager, tmp_path):
    base = draw(manager)
    job = TrainJob(manager, "tiny", tmp_path / "bg", params(steps=10_000, lr=1e-2), subject()).start()
    try:
        while job.state.step < 3:
            assert job.running, job.error
            threading.Event().wait(0.05)
        assert np.array_equal(draw(manager), base), "between steps the adapter is off"
        assert job.running and job.state.step < 10_000
    finally:
        job.cancel()
        job.wait(60)
    assert job.state.phase == "cancelled" and "Resume" in job.error
    assert_base_restored(manager)


def test_prior_preservation_draws_class_images_once(manager, tmp_path):
    train(manager, "tiny", tmp_path / "p1", params(steps=2, prior_preservation=True, num_class_images=3), subject())
    cached = sorted((tmp_path / ".class-images").rglob("*.png"))
    assert len(cached) == 3
    stamps = [p.stat().st_mtime_ns for p in cached]
    train(manager, "tiny", tmp_path / "p2", params(steps=2, prior_preservation=True, num_class_images=3), subject())
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / ".class-images").rglob("*.png"))] == stamps


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_min_snr_weights_clip_the_easy_low_noise_steps(manager, kind):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config({**manager.base("tiny").scheduler.config, "prediction_type": kind})
    t = torch.tensor([0, 500, 999])
    assert torch.equal(min_snr_weights(scheduler, t, 0), torch.ones(3))
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    expected = snr.clamp(max=5) / (snr if kind == "epsilon" else snr + 1)
    weights = min_snr_weights(scheduler, t, 5.0)
    assert torch.allclose(weights, expected) and weights[0] < 0.01
    if kind == "epsilon":
        assert weights[-1] == 1  # noisy steps (SNR < γ) keep their full weight


@pytest.mark.parametrize("bad, match", [
    (dict(instance_prompt=""), "instance prompt is empty"),
    (dict(instance_prompt="a dog"), "must contain the identifier 'sks'"),
    (dict(prior_preservation=True, class_prompt=""), "needs a class prompt"),
    (dict(class_prompt="a sks dog"), "must not contain the identifier"),
    (dict(target="all"), "target must be one of attention, kv"),
    (dict(resolution=100), "multiple of 8"),
    (dict(rank=0), "rank must be between"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        params(**bad)  # refused when built


def test_bad_images_are_refused(manager, tmp_path):
    with pytest.raises(ValueError, match="3 to 20 images"):
        train(manager, "tiny", tmp_path / "few", params(), subject(2))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        train(manager, "tiny", tmp_path / "broken", params(), [*subject(2), tmp_path / "broken.png"])
    train(manager, "tiny", tmp_path / "ok", params(steps=1), subject())
    with pytest.raises(ValueError, match="exists already"):
        train(manager, "tiny", tmp_path / "ok", params(steps=1), subject())


def test_presets_are_valid_params():
    table = presets()
    assert {"quick", "quality", "kv-lora", "custom-diffusion", "textual-inversion", "erase"} <= set(table)
    for values in table.values():
        TrainParams(**{**asdict(TrainParams()), "erase_prompt": "a star", **values})
    assert table["kv-lora"]["target"] == "kv" and table["custom-diffusion"]["method"] == "custom-diffusion"


def test_identifier_report(manager):
    tokenizer = manager.base("tiny").tokenizer
    assert identifier_report(tokenizer, "sks") == (["sks</w> (#48,136)"], [])
    assert "splits into 2 tokens" in identifier_report(tokenizer, "zwx")[1][0]
    assert "common token" in identifier_report(tokenizer, "dog")[1][0]


def test_the_adapter_is_switched_once_while_nobody_else_lends_the_model(manager, tmp_path, monkeypatch):
    """A step no longer switches ~200 layers off and on: the adapter stays on between steps, and only a lend by
    someone else (here, validation's) switches it off first."""
    switched = []
    real = trainer.activate
    monkeypatch.setattr(trainer, "activate", lambda layers, names: (switched.append(names), real(layers, names)))
    train(manager, "tiny", tmp_path / "once", params(steps=6, validate_every=3), subject())
    # The steps switch it on before step 1 and again after the validation at step 3 (which lent the model); the
    # validations at 3 and 6 switch it on for themselves (step 0's draws the base model). Per step it would be 6 + 2.
    assert len(switched) == 4, switched
    assert_base_restored(manager)
