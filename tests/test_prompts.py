"""A1111's prompt syntax (studio/prompts.py): the parser on A1111's own examples, weights on the tiny text encoder as
A1111 applies them, long prompts in chunks, LoRA tags, and Prompt-to-Prompt's word weights taken from the syntax."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.p2p import P2PParams, run_p2p, word_weights
from studio.prompts import BREAK, encode_text, escape, parse_prompt_attention, plain_text, prompt_chunks
from studio.sampling import check_prompt, text_context
from studio.tiny import build_tiny_sd

LONG = "a red circle " * 50  # 150 tokens: two full chunks


@pytest.fixture(scope="module")
def pipe():
    """The tiny model, with a bias in its text encoder's final LayerNorm as the real CLIP has: the tiny one's is zero,
    and so would be the mean of every embedding, which A1111's rescale restores."""
    pipe = build_tiny_sd()
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    norm = pipe.text_encoder.final_layer_norm
    norm.bias.copy_(0.1 + 0.1 * torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0)))
    return pipe


def plain(pipe, prompt: str) -> torch.Tensor:
    return pipe.encode_prompt(prompt, pipe.unet.device, 1, False)[0]


# The first six are the examples in A1111's parse_prompt_attention docstring, with its outputs.
@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("((a)) [[b]]", [("a", 1.21), (" ", 1.0), ("b", 1 / 1.21)]),
    ("((a:1.5)) b", [("a", 1.65), (" b", 1.0)]),
    ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
    ("(a:-0.5) (b: 2 )", [("a", -0.5), (" ", 1.0), ("b", 2.0)]),
    ("a) b] c:1.5)", [("a) b] c:1.5)", 1.0)]),  # closers with nothing to close are text
    ("[unclosed (both", [("unclosed ", 1 / 1.1), ("both", 1.0)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # not a number: the colon is text, the group a plain ( )
    ("\\\\ \\x \\[y\\]", [("\\ \\x [y]", 1.0)]),
    ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), (BREAK, -1.0), ("b", 1.1)]),  # a BREAK is never weighted
    ("BREAKfast", [("BREAKfast", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parser_follows_a1111(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_escape_reads_back_as_the_text_itself():
    text = "a (b) [c] \\ d:1.5)"
    assert parse_prompt_attention(escape(text)) == [(text, 1.0)]


def test_plain_text_is_the_prompt_without_its_syntax():
    assert plain_text("a (red:1.5) [car] BREAK \\(sky\\)") == "a red car (sky)"


def test_a_lora_tag_is_refused_with_where_loras_are_picked(pipe):
    """Tags are not applied as LoRAs (the LoRA bar is), so one is never taken out silently nor encoded as words."""
    for prompt in ("a red <lora:my style:0.8>circle", "<lora:x>", "a <lora:kohya:0.5:1> circle"):
        with pytest.raises(ValueError, match="LoRA tags are not read from prompts.*LoRAs and embeddings"):
            encode_text(pipe, [prompt])
    with pytest.raises(ValueError, match="LoRA tags"):
        text_context(pipe, "a red circle", "<lora:x:1>", True)


@pytest.mark.parametrize("prompt", ["a red circle on the left", "", "a photo: 4k, detailed"])
def test_a_prompt_without_syntax_gives_encode_prompts_embeddings_exactly(pipe, prompt):
    """Every technique's plain prompts, and so every earlier test and figure, are unchanged."""
    assert torch.equal(encode_text(pipe, [prompt]), plain(pipe, prompt))
    cond, uncond = pipe.encode_prompt([prompt, "x"], pipe.unet.device, 1, True, ["blurry", ""])
    assert torch.equal(text_context(pipe, [prompt, "x"], ["blurry", ""], True)[0], torch.cat([uncond, cond]))


def test_weight_one_is_no_syntax(pipe):
    assert torch.equal(encode_text(pipe, ["a (red:1) circle"]), encode_text(pipe, ["a red circle"]))
    assert torch.equal(encode_text(pipe, ["a (red:1.0) circle"]), plain(pipe, "a red circle"))


@pytest.mark.parametrize("prompt, weight", [("a (red:1.5) circle", 1.5), ("a [red] circle", 1 / 1.1),
                                            ("a ((red)) circle", 1.21)])
def test_a_weight_scales_its_token_then_the_chunk_is_renormalised(pipe, prompt, weight):
    """A1111's "Original" emphasis: z_i ← w·z_i for the weighted token, then every position × mean(z) / mean(z')."""
    ids = prompt_chunks(pipe.tokenizer, prompt)[0][0]
    assert ids == prompt_chunks(pipe.tokenizer, "a red circle")[0][0]  # the brackets are no tokens
    z = plain(pipe, "a red circle")[0]
    expected = z.clone()
    expected[2] *= weight  # position 2: BOS, "a", "red"
    expected *= z.mean() / expected.mean()
    weighted = encode_text(pipe, [prompt])[0]
    torch.testing.assert_close(weighted, expected)
    ratio = weighted / z  # the same factor everywhere but at the weighted token, where it is w times larger
    others = torch.cat([ratio[:2], ratio[3:]])
    torch.testing.assert_close(others, torch.full_like(others, float(ratio[0, 0])))
    torch.testing.assert_close(ratio[2], torch.full_like(ratio[2], weight * float(ratio[0, 0])))


def test_embeddings_without_a_mean_are_weighted_without_the_rescale():
    pipe = build_tiny_sd()  # its final LayerNorm has no bias: every embedding's mean is 0
    with torch.no_grad():
        z, weighted = encode_text(pipe, ["a red circle"])[0], encode_text(pipe, ["a (red:1.5) circle"])[0]
    torch.testing.assert_close(weighted[2], 1.5 * z[2])
    torch.testing.assert_close(weighted[3:], z[3:])



def test_a_textual_inversion_word_is_weighted_whole_inside_the_syntax():
    """A two-vector embedding's word expands to both its tokens (as encode_prompt expands it), and a weight on the
    word weighs both."""
    pipe = build_tiny_sd()  # its own tokenizer and encoder: the embedding is added to them
    pipe.load_textual_inversion({"<thing>": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
                                token="<thing>", tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    with torch.no_grad():
        assert torch.equal(encode_text(pipe, ["a (<thing>:1) circle"]), plain(pipe, "a <thing> circle"))
        changed = (encode_text(pipe, ["a (<thing>:1.5) circle"]) != plain(pipe, "a <thing> circle")).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [2, 3]  # BOS, "a", the embedding's two vectors

def test_a_150_token_prompt_is_two_chunks_and_its_second_half_counts(pipe):
    z = encode_text(pipe, [LONG])
    assert z.shape == (1, 154, 32)
    # Its first chunk is what encode_prompt keeps, and in one chunk it is encode_prompt's truncation
    assert torch.equal(z[:, :77], plain(pipe, LONG))
    assert torch.equal(encode_text(pipe, [LONG], chunks=False), plain(pipe, LONG))
    changed = encode_text(pipe, ["a red circle " * 25 + "a blue square " * 25])
    assert torch.equal(changed[:, :77], z[:, :77])
    assert not torch.allclose(changed[:, 77:], z[:, 77:])
    assert check_prompt(pipe.tokenizer, "a red circle") is None


def test_break_starts_a_chunk(pipe):
    z = encode_text(pipe, ["a red circle BREAK a blue square"])
    assert z.shape[1] == 154
    torch.testing.assert_close(z[:, :77], plain(pipe, "a red circle"))
    torch.testing.assert_close(z[:, 77:], plain(pipe, "a blue square"))
    assert encode_text(pipe, ["a red circle BREAK"]).shape[1] == 77  # nothing after it: no empty chunk


def test_negative_positive_and_batches_get_equal_chunks_filled_with_the_empty_prompt(pipe):
    empty = plain(pipe, "")
    context, cond = text_context(pipe, LONG, "blurry", True)
    assert context.shape == (2, 154, 32) and cond.shape == (1, 154, 32)
    torch.testing.assert_close(context[:1, :77], plain(pipe, "blurry"))
    torch.testing.assert_close(context[:1, 77:], empty)
    context, _ = text_context(pipe, "a red circle", LONG, True)
    assert context.shape == (2, 154, 32)
    torch.testing.assert_close(context[1:, 77:], empty)
    batch = encode_text(pipe, ["a red circle", LONG])
    assert batch.shape == (2, 154, 32)
    torch.testing.assert_close(batch[:1, 77:], empty)


def test_one_chunk_techniques_warn_what_they_drop(pipe):
    assert encode_text(pipe, [LONG], chunks=False).shape == (1, 77, 32)
    warning = check_prompt(pipe.tokenizer, LONG)
    assert "150 tokens" in warning and "one chunk of 75" in warning
    assert "BREAK does nothing" in check_prompt(pipe.tokenizer, "a BREAK b")
    assert check_prompt(pipe.tokenizer, "a (red:1.5) circle") is None


def test_word_weights_are_what_p2p_aligns_and_reweights():
    assert word_weights("a (red:1.5) circle, ((big)) [dim] BREAK left") == (
        "a red circle, big dim left", {"red": 1.5, "big": 1.21, "dim": 0.909})
    assert word_weights("a \\(red\\) circle") == ("a (red) circle", {})


def test_weighted_edited_prompt_presets_p2p_sliders():
    from tabs.p2p import MAX_WEIGHT_WORDS, P2PTab

    words, *sliders = P2PTab.relabel("a (red:1.5) circle", "a blue circle", "a blue circle", [2.0] * MAX_WEIGHT_WORDS)
    assert words == "a red circle"
    assert [s["label"] for s in sliders[:3]] == ["a", "red", "circle"]
    assert [s["value"] for s in sliders[:3]] == [2.0, 1.5, 2.0]  # words kept keep their weight
    assert P2PTab.example("a red circle", "a (red:3) circle", "reweight", "", 7.5, 0)[7:10] == [1, 3, 1]


def test_p2p_reads_the_syntax_as_its_word_weights(pipe):
    """The syntax is taken out of the text P2P aligns and encodes, and its weights are the equalizer's: the same edit
    as the plain prompt with the slider set; a slider that disagrees wins, with a warning."""
    fast = dict(source_prompt="a red circle", edit="replace", steps=5, seed=1, cfg=3)
    plain_edit = run_p2p(pipe, P2PParams(**fast, target_prompt="a blue circle", weights={"blue": 2.0}))
    syntax = run_p2p(pipe, P2PParams(**fast, target_prompt="a (blue:2) circle", weights={"blue": 2.0}))
    assert np.array_equal(np.asarray(plain_edit.edited), np.asarray(syntax.edited))
    assert not syntax.warnings and syntax.target_tokens[:4] == plain_edit.target_tokens[:4]
    unset = run_p2p(pipe, P2PParams(**fast, target_prompt="a (blue:2) circle"))
    assert any("weighted 2 in the edited prompt" in w for w in unset.warnings)


def test_p2p_refuses_a_real_image_inverted_under_weights_it_would_not_draw(pipe):
    from studio.inversion import Inversion

    source = "a (red:1.5) circle"
    inverted = Inversion("key", source, 5, 3.0, torch.zeros(1, 4, 8, 8), [], None, 0.0, 0.0)
    with pytest.raises(ValueError, match="without weights"):
        run_p2p(pipe, P2PParams(source_prompt=source, target_prompt="a blue circle", steps=5, cfg=3),
                inversion=inverted)


# What every technique reaches: each calls one of these, and nothing in studio/ or tabs/ encodes text another way.
ENCODERS = {"encode_text", "text_context", "txt2img"}
TECHNIQUES = ("generate", "sdedit", "p2p", "control", "classify", "trainer", "train_data", "ddib", "diffedit",
              "imagic", "inversion")


def calls(tree: ast.AST) -> list[tuple[str, int, list[str]]]:
    """(callee's name, line, the keywords it is given) for every call in a file's or a function's tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            found.append((name, node.lineno, [k.arg for k in node.keywords]))
    return found


def parsed(path: Path, function: str | None = None) -> ast.AST:
    """A file's syntax tree, or that of one of its top-level functions."""
    tree = ast.parse(path.read_text())
    return tree if function is None else next(n for n in tree.body if getattr(n, "name", None) == function)


def test_every_prompt_is_encoded_by_encode_text():
    """The structural half of "every tab reads the syntax": no file of studio/ or tabs/ but studio/prompts.py calls the
    text encoder, diffusers' `encode_prompt` or a pipeline's `__call__` (which would encode the prompt itself), and
    every technique calls `encode_text` or a helper built on it (`text_context`, `txt2img`). Shapes' world model
    trains its own caption encoder on its fixed captions and is not a prompt box."""
    root = Path(__file__).resolve().parents[1]
    files = [p for p in [*(root / "studio").rglob("*.py"), *(root / "tabs").glob("*.py")]
             if p.name != "prompts.py" and "shapes" not in p.relative_to(root).parts]
    for path in files:
        for name, line, keywords in calls(parsed(path)):
            where = f"{path.relative_to(root)}:{line}"
            assert name not in ("encode_prompt", "_encode_prompt", "text_encoder", "pipe"), where
            assert "prompt_embeds" not in keywords, where
    for module in TECHNIQUES:
        used = {name for name, _, _ in calls(parsed(root / "studio" / f"{module}.py"))}
        assert used & ENCODERS, f"studio/{module}.py encodes no prompt through studio/prompts.py"
    sampling = root / "studio" / "sampling.py"
    assert "encode_text" in {name for name, _, _ in calls(parsed(sampling, "text_context"))}
    assert "text_context" in {name for name, _, _ in calls(parsed(sampling, "txt2img"))}


def test_train_reads_the_syntax_in_its_prompts():
    from studio.trainer import TrainParams

    TrainParams(instance_prompt="a photo of (sks:1.2) dog", identifier="sks")  # the identifier is found in the syntax
    with pytest.raises(ValueError, match="must not contain the identifier"):
        TrainParams(instance_prompt="a sks dog", identifier="sks", class_prompt="a [sks] dog")


def test_classify_refuses_a_class_prompt_longer_than_its_one_chunk(pipe):
    from studio.classify import ClassifyParams, classify

    image = Image.new("RGB", (64, 64), "red")
    with pytest.raises(ValueError, match="class prompt .* has more than 75 tokens or a BREAK"):
        classify(pipe, image, ["a red circle", LONG], ClassifyParams())
    with pytest.raises(ValueError, match="more than 75 tokens or a BREAK"):
        classify(pipe, image, ["a red circle", "a blue BREAK square"], ClassifyParams())


def entry_points(pipe):
    """Each chunking technique's entry point, run for a 150-token prompt at the least cost its checks allow."""
    from studio.control import ControlParams, ControlUnit, run_control
    from studio.ddib import DDIBParams, run_ddib
    from studio.diffedit import DiffEditParams, run_diffedit
    from studio.generate import GenerateParams, run_generate
    from studio.sdedit import SDEditParams, run_sdedit
    from studio.tiny import build_tiny_controlnet

    image = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    fast = dict(steps=5, seed=1)
    return {
        "generate": lambda: run_generate(pipe, GenerateParams(prompt=LONG, width=64, height=64, **fast)),
        "sdedit": lambda: run_sdedit(pipe, image, SDEditParams(prompt=LONG, negative_prompt="blurry", **fast)),
        "control": lambda: run_control(pipe, [ControlUnit(build_tiny_controlnet(pipe.unet), image)],
                                       ControlParams(LONG, width=64, height=64, **fast)),
        "ddib": lambda: run_ddib(pipe, image, DDIBParams(source_prompt=LONG, target_prompt=LONG, steps=5, cfg=3)),
        "diffedit": lambda: run_diffedit(pipe, image, DiffEditParams(source_prompt=LONG, target_prompt=LONG.replace(
            "red", "blue"), n_noise=1, **fast)),
    }


@pytest.mark.parametrize("technique", ["generate", "sdedit", "control", "ddib", "diffedit"])
def test_every_chunking_technique_gives_the_unet_the_whole_long_prompt(pipe, technique, monkeypatch):
    """The runtime half: the UNet, and a ControlNet, are given all 154 positions of a 150-token prompt at every
    call, never a 77-token cut."""
    from diffusers import ControlNetModel

    seen = []

    def record(module, args, kwargs):
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        seen.append((type(module).__name__, context.shape[1]))

    forward = ControlNetModel.forward

    def controlnet_forward(self, *args, **kwargs):
        record(self, args, kwargs)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", controlnet_forward)
    hook = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        entry_points(pipe)[technique]()
    finally:
        hook.remove()
    assert seen and {length for _, length in seen} == {154}, seen
    if technique == "control":
        assert {name for name, _ in seen} == {"UNet2DConditionModel", "ControlNetModel"}
