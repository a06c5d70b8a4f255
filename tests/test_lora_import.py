"""LoRAs and embeddings made elsewhere, on the tiny model: kohya, diffusers and peft LoRAs and A1111/diffusers
embeddings are recognised from their keys and shapes; a file for another base model, another layer layout, a pickle
or a damaged file is refused with a message; what fits is added from the UI to the owner's library and draws what its
diffusers form draws; embeddings act only where their token is typed, and the shared tokenizer and text encoder are
as they were after every job, also one that raised."""

import json
import shutil

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from safetensors.torch import load_file, save_file

from studio.classify import ClassifyParams, classify
from studio.control import ControlParams, run_control
from studio.ddib import DDIBParams, run_ddib
from studio.diffedit import DiffEditParams, run_diffedit
from studio.generate import GenerateParams, run_generate
from studio.imagic import ImagicParams, run_imagic
from studio.limits import Limits
from studio.lora import METADATA, WEIGHTS, check_fits, import_file, inspect_file, trigger_words
from studio.p2p import P2PParams, run_p2p
from studio.sdedit import SDEditParams, run_sdedit
from tabs import Deployment
from tests.conftest import free_port

TAGS = {"10_sks dog": {"sks dog": 12, " outdoors": 3, "smile": 1}, "5_dog": {"outdoors": 2}}
UNET = ("to_q", "to_k", "to_v", "to_out.0")
TEXT = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_pair(pipe, rank=4, alpha=2.0, seed=0):
    """One random LoRA of the tiny model in kohya's layout (down/up/alpha, kohya scales by alpha/rank) and the same
    LoRA in diffusers' (lora_A/lora_B, alpha/rank folded into B)."""
    g = torch.Generator().manual_seed(seed)
    kohya, diffusers = {}, {}
    for prefix, kohya_prefix, model, ends in (("unet.", "lora_unet_", pipe.unet, UNET),
                                              ("text_encoder.", "lora_te_text_model_", pipe.text_encoder, TEXT)):
        for name, module in model.named_modules():
            if name.endswith(ends):
                down = torch.randn(rank, module.in_features, generator=g) * 0.3
                up = torch.randn(module.out_features, rank, generator=g) * 0.3
                stem = kohya_prefix + name.replace(".", "_")
                kohya |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                          f"{stem}.alpha": torch.tensor(alpha)}
                diffusers |= {f"{prefix}{name}.lora_A.weight": down,
                              f"{prefix}{name}.lora_B.weight": up * (alpha / rank)}
    return kohya, diffusers


def shaped(width, *, te2=False, rank=2):
    """A small kohya LoRA whose cross-attention K/V read `width`-wide text features (SD 1.x: 768, SD 2.x: 1024)."""
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{stem}.lora_down.weight": torch.zeros(rank, width), f"{stem}.lora_up.weight": torch.zeros(320, rank),
             f"{stem}.alpha": torch.tensor(float(rank))}
    if te2:
        state |= {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(rank, 1280),
                  "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(1280, rank)}
    return state


@pytest.fixture(scope="module")
def pipe(manager):
    return manager.base("tiny")


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("made-elsewhere")
    kohya, diffusers = lora_pair(pipe)
    save_file(kohya, root / "sks dog (kohya).safetensors",
              metadata={"ss_tag_frequency": json.dumps(TAGS), "ss_output_name": "sks-dog", "ss_network_dim": "4"})
    save_file(diffusers, root / "sks-dog-diffusers.safetensors")
    g = torch.Generator().manual_seed(1)
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, root / "embtwo.safetensors")  # A1111, two vectors
    save_file({"<cat-toy>": torch.randn(32, generator=g)}, root / "learned_embeds.safetensors")  # diffusers
    return root


@pytest.fixture(scope="module")
def app(manager, tmp_path_factory):
    """The real app on the tiny model, with a library of its own (the session app's is shared with other tests)."""
    from app import build_app, queued

    outputs = tmp_path_factory.mktemp("outputs-import")
    demo = build_app(manager, "tiny", outputs)
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", outputs
    demo.close()



