"""The trainer's other methods on the tiny model: Textual Inversion, Custom Diffusion with two concepts, and ESD
erasing. Each trains only what its paper trains, leaves the shared model as it was, saves the formats other tools
read (diffusers loads them and draws what the studio draws), and cancels and resumes to the same result as a run
straight through."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from studio.custom_diffusion import WEIGHTS as CD_WEIGHTS
from studio.custom_diffusion import load_custom_diffusion
from studio.erase import esd_target
from studio.jobs import Cancelled
from studio.lora import METADATA, WEIGHTS, embedding_library
from studio.textual_inversion import DIFFUSERS_FILE
from studio.trainer import TrainParams, TrainState, train, trained

FAST = dict(resolution=64, steps=4, lr=1e-2, validate_every=0, checkpoint_every=0)
TI = dict(method="textual-inversion", instance_prompt="a ti-thing", identifier="ti-thing", class_prompt="",
          initializer="dog", **FAST)
CD = dict(method="custom-diffusion", instance_prompt="a v1-thing dog", identifier="v1-thing", class_prompt="a dog",
          instance_prompt_2="a v2-thing cat", identifier_2="v2-thing", class_prompt_2="a cat", initializer="dog",
          prior_preservation=True, num_class_images=2, **FAST)
ERASE = dict(method="erase", erase_prompt="a dog", num_class_images=2, rank=2, alpha=2, **FAST)


def subject(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def home(tmp_path):
    """A user's folders as the studio lays them out: <home>/loras/<job>, <home>/embeddings."""
    (tmp_path / "loras").mkdir(exist_ok=True)
    return tmp_path / "loras", tmp_path / "embeddings"


def shared_state(manager):
    pipe = manager.base("tiny")
    table = pipe.text_encoder.get_input_embeddings()
    return (len(pipe.tokenizer), table.num_embeddings, table.weight.detach().clone(),
            {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()},
            {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()})


def assert_same_shared(manager, before):
    after = shared_state(manager)
    assert after[:2] == before[:2], "the shared tokenizer or embedding table changed size"
    assert torch.equal(after[2], before[2]), "the shared embedding table changed"
    assert after[3].keys() == before[3].keys() and all(torch.equal(after[3][k], before[3][k]) for k in before[3])
    assert after[4] == before[4]


