"""ModelManager: naming, caching, sharing through from_pipe, eviction, thread safety and offline failures."""

import gc
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DDPMScheduler,
    StableDiffusionAdapterPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    T2IAdapter,
)
from PIL import Image

from studio.models import Catalog, ModelManager, ModelUnavailable, module_bytes
from studio.sampling import decode_latents, split_prediction


def test_cache_hit_returns_the_same_objects(manager):
    first = manager.base("tiny")
    loads = manager.load_count
    again = manager.base("tiny")
    assert again is first and again.unet is first.unet
    assert manager.load_count == loads


def test_same_folder_by_path_or_by_name_is_one_model(manager, tiny_root):
    assert manager.base(str(tiny_root / "sd")) is manager.base("tiny")


def test_from_pipe_shares_components(manager):
    base = manager.base("tiny")
    img2img = manager.pipeline("tiny", StableDiffusionImg2ImgPipeline)
    control = manager.pipeline("tiny", StableDiffusionControlNetPipeline,
                               controlnet=manager.component("tiny-controlnet"))
    adapter = manager.pipeline("tiny", StableDiffusionAdapterPipeline, adapter=manager.component("tiny-t2i-adapter"))
    for pipe in (img2img, control, adapter):
        assert pipe is not base
        assert (id(pipe.unet), id(pipe.vae), id(pipe.text_encoder)) == (id(base.unet), id(base.vae),
                                                                         id(base.text_encoder))
    assert isinstance(control.controlnet, ControlNetModel) and isinstance(adapter.adapter, T2IAdapter)
    assert manager.component("tiny-controlnet") is control.controlnet


def test_derived_pipeline_keeps_the_shared_dtype(model_cache):
    # diffusers' from_pipe casts to float32 unless told otherwise, which would silently upcast the shared fp16 UNet.
    half = ModelManager("cpu", dtype=torch.float16, cache_dir=model_cache)
    half.pipeline("tiny", StableDiffusionImg2ImgPipeline)
    assert half.base("tiny").unet.dtype == torch.float16


def test_lru_eviction_under_a_memory_budget(manager, model_cache, tiny_root, tmp_path):
    copy = tmp_path / "copy"
    StableDiffusionPipeline.from_pretrained(tiny_root / "sd").save_pretrained(copy)
    one_model = module_bytes(manager.base("tiny"))
    budget = ModelManager("cpu", cache_dir=model_cache, memory_budget_gb=1.5 * one_model / 2**30)
    first = weakref.ref(budget.base("tiny"))
    budget.base(str(copy))
    gc.collect()
    assert first() is None, "the least recently used model should have been freed"
    assert len(budget.loaded()) == 1 and str(copy) in budget.loaded()[0]
    assert budget.loaded_bytes() <= budget.budget


def test_a_lent_model_is_not_evicted(model_cache, tiny_root, tmp_path):
    copies = [tmp_path / "copy1", tmp_path / "copy2"]
    for copy in copies:
        StableDiffusionPipeline.from_pretrained(tiny_root / "sd").save_pretrained(copy)
    budget = ModelManager("cpu", cache_dir=model_cache, memory_budget_gb=1e-6)
    with budget.lend("tiny"):
        budget.base(str(copies[0]))
        assert any("tiny" in name for name in budget.loaded())
    budget.base(str(copies[1]))  # the next load may evict "tiny" now that nobody uses it
    assert not any("tiny" in name for name in budget.loaded())