@pytest.fixture(scope="module")
def public(manager, tmp_path_factory):
    """A public studio whose operator lets visitors name files anywhere under one folder, outputs included."""
    from app import build_app, queued

    root = tmp_path_factory.mktemp("public-import")
    (root / "data").mkdir()
    demo = build_app(manager, "tiny", root / "outputs", where=Deployment("public", Limits.public(), data_roots=(root,)))
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", root
    demo.close()

@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


def add(client, path=None, name="", typed=""):
    return client.predict(handle_file(str(path)) if path else None, typed, name, api_name="/lora_import")


def draw(client, prompt="a sks dog"):
    gallery, *_ = client.predict(prompt=prompt, negative_prompt="", seed=3, steps=3, cfg=7.5, width=64, height=64,
                                 scheduler="Euler", n_images=1, api_name="/generate")
    with Image.open(gallery[0]["image"]) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def lend_draw(manager, prompt="a sks dog", **lend):
    with manager.lend("tiny", **lend) as pipe:
        pipe.set_progress_bar_config(disable=True)
        image = run_generate(pipe, GenerateParams(prompt, seed=3, steps=3, width=64, height=64)).images[0]
    return np.asarray(image).astype(int)


def text_state(pipe):
    """What a job must leave as it found: the tokenizer's vocabulary and the text encoder's embedding matrix."""
    table = pipe.text_encoder.get_input_embeddings()
    return dict(n=len(pipe.tokenizer), vocab=pipe.tokenizer.get_vocab(), rows=table.weight.detach().clone(),
                ptr=table.weight.data_ptr(), grad=table.weight.requires_grad, size=pipe.text_encoder.config.vocab_size,
                table=table, ids=pipe.tokenizer("a photo of embtwo, zzzemb").input_ids)


def assert_same_text_state(pipe, before):
    after = text_state(pipe)
    assert (after["n"], after["size"], after["ptr"], after["grad"]) == (before["n"], before["size"], before["ptr"],
                                                                         before["grad"])
    assert after["table"] is before["table"] and after["vocab"] == before["vocab"] and after["ids"] == before["ids"]
    assert torch.equal(after["rows"], before["rows"])


# 1. What a file is
def test_formats_bases_ranks_and_triggers_are_read_from_the_file(pipe, files, tmp_path):
    kohya = inspect_file(files / "sks dog (kohya).safetensors")
    assert (kohya.kind, kohya.format, kohya.width, kohya.text_width, kohya.ranks) == ("lora", "kohya", 32, 32, [4])
    assert kohya.triggers == ["sks dog", "outdoors", "smile"]  # most frequent first, summed over dataset folders
    assert inspect_file(files / "sks-dog-diffusers.safetensors").format == "diffusers"
    emb = inspect_file(files / "embtwo.safetensors")
    assert (emb.kind, emb.format, emb.vectors, emb.width) == ("embedding", "a1111-embedding", 2, 32)
    assert inspect_file(files / "learned_embeds.safetensors").format == "diffusers-embedding"
    for width, te2, base in ((768, False, "SD 1.x"), (1024, False, "SD 2.x"), (2048, False, "SDXL"),
                             (2048, True, "SDXL")):
        save_file(shaped(width, te2=te2), tmp_path / "x.safetensors")
        assert inspect_file(tmp_path / "x.safetensors").base == base
    save_file({"emb_params": torch.zeros(1, 768)}, tmp_path / "e.safetensors")
    assert inspect_file(tmp_path / "e.safetensors").base == "SD 1.x"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, tmp_path / "xl.safetensors")
    assert inspect_file(tmp_path / "xl.safetensors").base == "SDXL"
    assert trigger_words({"ss_output_name": "pikachu"}) == ["pikachu"]
    assert trigger_words({"modelspec.trigger_phrase": "pkmn style", "ss_tag_frequency": json.dumps(TAGS)}) == \
        ["pkmn style"]