def unet_output(pipe, prompt):
    with torch.no_grad():
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = pipe.text_encoder(ids)[0]
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        return pipe.unet(x, torch.tensor([500]), encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def textual_inversion(manager, tmp_path_factory):
    loras, embeddings = home(tmp_path_factory.mktemp("ti"))
    before = shared_state(manager)
    state = TrainState()
    folder = train(manager, "tiny", loras / "ti-job", TrainParams(**TI), subject(), state=state)
    return folder, embeddings, before, state


def test_textual_inversion_trains_one_row_and_leaves_the_model(manager, textual_inversion):
    folder, embeddings, before, state = textual_inversion
    assert_same_shared(manager, before)
    assert not (folder / WEIGHTS).exists(), "Textual Inversion makes no LoRA"
    assert trained(folder.parent) == {"ti-job": "textual-inversion"}
    assert embedding_library(embeddings) == ["ti-thing"]
    learned = load_file(folder / DIFFUSERS_FILE)["ti-thing"]
    a1111 = load_file(embeddings / "ti-thing.safetensors")["emb_params"]
    assert torch.equal(learned, a1111) and learned.shape == (1, 32)
    start = before[2][manager.base("tiny").tokenizer("dog", add_special_tokens=False).input_ids[0]]
    assert not torch.allclose(learned[0], start.float()), "the token moved from its initializer word"
    assert len(state.losses) == 4


def test_a_trained_token_draws_the_same_in_diffusers_and_in_every_tab(manager, textual_inversion, tiny_root):
    folder, embeddings, _, _ = textual_inversion
    plain = StableDiffusionPipeline.from_pretrained(tiny_root / "sd", safety_checker=None)
    plain.load_textual_inversion(str(folder / DIFFUSERS_FILE))
    theirs = unet_output(plain, "a ti-thing")
    with manager.lend("tiny", embeddings=[(embeddings / "ti-thing.safetensors", "ti-thing")]) as pipe:
        ours = unet_output(pipe, "a ti-thing")
        assert not torch.allclose(ours, unet_output(pipe, "a dog"))
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.fixture(scope="module")
def custom_diffusion(manager, tmp_path_factory):
    loras, embeddings = home(tmp_path_factory.mktemp("cd"))
    before = shared_state(manager)
    folder = train(manager, "tiny", loras / "cd-job", TrainParams(**CD), subject(0), second=subject(1))
    return folder, embeddings, before


def test_custom_diffusion_trains_full_kv_and_two_tokens(manager, custom_diffusion):
    folder, embeddings, before = custom_diffusion
    assert_same_shared(manager, before)
    assert sorted(embedding_library(embeddings)) == ["v1-thing", "v2-thing"]
    assert json.loads((folder / METADATA).read_text())["trigger_words"] == ["v1-thing", "v2-thing"]
    weights = load_file(folder / CD_WEIGHTS)
    keys = sorted(weights)
    assert keys and all("attn2.processor.to_" in k and "_custom_diffusion.weight" in k for k in keys)
    base = before[3]
    changed = [k for k in keys if not torch.allclose(
        weights[k], base[k.replace(".processor.", ".").replace("_custom_diffusion", "")].float())]
    assert changed, "the K/V weights moved"
    ranks = [torch.linalg.matrix_rank(weights[k] - base[k.replace(".processor.", ".").replace("_custom_diffusion", "")]
                                      .float()) for k in changed]
    assert max(ranks) > 4, f"full-rank deltas, not a low-rank LoRA ({ranks})"


def test_custom_diffusion_loads_in_diffusers_and_matches_the_studio(manager, custom_diffusion, tiny_root):
    folder, embeddings, _ = custom_diffusion
    plain = StableDiffusionPipeline.from_pretrained(tiny_root / "sd", safety_checker=None)
    load_custom_diffusion(plain, folder)
    prompt = "a v1-thing dog and a v2-thing cat"
    theirs = unet_output(plain, prompt)
    tokens = [(embeddings / f"{t}.safetensors", t) for t in ("v1-thing", "v2-thing")]
    with manager.lend("tiny", loras=[(folder, 1.0)], embeddings=tokens) as pipe:
        ours = unet_output(pipe, prompt)
    with manager.lend("tiny", embeddings=tokens) as pipe:
        without = unet_output(pipe, prompt)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(ours, without, atol=1e-4), "the LoRA form carries the K/V deltas"


def test_esd_target_is_negative_guidance_from_the_frozen_model(manager):
    unet = manager.base("tiny").unet
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    concept, empty = torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    with torch.no_grad():
        u = unet(x, t, encoder_hidden_states=empty).sample
        c = unet(x, t, encoder_hidden_states=concept).sample
    assert torch.allclose(esd_target(unet, x, t, concept, empty, 0.0), u, atol=1e-5)
    assert torch.allclose(esd_target(unet, x, t, concept, empty, 2.0), u - 2 * (c - u), atol=1e-4)


def test_erase_makes_a_lora_without_images(manager, tmp_path):
    loras, _ = home(tmp_path)
    before = shared_state(manager)
    folder = train(manager, "tiny", loras / "no-dog", TrainParams(**ERASE))
    assert_same_shared(manager, before)
    assert (folder / WEIGHTS).is_file() and trained(loras) == {"no-dog": "erase"}
    keys = load_file(folder / WEIGHTS)
    assert keys and all("attn2" in k for k in keys), "ESD-x adapts cross-attention only"


@pytest.mark.parametrize("settings, images", [(TI, 1), (CD, 2), (ERASE, 0)], ids=["ti", "cd", "erase"])
def test_cancel_and_resume_give_the_same_result_as_a_straight_run(manager, tmp_path, settings, images):
    loras, embeddings = home(tmp_path)
    concepts = dict(images=subject(0) if images else None, second=subject(1) if images > 1 else None)
    run = dict(settings, steps=6, checkpoint_every=2)
    state = TrainState()
    with pytest.raises(Cancelled, match="at step 3"):
        train(manager, "tiny", loras / "cut", TrainParams(**run), **concepts, state=state,
              should_stop=lambda: state.step >= 3, embeddings=embeddings / "cut")
    train(manager, "tiny", loras / "cut", resume=True, embeddings=embeddings / "cut")
    train(manager, "tiny", loras / "straight", TrainParams(**run), **concepts, embeddings=embeddings / "straight")
    files = {"erase": [WEIGHTS], "textual-inversion": [DIFFUSERS_FILE],
             "custom-diffusion": [WEIGHTS, "v1-thing.safetensors"]}[settings["method"]]
    for name in files:
        a, b = load_file(loras / "cut" / name), load_file(loras / "straight" / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


@pytest.mark.parametrize("bad, match", [
    (dict(TI, identifier="dog", instance_prompt="a dog"), "already a token"),
    (dict(TI, identifier="Ti-Thing", instance_prompt="a Ti-Thing"), "lower case"),
    (dict(TI, initializer=" "), "initializer"),
    (dict(CD, identifier_2="v1-thing", instance_prompt_2="a v1-thing cat"), "different identifiers"),
    (dict(TI, instance_prompt_2="a v2-thing cat", identifier_2="v2-thing"), "Custom Diffusion and DreamBooth only"),
    (dict(ERASE, erase_prompt=""), "concept to erase"),
])
def test_bad_settings_are_refused(manager, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train(manager, "tiny", tmp_path / "loras" / "bad", TrainParams(**bad), subject(), second=subject(1))


def test_a_second_concept_needs_its_images(manager, tmp_path):
    with pytest.raises(ValueError, match="Concept 2: Give 3 to 20 images"):
        train(manager, "tiny", tmp_path / "loras" / "one", TrainParams(**CD), subject())


def test_a_token_of_another_job_is_not_overwritten(manager, tmp_path, textual_inversion):
    _, embeddings, _, _ = textual_inversion
    with pytest.raises(ValueError, match="already have an embedding named ti-thing"):
        train(manager, "tiny", tmp_path / "loras" / "again", TrainParams(**TI), subject(), embeddings=embeddings)
