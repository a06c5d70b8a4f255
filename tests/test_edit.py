"""The real-image methods on the tiny model: the shared inversion and its cache, DDIB's two-model forms, DiffEdit's
masks, Imagic's stages, the shared weights restored, the 512-pixel paths, cancel and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

import studio.diffedit as diffedit_module
import studio.imagic as imagic_module
from studio.ddib import DDIBParams, run_ddib
from studio.diffedit import DiffEditParams, estimate_mask, latent_mask, run_diffedit
from studio.imagic import ImagicParams, imagic_generate, run_imagic
from studio.inversion import N_VIEWS, InversionCache, ddim_invert, prepare_image
from studio.inversion import decode as inversion_decode
from studio.jobs import Cancelled
from studio.lora import applied, remove_adapter, save_lora, tuner_layers
from studio.tiny import build_tiny_sd, save_tiny_family

# peft says so whenever a second adapter joins the first (a target domain's LoRA inside a job's own): meant here.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`", "ignore:Adapter lend-")
CAPTION, TARGET = "a red ball on the grass", "a blue ball on the grass"
FAST_IMAGIC = dict(embedding_steps=3, finetune_steps=3, steps=5, embedding_lr=1e-2, finetune_lr=1e-3)
PRESETS = Path(__file__).resolve().parents[1] / "presets" / "edit.yaml"


def picture(seed: int = 0, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


@pytest.fixture(scope="module")
def tiny(manager):
    with manager.lend("tiny") as pipe:
        yield pipe


@pytest.fixture(scope="module")
def random_lora(manager, tmp_path_factory) -> Path:
    """A library LoRA for the tiny model with random (non-zero) weights: a 'target domain'."""
    unet = manager.base("tiny").unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="made")
    try:
        state = get_peft_model_state_dict(unet, adapter_name="made")
    finally:
        remove_adapter(unet, "made")
    return save_lora(tmp_path_factory.mktemp("loras") / "domain", state, {}, 1.0, {"base_model": "tiny"})


def assert_no_adapters(pipe):
    for model in (pipe.unet, pipe.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()), "adapter layers left behind"


# --- The shared inversion and its cache ----------------------------------------------------------------------------


def test_the_cache_inverts_once_per_key_and_null_text_reuses_the_ddim_inversion(tiny):
    cache = InversionCache()
    image = picture()
    first = cache.ddim(tiny, image, CAPTION, 4, model="tiny")
    assert cache.ddim(tiny, image.copy(), CAPTION, 4, model="tiny") is first
    null = cache.null_text(tiny, image, CAPTION, 4, 7.5, model="tiny", inner_steps=1)
    assert null.ddim is first and torch.equal(null.x_T, first.x_T.to(null.x_T.dtype))
    assert cache.computed == {"ddim": 1, "null-text": 1}
    assert cache.null_text(tiny, image, CAPTION, 4, 7.5, model="tiny") is null
    # Any key changed: a new inversion.
    for changed in (dict(image=picture(1)), dict(prompt="a red ball"), dict(steps=5), dict(model="tiny + LoRA")):
        args = {"image": image, "prompt": CAPTION, "steps": 4, "model": "tiny", **changed}
        before = cache.computed["ddim"]
        cache.ddim(tiny, args["image"], args["prompt"], args["steps"], model=args["model"])
        assert cache.computed["ddim"] == before + 1, changed
    cache.null_text(tiny, image, CAPTION, 4, 3.0, model="tiny", inner_steps=1)  # another guidance: null-text only
    assert cache.computed["null-text"] == 2 and cache.computed["ddim"] == 5


def test_the_cache_keeps_its_entries_on_disk_for_forked_gpu_workers(tiny):
    """On ZeroGPU a job runs in a forked worker: what it leaves in memory is lost, what it writes stays."""
    cache, image = InversionCache(), picture()
    ddim = cache.ddim(tiny, image, CAPTION, 4)
    null = cache.null_text(tiny, image, CAPTION, 4, 7.5, inner_steps=1)
    cache._memory.clear()
    again, null_again = cache.ddim(tiny, image, CAPTION, 4), cache.null_text(tiny, image, CAPTION, 4, 7.5)
    assert cache.computed == {"ddim": 1, "null-text": 1}
    assert all(torch.equal(a, b) for a, b in zip(again.trajectory, ddim.trajectory))
    assert all(torch.equal(a, b) for a, b in zip(null_again.null_embeddings, null.null_embeddings))
    assert pixels(again.reconstruction).tolist() == pixels(ddim.reconstruction).tolist()
    assert again.psnr == ddim.psnr and null_again.psnr_ddim == null.psnr_ddim


def test_an_inversion_has_its_trajectory_views_and_reconstruction(tiny):
    inversion = ddim_invert(tiny, picture(size=(96, 64)), CAPTION, steps=5)
    assert len(inversion.trajectory) == 6 and inversion.x_T.shape == (1, 4, 5, 8)  # 64x40: the longer side native
    assert "resized to 64×40" in inversion.warnings[0]
    assert len(inversion.views) == N_VIEWS and inversion.views[0][0] == inversion.schedule.timesteps[0]
    assert inversion.views[-1][0] == 0 and inversion.reconstruction.size == (64, 40)
    assert np.isfinite(inversion.psnr)


def test_images_are_prepared_at_the_models_size():
    pipe = type("P", (), {"unet": type("U", (), {"config": type("C", (), {"sample_size": 64})()})(),
                          "vae_scale_factor": 8})()
    warnings = []
    assert prepare_image(pipe, picture(size=(1024, 768)), warnings).size == (512, 384) and warnings
    assert prepare_image(pipe, Image.new("RGBA", (512, 512)), warnings).mode == "RGB"
    assert "transparency" in warnings[-1]
    with pytest.raises(ValueError, match="at least 8"):
        prepare_image(pipe, picture(size=(4, 64)))


# --- DDIB ----------------------------------------------------------------------------------------------------------


def test_ddib_targets_this_model_another_model_or_a_lora(tiny, manager, random_lora, tmp_path):
    image, params = picture(), DDIBParams(CAPTION, TARGET, steps=5)
    plain = run_ddib(tiny, image, params)
    assert np.array_equal(pixels(run_ddib(tiny, image, params, target_pipe=tiny).image), pixels(plain.image))
    zero = run_ddib(tiny, image, DDIBParams(CAPTION, TARGET, steps=5, target_lora=str(random_lora),
                                            target_lora_scale=0))
    assert np.array_equal(pixels(zero.image), pixels(plain.image)), "LoRA scale 0 is the model itself"
    lora = run_ddib(tiny, image, DDIBParams(CAPTION, TARGET, steps=5, target_lora=str(random_lora)))
    assert not np.array_equal(pixels(lora.image), pixels(plain.image))
    assert np.array_equal(pixels(lora.inversion.reconstruction), pixels(plain.inversion.reconstruction)), \
        "the source side is inverted without the target's LoRA"
    assert_no_adapters(tiny)
    with manager.lend(str(save_tiny_family(tmp_path / "other", seed=1) / "sd")) as other:
        two = run_ddib(tiny, image, params, target_pipe=other)
    assert not np.array_equal(pixels(two.image), pixels(plain.image))
    with pytest.raises(ValueError, match="either a target model or a target LoRA"):
        run_ddib(tiny, image, DDIBParams(CAPTION, TARGET, steps=5, target_lora=str(random_lora)), target_pipe=tiny)


def test_a_target_lora_inside_a_job_with_its_own_lora_gives_the_job_its_lora_back(manager, random_lora):
    """The session's header LoRA is the source domain; the target's replaces it for the target ODE only."""
    image = picture()
    with manager.lend("tiny", loras=[(random_lora, 0.5)]) as pipe:
        before = run_ddib(pipe, image, DDIBParams(CAPTION, TARGET, steps=5)).image
        run_ddib(pipe, image, DDIBParams(CAPTION, TARGET, steps=5, target_lora=str(random_lora)))
        assert [layer.active_adapters for layer in tuner_layers(pipe.unet)][0] == ["lend-0"]
        after = run_ddib(pipe, image, DDIBParams(CAPTION, TARGET, steps=5)).image
    assert np.array_equal(pixels(before), pixels(after))
    assert_no_adapters(manager.base("tiny"))


def test_ddib_round_trip_and_models_of_another_latent_space(tiny, manager):
    result = run_ddib(tiny, picture(), DDIBParams(CAPTION, TARGET, steps=5, round_trip=True))
    assert result.back is not None and result.back.size == (64, 64) and np.isfinite(result.cycle_psnr)
    with manager.lend("shapes") as shapes, pytest.raises(ValueError, match="latent space"):
        run_ddib(tiny, picture(), DDIBParams(CAPTION, TARGET, steps=5), target_pipe=shapes)


def test_ddib_warns_when_it_can_only_reconstruct(tiny):
    result = run_ddib(tiny, picture(), DDIBParams(CAPTION, CAPTION, steps=5))
    assert "only reconstructs" in result.warnings[0]


# --- DiffEdit ------------------------------------------------------------------------------------------------------


def test_diffedit_masks_at_the_latent_resolution_and_keeps_the_outside(tiny, monkeypatch):
    image = picture()
    params = DiffEditParams(CAPTION, TARGET, steps=6, n_noise=3, threshold=0.2)
    estimate = estimate_mask(tiny, image, params)
    assert estimate.difference.shape == estimate.mask.shape == (8, 8)
    assert 0 <= estimate.difference.min() and estimate.difference.max() <= 1
    painted = np.zeros((64, 64), np.uint8)
    painted[:, 40:] = 255  # the right three-eighths: latent columns 5, 6, 7
    assert latent_mask(painted, (8, 8))[:, 5:].all() and not latent_mask(painted, (8, 8))[:, :5].any()
    decoded = []
    monkeypatch.setattr(diffedit_module, "decode", lambda pipe, z: decoded.append(z) or inversion_decode(pipe, z))
    result = run_diffedit(tiny, image, params, mask=painted)
    assert result.estimate is None and result.mask[:, 5:].all() and result.mask_image().size == (64, 64)
    # Outside the mask the latent walks the inversion back to the image's own latent, exactly; inside it is redrawn.
    z, z0 = decoded[-1], result.inversion.trajectory[-1]
    assert torch.equal(z[..., :5], z0[..., :5]) and not torch.allclose(z[..., 5:], z0[..., 5:])


def test_diffedit_refuses_an_empty_mask_with_what_to_do(tiny):
    with pytest.raises(ValueError, match="mask is empty"):
        run_diffedit(tiny, picture(), DiffEditParams(CAPTION, TARGET, steps=5, n_noise=1), mask=np.zeros((64, 64)))


# --- Imagic --------------------------------------------------------------------------------------------------------


def test_imagic_stage_c_alone_redraws_the_same_image_at_the_same_eta(tiny):
    result = run_imagic(tiny, picture(), ImagicParams(TARGET, eta=0.5, **FAST_IMAGIC))
    assert [s for s, _, _ in result.tuned.losses] == ["embedding"] * 3 + ["fine-tuning"] * 3
    assert not torch.equal(result.tuned.e_opt, result.tuned.e_tgt)
    again = imagic_generate(tiny, result.tuned, 0.5, steps=5)
    assert np.array_equal(pixels(again), pixels(result.image))
    assert not np.array_equal(pixels(imagic_generate(tiny, result.tuned, 1.0, steps=5)), pixels(result.image))
    assert_no_adapters(tiny)


def test_imagic_restores_the_shared_unet_when_it_fails_mid_call(tiny, monkeypatch):
    weights = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    flags = [p.requires_grad for p in tiny.unet.parameters()]
    calls = []
    real = imagic_module.denoising_loss

    def failing(unet, *args):
        calls.append(1)
        if len(calls) == 5:  # the second step of stage B, with the LoRA on the shared UNet
            assert any(isinstance(m, BaseTunerLayer) for m in unet.modules())
            raise RuntimeError("out of memory")
        return real(unet, *args)

    monkeypatch.setattr(imagic_module, "denoising_loss", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_imagic(tiny, picture(), ImagicParams(TARGET, **FAST_IMAGIC))
    assert_no_adapters(tiny)
    after = tiny.unet.state_dict()
    assert set(after) == set(weights) and all(torch.equal(weights[k], after[k]) for k in weights)
    assert [p.requires_grad for p in tiny.unet.parameters()] == flags


def test_imagic_keeps_the_jobs_own_lora_on(manager, random_lora):
    """Lent with a header LoRA, Imagic tunes on top of it, and the job has its LoRA (alone) back afterwards."""
    image = picture()
    with manager.lend("tiny", loras=[(random_lora, 1.0)]) as pipe:
        layers = tuner_layers(pipe.unet)
        run_imagic(pipe, image, ImagicParams(TARGET, **FAST_IMAGIC))
        assert all(layer.active_adapters == ["lend-0"] and not layer.disable_adapters for layer in layers)
        assert all("imagic" not in layer.lora_A for layer in layers)
    assert_no_adapters(manager.base("tiny"))


# --- Every method: the 512-pixel paths, cancel, bad input, presets -------------------------------------------------


@pytest.mark.slow
def test_every_method_runs_at_stable_diffusions_size():
    """The tiny model's UNet told it was trained at 64x64 latents: images of 512x512, masks of 64x64, LoRAs over
    4,096-token attention, as with SD1.5 (only narrow)."""
    pipe = build_tiny_sd()
    pipe.unet.register_to_config(sample_size=64)
    pipe.set_progress_bar_config(disable=True)
    image = picture(size=(512, 512))
    inversion = ddim_invert(pipe, image, CAPTION, steps=5)
    assert inversion.x_T.shape == (1, 4, 64, 64)
    assert run_ddib(pipe, image, DDIBParams(CAPTION, TARGET, steps=5), inversion=inversion).image.size == (512, 512)
    edit = run_diffedit(pipe, image, DiffEditParams(CAPTION, TARGET, steps=5, n_noise=2, threshold=0.1),
                        inversion=inversion)
    assert edit.mask.shape == (64, 64) and edit.image.size == (512, 512)
    tuned = run_imagic(pipe, image, ImagicParams(TARGET, embedding_steps=1, finetune_steps=1, steps=5))
    assert tuned.image.size == (512, 512)


@pytest.mark.parametrize("run", [
    lambda pipe, stop: ddim_invert(pipe, picture(), CAPTION, steps=5, should_stop=stop),
    lambda pipe, stop: run_ddib(pipe, picture(), DDIBParams(CAPTION, TARGET, steps=5), should_stop=stop),
    lambda pipe, stop: run_diffedit(pipe, picture(), DiffEditParams(CAPTION, TARGET, steps=5), should_stop=stop),
    lambda pipe, stop: run_imagic(pipe, picture(), ImagicParams(TARGET, **FAST_IMAGIC), should_stop=stop),
], ids=["inversion", "ddib", "diffedit", "imagic"])
def test_every_method_stops_at_the_next_step_on_cancel(tiny, run):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match="cancelled"):
        run(tiny, stop)
    assert_no_adapters(tiny)


@pytest.mark.parametrize("make, match", [
    (lambda: DDIBParams("", TARGET), "caption"),
    (lambda: DDIBParams(CAPTION, " "), "target prompt"),
    (lambda: DiffEditParams(CAPTION, CAPTION), "mask is where the two differ"),
    (lambda: DiffEditParams("", TARGET), "caption"),
    (lambda: DiffEditParams(CAPTION, TARGET, strength=0), "strength must be between"),
    (lambda: ImagicParams(""), "target prompt"),
    (lambda: ImagicParams(TARGET, eta=2), "eta must be between"),
    (lambda: ddim_invert(None, picture(), " "), "caption"),
])
def test_bad_input_is_refused_with_a_message(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_an_inversion_for_other_settings_is_refused(tiny):
    inversion = ddim_invert(tiny, picture(), CAPTION, steps=5)
    with pytest.raises(ValueError, match="invert the image again"):
        run_ddib(tiny, picture(), DDIBParams(CAPTION, TARGET, steps=6), inversion=inversion)
    with pytest.raises(ValueError, match="invert the image again"):
        run_diffedit(tiny, picture(), DiffEditParams("a ball", TARGET, steps=5), inversion=inversion)


def test_the_presets_are_valid_settings_and_their_images_exist():
    for family, preset in yaml.safe_load(PRESETS.read_text()).items():
        settings = preset["settings"]
        DDIBParams(CAPTION, TARGET, steps=settings["steps"], **settings["DDIB"])
        DiffEditParams(CAPTION, TARGET, steps=settings["steps"], **settings["DiffEdit"])
        ImagicParams(TARGET, steps=settings["steps"], **settings["Imagic"])
        for label, image, caption, target, method in preset["examples"]:
            assert (PRESETS.parent / "examples" / image).is_file(), (family, label)
            assert method in ("DDIM inversion", "DDIB", "DiffEdit", "Imagic") and caption and target, label


def test_lora_applied_twice_in_one_job_takes_free_names(tiny, random_lora):
    with applied(tiny, [(random_lora, 1.0)]):
        with applied(tiny, [(random_lora, 0.5)]):
            assert {n for layer in tuner_layers(tiny.unet) for n in layer.lora_A} == {"lend-0", "lend-1"}
        assert tuner_layers(tiny.unet)[0].active_adapters == ["lend-0"]
    assert_no_adapters(tiny)