def test_a_lora_for_another_model_is_refused_with_what_to_pick(pipe, tmp_path):
    for width, te2, message in ((768, False, r"trained for SD 1\.x \(768-wide text features\); tiny is a 32-wide "
                                             r"model \(32\)\. Pick a LoRA for a 32-wide model"),
                                (2048, True, r"trained for SDXL \(2048-wide")):
        save_file(shaped(width, te2=te2), tmp_path / "x.safetensors")
        with pytest.raises(ValueError, match=message):
            check_fits(inspect_file(tmp_path / "x.safetensors"), pipe, "tiny")
    # The right width but a layer the tiny UNet does not have: refused whole, never half applied.
    kohya, _ = lora_pair(pipe)
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    kohya |= {f"{stem}.lora_down.weight": torch.zeros(4, 64), f"{stem}.lora_up.weight": torch.zeros(64, 4)}
    save_file(kohya, tmp_path / "layout.safetensors")
    with pytest.raises(ValueError, match=r"do not match tiny: 1 of \d+ is missing.*down_blocks\.1\.attentions\.0"):
        check_fits(inspect_file(tmp_path / "layout.safetensors"), pipe, "tiny")
    save_file({"emb_params": torch.zeros(1, 768)}, tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match=r"This embedding was trained for SD 1\.x .* Pick an? embedding for"):
        check_fits(inspect_file(tmp_path / "e.safetensors"), pipe, "tiny")


def test_a_peft_lora_with_its_config_draws_what_its_diffusers_form_draws(manager, pipe, files, tmp_path):
    _, diffusers = lora_pair(pipe, rank=4, alpha=2.0)
    # peft's save_pretrained of the UNet alone: its own prefix, B without alpha/rank, alpha in adapter_config.json.
    peft = {k.replace("unet.", "base_model.model.", 1): v * (2 if ".lora_B." in k else 1)
            for k, v in diffusers.items() if k.startswith("unet.")}
    save_file(peft, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2, "peft_type": "LORA"}))
    info, folder = import_file(pipe, tmp_path / "adapter_model.safetensors", "peft-dog", loras=tmp_path / "loras",
                               embeddings=tmp_path / "embeddings")
    assert (info.format, info.ranks, info.notes) == ("peft", [4], [])
    unet_only = {k: v for k, v in diffusers.items() if k.startswith("unet.")}
    save_file(unet_only, tmp_path / "unet-only.safetensors")
    assert np.abs(lend_draw(manager, loras=[(folder, 1.0)]) -
                  lend_draw(manager, loras=[(tmp_path / "unet-only.safetensors", 1.0)])).max() <= 1


# 2. Through the UI
def test_a_kohya_lora_added_from_the_ui_draws_what_its_diffusers_form_draws(client, app, files):
    detected, triggers, *_ = add(client, files / "sks dog (kohya).safetensors")
    assert "**sks-dog-kohya**" in detected and "kohya-ss/A1111 LoRA" in detected and "rank 4" in detected
    assert triggers == "sks dog, outdoors, smile"
    # The other form from a server path (this private studio may read all of its machine), with a name given.
    detected, triggers, *_ = add(client, typed=str(files / "sks-dog-diffusers.safetensors"), name="sks-dog-diff")
    assert "diffusers LoRA" in detected and triggers == ""
    folder = app[1] / "loras" / "sks-dog-kohya"
    assert (folder / WEIGHTS).read_bytes() == (files / "sks dog (kohya).safetensors").read_bytes()
    meta = json.loads((folder / METADATA).read_text())
    assert meta["source"] == "imported" and meta["format"] == "kohya" and meta["original_file"].startswith("sks dog")
    assert meta["trigger_words"] == ["sks dog", "outdoors", "smile"]

    base = draw(client)
    assert "**sks-dog-kohya** × 1" in client.predict("sks-dog-kohya", 1.0, None, 1.0, api_name="/loras_pick")
    kohya = draw(client)
    client.predict("sks-dog-diff", 1.0, None, 1.0, api_name="/loras_pick")
    diffusers = draw(client)
    client.predict(None, 1.0, None, 1.0, api_name="/loras_pick")
    assert np.abs(kohya - diffusers).max() <= 1, "the same LoRA in two layouts draws the same pixels"
    assert np.abs(kohya - base).max() > 10, "and it changes the picture"
    with pytest.raises(AppError, match="already have a LoRA named sks-dog-kohya"):
        add(client, files / "sks dog (kohya).safetensors")