def test_concurrent_requests_load_once(model_cache):
    fresh = ModelManager("cpu", cache_dir=model_cache)
    results, start = [], threading.Barrier(8)

    def ask():
        start.wait()
        results.append(fresh.base("tiny"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fresh.load_count == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_load_is_reported_to_every_waiter_and_can_be_retried(model_cache, tmp_path):
    fresh = ModelManager("cpu", cache_dir=model_cache)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="broken"):
            fresh.base(str(tmp_path / "broken"))


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
def test_missing_hub_model_fails_fast_with_instructions(model_cache, monkeypatch, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr("studio.models.hub_reachable", lambda *a, **k: False)
    offline = ModelManager("cpu", cache_dir=model_cache)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable) as error:
        offline.base("sd15")
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "--model" in message and "download" in message


def test_hub_probe_answers_within_its_timeout():
    from studio.models import hub_reachable

    started = time.perf_counter()
    hub_reachable("https://10.255.255.1", timeout=1.0)  # a black-hole address: must not hang
    assert time.perf_counter() - started < 3


def test_pickles_are_refused_unless_allowed(model_cache, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a checkpoint")
    with pytest.raises(ModelUnavailable, match="--allow-pickle"):
        ModelManager("cpu", cache_dir=model_cache).resolve(str(ckpt))
    assert ModelManager("cpu", cache_dir=model_cache, allow_pickle=True).resolve(str(ckpt)).kind == "single_file"


def test_folder_without_safetensors_is_refused(manager, tiny_root, tmp_path):
    pickled = tmp_path / "pickled"
    StableDiffusionPipeline.from_pretrained(tiny_root / "sd").save_pretrained(pickled, safe_serialization=False)
    with pytest.raises(ModelUnavailable, match="allow-pickle"):
        manager.base(str(pickled))


@pytest.mark.parametrize("spec, kind", [("sd15", "hub"), ("someone/some-model@v2", "hub"),
                                        ("tiny", "folder"), ("model.safetensors", "single_file")])
def test_resolve(manager, tmp_path, monkeypatch, spec, kind):
    monkeypatch.chdir(tmp_path)
    Path("model.safetensors").write_bytes(b"")
    source = manager.resolve(spec)
    assert source.kind == kind
    if spec.endswith("@v2"):
        assert (source.location, source.revision) == ("someone/some-model", "v2")


@pytest.mark.parametrize("spec", ["./missing-folder", "not a model name", "notes.txt"])
def test_unknown_specs_get_a_clear_error(manager, tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("hello")
    with pytest.raises(ModelUnavailable, match="(not found|not a model)"):
        manager.resolve(spec)


def test_catalog_entries_are_complete():
    catalog = Catalog.load()
    for section in ("base", "controlnet", "t2i_adapter", "annotators"):
        assert catalog.names(section), section
        for name, entry in catalog.sections[section].items():
            assert sum(key in entry for key in ("repo", "builtin", "path")) == 1, name
    for section in ("controlnet", "t2i_adapter"):
        assert all("condition" in e for e in catalog.sections[section].values())
    assert catalog.sections["base"]["sd15"]["repo"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_tiny_model_says_its_pictures_are_noise(manager):
    assert "noise" in manager.source_note("tiny")
    assert manager.resolve("tiny").size == 64


def test_vae_overflow_in_fp16_is_decoded_in_fp32(manager):
    pipe = manager.pipeline("tiny")
    vae = pipe.vae
    latents = torch.full((1, 4, 8, 8), 3e4)  # overflows fp16 inside the decoder
    try:
        vae.to(torch.float16)
        with torch.no_grad():
            raw = vae.decode(latents.half() / vae.config.scaling_factor).sample
        assert not torch.isfinite(raw).all(), "the test needs a latent that overflows in fp16"
        image = decode_latents(pipe, latents)
        assert torch.isfinite(image).all() and image.shape == (1, 3, 64, 64)
        assert vae.dtype == torch.float16, "the shared VAE must get its dtype back"
    finally:
        vae.to(torch.float32)


def test_single_file_that_is_not_a_checkpoint_gets_a_clear_error(model_cache, tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    offline = ModelManager("cpu", cache_dir=model_cache, offline=True)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="odd.safetensors"):
        offline.base(str(tmp_path / "odd.safetensors"))
    assert time.perf_counter() - started < 10


def test_missing_shipped_model_says_how_to_get_it(model_cache):
    catalog = Catalog({"base": {"gone": {"path": "models/not-here", "howto": "Train it with `make gone`."}}})
    with pytest.raises(ModelUnavailable, match="missing .*Train it with `make gone`"):
        ModelManager("cpu", cache_dir=model_cache, catalog=catalog).resolve("gone")


def test_attention_uses_scaled_dot_product_by_default(manager):
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = manager.base("tiny").unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


@pytest.mark.parametrize("zero_snr", [False, True])
def test_epsilon_and_v_outputs_stand_for_the_same_latent_and_noise(zero_snr):
    """The loops that use ᾱ themselves (inversion, classifier) read x0 and ε the same way from either kind of UNet,
    including at a zero-SNR schedule's last step (ᾱ = 0), where an ε-model could not say what x0 is."""
    scheduler = DDPMScheduler(rescale_betas_zero_snr=zero_snr, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    x0, eps = torch.randn(2, 3, 4, 8, 8)
    for t in (0, 500, 999):
        a = scheduler.alphas_cumprod[t]
        x_t = scheduler.add_noise(x0, eps, torch.tensor([t]))
        v = scheduler.get_velocity(x0, eps, torch.tensor([t]))
        got_x0, got_eps = split_prediction(v, x_t, a, "v_prediction")
        assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5)
        if a > 0:
            got_x0, got_eps = split_prediction(eps, x_t, a, "epsilon")
            assert torch.allclose(got_x0, x0, atol=1e-3 / a.sqrt()) and torch.equal(got_eps, eps)
    with pytest.raises(ValueError, match="sample"):
        split_prediction(eps, x0, scheduler.alphas_cumprod[0], "sample")


def test_an_original_layout_single_file_loads_offline_with_local_configs(model_cache, tiny_root, tmp_path):
    """An A1111/civitai-style checkpoint (CompVis key layout, weights only) loads with no Hub: the configs come from
    a local folder (SD 1.x's shipped ones by default; the tiny model's here) and the weights land where they were."""
    from safetensors.torch import save_file

    from tests.ldm_layout import ldm_checkpoint

    original = StableDiffusionPipeline.from_pretrained(tiny_root / "sd")
    save_file(ldm_checkpoint(original), tmp_path / "tiny-a1111.safetensors")
    offline = ModelManager("cpu", cache_dir=model_cache, offline=True, single_file_config=tiny_root / "sd")
    started = time.perf_counter()
    pipe = offline.base(str(tmp_path / "tiny-a1111.safetensors"))
    assert time.perf_counter() - started < 30
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(original, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_shipped_single_file_configs_are_stable_diffusion_15():
    """The configs an offline single file is read with build SD1.5's exact networks (its published parameter
    counts: UNet 859,520,964; VAE 83,653,863; CLIP ViT-L/14 text encoder 123,060,480)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.models import SD15_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert vae.config.scaling_factor == 0.18215 and unet.config.cross_attention_dim == 768


def test_offline_mode_reaches_every_library(model_cache):
    import huggingface_hub.constants
    from transformers.utils.hub import is_offline_mode  # what transformers asks before any download

    ModelManager("cpu", cache_dir=model_cache, offline=True)
    assert huggingface_hub.constants.HF_HUB_OFFLINE and is_offline_mode()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_batches_decode_one_image_at_a_time_to_the_same_pixels(manager):
    """Slicing changes memory, not pixels: a batch decoded image by image equals each image decoded alone."""
    with manager.lend("tiny") as pipe:
        latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        batch = decode_latents(pipe, latents)
        alone = torch.cat([decode_latents(pipe, z[None]) for z in latents])
    assert torch.equal(batch, alone)


def test_large_images_decode_by_tiles_close_to_whole(manager):
    """Tiling ("on", or "auto" above TILE_ABOVE tiles a side) blends overlapping tiles: close to the whole decode."""
    with manager.lend("tiny") as pipe:
        latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))  # 512x512 from the tiny VAE
        pipe.vae_tiling = "off"
        whole = decode_latents(pipe, latents)
        pipe.vae_tiling = "on"
        tiled = decode_latents(pipe, latents)
    assert tiled.shape == whole.shape and 0 < (tiled - whole).abs().mean() < 0.1  # a random VAE: seams show


def test_previews_are_cheap_and_look_like_the_image(manager):
    """Live previews and SDEdit's x0 views. A VAE as small as the Shapes model's gets the real decode (its latents
    are too far from linear in RGB for a linear map: fitted, it casts a grey background magenta); a large one a
    linear latent→RGB map fitted once on a colour chart, one matrix product per view, which on a real photo puts
    each block's colour where it is, far better than the photo's mean colour would."""
    from skimage.data import astronaut

    from studio.sampling import Preview, decode_latents, encode_image, to_images

    photo = Image.fromarray(astronaut()).resize((64, 64), Image.LANCZOS)

    def coarse(picture):  # what a preview can promise: the colour of each 8x8 block, where it is
        return np.asarray(Image.fromarray(np.asarray(picture, np.uint8)).resize((8, 8), Image.BOX), float)

    with manager.lend("shapes") as pipe:
        latents = encode_image(pipe, photo)
        assert Preview(pipe.vae).exact and pipe.preview.exact, "a VAE this small: the real decode"
        assert np.array_equal(np.asarray(pipe.preview(pipe, latents)[0]),
                              np.asarray(to_images(decode_latents(pipe, latents))[0]))
        view = Preview(pipe.vae, exact=False)(pipe, latents)[0]
    assert view.size == (64, 64)
    flat = np.ones((64, 64, 3)) * np.asarray(photo, float).mean((0, 1))
    error, baseline = np.abs(coarse(view) - coarse(photo)).mean(), np.abs(coarse(flat) - coarse(photo)).mean()
    assert error < baseline / 2, (error, baseline)


def test_sd_models_open_with_dpmpp_2m_karras_and_every_catalog_sampler_exists(manager, tmp_path):
    from studio.sampling import SCHEDULERS

    samplers = [e["sampler"] for e in manager.catalog.sections["base"].values() if "sampler" in e]
    assert samplers and all(name in SCHEDULERS for name in samplers)
    assert manager.default_sampler("sd15") == "DPM++ 2M Karras"
    (tmp_path / "my-model").mkdir()  # any other folder is taken for an SD 1.x model, and gets its sampler
    assert manager.default_sampler(str(tmp_path / "my-model")) == "DPM++ 2M Karras"
    assert manager.default_sampler("tiny") is None, "other families keep the tabs' own default"