def test_refusals_say_why_and_add_nothing(client, app, pipe, manager, tmp_path, monkeypatch):
    save_file(shaped(768), tmp_path / "sd15-style.safetensors")
    with pytest.raises(AppError, match=r"trained for SD 1\.x \(768-wide text features\); the studio's model"):
        add(client, tmp_path / "sd15-style.safetensors")
    kohya, _ = lora_pair(pipe, seed=4)
    torch.save(kohya, tmp_path / "old-style.pt")
    with pytest.raises(AppError, match=r"old-style\.pt is a pickle file .* --allow-pickle"):
        add(client, tmp_path / "old-style.pt")
    assert not (app[1] / "loras" / "sd15-style").exists() and not (app[1] / "loras" / "old-style").exists()
    monkeypatch.setattr(manager, "allow_pickle", True)  # as --allow-pickle sets it
    detected, *_ = add(client, tmp_path / "old-style.pt")
    assert "**old-style**" in detected
    assert load_file(app[1] / "loras" / "old-style" / WEIGHTS).keys() == kohya.keys()


def test_damaged_files_get_a_clear_message_and_the_app_stays_up(client, tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "cut.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\": \"F32\"")
    save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, tmp_path / "something-else.safetensors")
    for name, message in (("empty", "empty.safetensors could not be read"), ("cut", "cut.safetensors could not be"),
                          ("something-else", "neither a LoRA nor a textual-inversion embedding")):
        with pytest.raises(AppError, match=message):
            add(client, tmp_path / f"{name}.safetensors")
    with pytest.raises(AppError, match="Upload a .safetensors file"):
        add(client)
    with pytest.raises(AppError, match="No file at"):
        add(client, typed=str(tmp_path / "nothing-here.safetensors"))
    assert client.predict(None, 1.0, None, 1.0, api_name="/loras_pick") == "No LoRA applied."


def test_an_embedding_acts_only_where_its_token_is_typed(client, manager, pipe, files):
    before = text_state(pipe)
    detected, *_, embedded = add(client, files / "embtwo.safetensors")
    assert "**embtwo**" in detected and "2 vectors" in detected and "`embtwo`" in embedded
    detected, *_, embedded = add(client, files / "learned_embeds.safetensors", name="zzzEmb")
    assert "**zzzemb**" in detected and "diffusers embedding" in detected  # lower case: CLIP reads prompts so
    with_them = {p: draw(client, p) for p in ("a photo of embtwo", "a photo of zzzemb", "a photo")}
    assert client.predict([], api_name="/embeddings_pick") == "No embedding loaded."
    without = {p: draw(client, p) for p in with_them}
    assert np.array_equal(with_them["a photo"], without["a photo"]), "no token typed: exactly the base model"
    for prompt in ("a photo of embtwo", "a photo of zzzemb"):
        assert np.abs(with_them[prompt] - without[prompt]).max() > 10, f"{prompt}: the embedding is read"
    assert "`zzzemb`" in client.predict(["zzzemb"], api_name="/embeddings_pick")
    assert np.array_equal(draw(client, "a photo of zzzemb"), with_them["a photo of zzzemb"])
    assert_same_text_state(pipe, before)
    # A fresh session has all of the owner's embeddings, as A1111 does.
    other = Client(client.src, verbose=False)
    assert np.array_equal(draw(other, "a photo of embtwo"), with_them["a photo of embtwo"])
    with pytest.raises(AppError, match="already a token of the model's tokenizer"):
        add(client, files / "embtwo.safetensors", name="photo")


def test_embeddings_are_unloaded_after_a_job_that_raises(manager, pipe, files, tmp_path):
    before = text_state(pipe)
    with pytest.raises(RuntimeError, match="mid-job"):
        with manager.lend("tiny", embeddings=[(files / "embtwo.safetensors", "embtwo")]) as lent:
            assert len(lent.tokenizer) == before["n"] + 2  # embtwo and embtwo_1
            assert lent.maybe_convert_prompt("a embtwo", lent.tokenizer) == "a embtwo embtwo_1"
            raise RuntimeError("mid-job")
    assert_same_text_state(pipe, before)
    with pytest.raises(ValueError, match="gone from your library"):
        with manager.lend("tiny", embeddings=[(files / "nope.safetensors", "nope")]):
            pass
    assert_same_text_state(pipe, before)
    save_file({"emb_params": torch.zeros(1, 768)}, tmp_path / "sd15.safetensors")  # kept from another --model
    with pytest.raises(ValueError, match=r"sd15 of your library was made for SD 1\.x .* Untick it under Embeddings"):
        with manager.lend("tiny", embeddings=[(files / "embtwo.safetensors", "embtwo"),
                                              (tmp_path / "sd15.safetensors", "sd15")]):
            pass
    assert_same_text_state(pipe, before)
    with pytest.raises(ValueError, match="embedding photo is named like a token the model's tokenizer has"):
        with manager.lend("tiny", embeddings=[(files / "embtwo.safetensors", "photo")]):  # a file renamed by hand
            pass
    assert_same_text_state(pipe, before)


def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def pixels(image):
    return np.asarray(image, dtype=float)


# Every technique that encodes a prompt, on the tiny model: (pipe, prompt) -> what its output is made of.
TECHNIQUES = {
    "generate": lambda pipe, p: pixels(run_generate(pipe, GenerateParams(p, seed=3, steps=3, width=64,
                                                                         height=64)).images[0]),
    "sdedit": lambda pipe, p: pixels(run_sdedit(pipe, picture(), SDEditParams(p, steps=6, t0=0.6, seed=1)).image),
    "p2p": lambda pipe, p: pixels(run_p2p(pipe, P2PParams("a red circle", p, steps=5, seed=3)).edited),
    "control": lambda pipe, p: pixels(run_control(pipe, [], ControlParams(p, steps=4, width=64, height=64,
                                                                          seed=3)).image),
    "classify": lambda pipe, p: np.array([[e for _, e in sorted(errors.items())] for _, errors in sorted(
        classify(pipe, picture(), ["a red circle", p], ClassifyParams()).errors.items())]),
    "ddib": lambda pipe, p: pixels(run_ddib(pipe, picture(), DDIBParams("a red ball", p, steps=5)).image),
    "diffedit": lambda pipe, p: pixels(run_diffedit(pipe, picture(), DiffEditParams("a red ball", p, steps=5,
                                                                                    n_noise=1)).image),
    "imagic": lambda pipe, p: pixels(run_imagic(pipe, picture(), ImagicParams(p, embedding_steps=2, finetune_steps=1,
                                                                              steps=5)).image),
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two two-vector embeddings under one token: what differs between them is only the vectors the token reads."""
    root = tmp_path_factory.mktemp("twins")
    for seed in (5, 6):
        save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(seed))},
                  root / f"twin{seed}.safetensors")
    return [[(root / f"twin{seed}.safetensors", "zztwin")] for seed in (5, 6)]


SLOW = {"ddib", "diffedit", "imagic"}  # an inversion or a fine-tune each


@pytest.mark.parametrize("technique", [pytest.param(t, marks=pytest.mark.slow) if t in SLOW else t
                                       for t in TECHNIQUES])
def test_every_technique_reads_the_embedding_where_its_token_is_typed(manager, pipe, twins, technique):
    """What a prompt without the token gives is the same with or without embeddings (the UI test above checks it)."""
    before = text_state(pipe)
    typed = []
    for embeddings in twins:
        with manager.lend("tiny", embeddings=embeddings) as lent:
            lent.set_progress_bar_config(disable=True)
            typed.append(TECHNIQUES[technique](lent, "a zztwin circle"))
    assert np.abs(typed[0] - typed[1]).max() > 0, "the token typed: its own vectors are read"
    assert_same_text_state(pipe, before)


def test_on_a_shared_studio_what_one_adds_is_theirs_alone(public, files):
    url, root = public
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    add(alice, files / "sks dog (kohya).safetensors")
    add(alice, files / "embtwo.safetensors")
    assert "**sks-dog-kohya** × 1" in alice.predict("sks-dog-kohya", 1.0, None, 1.0, api_name="/loras_pick")
    alice.predict(None, 1.0, None, 1.0, api_name="/loras_pick")
    mine = next((root / "outputs" / "users").glob("*/loras/sks-dog-kohya/" + WEIGHTS))
    assert (mine.parent.parent.parent / "embeddings" / "embtwo.safetensors").is_file()
    with pytest.raises(AppError, match="No finished LoRA named sks-dog-kohya"):
        bob.predict("sks-dog-kohya", 1.0, None, 1.0, api_name="/loras_pick")
    with pytest.raises(AppError, match="embtwo.* is not in the list of choices"):  # Gradio refuses it for us
        bob.predict(["embtwo"], api_name="/embeddings_pick")
    assert not np.array_equal(draw(alice, "a photo of embtwo"), draw(bob, "a photo of embtwo")), \
        "Alice's embedding is loaded for her jobs only"
    # Server paths: only inside the operator's folders, and never into someone else's part of the outputs.
    with pytest.raises(AppError, match="in the studio's outputs, where other people's work is kept"):
        add(bob, typed=str(mine))
    with pytest.raises(AppError, match="outside the folders this studio may read"):
        add(bob, typed=str(files / "sks-dog-diffusers.safetensors"))
    shutil.copy(files / "sks-dog-diffusers.safetensors", root / "data")
    assert "**sks-dog-diffusers**" in add(bob, typed=str(root / "data" / "sks-dog-diffusers.safetensors"))[0]
    with pytest.raises(AppError, match="No finished LoRA named sks-dog-diffusers"):
        alice.predict("sks-dog-diffusers", 1.0, None, 1.0, api_name="/loras_pick")


@pytest.mark.browser
@pytest.mark.slow
def test_in_a_browser_a_kohya_file_is_added_shows_its_trigger_words_and_is_picked(app, files, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from docs.screenshots import CHROMIUM, FLAGS

    upload = tmp_path / "watercolor (kohya).safetensors"
    shutil.copy(files / "sks dog (kohya).safetensors", upload)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app[0])
        page.get_by_role("button", name="LoRAs and embeddings: apply them in every tab").click()
        page.get_by_role("button", name="Add your own LoRA or embedding").click()
        page.locator("#lora-file input[type=file]").set_input_files(str(upload))
        name = page.locator("#lora-name textarea, #lora-name input").first
        page.wait_for_function("() => document.querySelector('#lora-name textarea, #lora-name input').value !== ''")
        assert name.input_value() == "watercolor-kohya"
        page.locator("#lora-add").click()
        page.locator("#lora-detected").get_by_text("a kohya-ss/A1111 LoRA for a 32-wide model, rank 4").wait_for(
            timeout=60_000)
        assert page.locator("#lora-triggers textarea, #lora-triggers input").first.input_value() == \
            "sks dog, outdoors, smile"
        picker = page.locator("#lora-1 input").first
        picker.click()
        page.get_by_role("option", name="watercolor-kohya").click()
        page.locator("#lora-active").get_by_text("watercolor-kohya").wait_for(timeout=30_000)
        browser.close()
