"""Prompt-to-Prompt on the tiny model: processors restored, token mappers, identity edits, bad input, cancel."""

import numpy as np
import pytest
import torch
from PIL import Image

from studio.sampling import make_scheduler
from studio.inversion import invert, inversion_key
from studio.jobs import Cancelled
from studio.p2p import P2PParams, refine_mapper, replace_mapper, run_p2p, word_tokens
from studio.tiny import load_tokenizer

FAST = dict(source_prompt="a red circle on the left", target_prompt="a blue circle on the left", steps=6, seed=3)


def p2p(manager, **kwargs):
    with manager.lend("tiny") as pipe:
        return run_p2p(pipe, P2PParams(**{**FAST, **kwargs}))


def test_processors_are_restored_after_an_edit_and_after_a_cancel(manager):
    with manager.lend("tiny") as pipe:
        before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
        run_p2p(pipe, P2PParams(**FAST))
        assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
        with pytest.raises(Cancelled):
            run_p2p(pipe, P2PParams(**FAST), should_stop=lambda: True)
        assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before


@pytest.mark.parametrize("edit", ["replace", "refine"])
def test_target_equal_to_source_reproduces_the_source_exactly(manager, edit):
    result = p2p(manager, edit=edit, target_prompt=FAST["source_prompt"])
    assert np.array_equal(np.asarray(result.source), np.asarray(result.edited))


def test_source_image_is_the_plain_generation_of_the_source_prompt(manager):
    """Our attention processor computes what diffusers' does: the source row is an ordinary DDIM generation."""
    result = p2p(manager)
    with manager.lend("tiny") as pipe:
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(3))
        scheduler = pipe.scheduler
        pipe.scheduler = make_scheduler("DDIM", scheduler.config)
        try:
            plain = pipe(FAST["source_prompt"], num_inference_steps=6, latents=noise, height=64, width=64,
                         output_type="np").images[0]
        finally:
            pipe.scheduler = scheduler
    assert np.abs(np.asarray(result.source) / 255 - plain).max() < 2 / 255


def test_replace_mapper_handles_words_of_different_token_counts():
    tokenizer = load_tokenizer()
    src, tgt = "a red circle", "a red motorcycle"  # "motorcycle" is one token, check the spans anyway
    spans_t = word_tokens(tokenizer, tgt)
    mapper = replace_mapper(tokenizer, src, tgt)
    assert torch.allclose(mapper.sum(0)[: spans_t[-1][-1] + 1], torch.ones(spans_t[-1][-1] + 1))
    long = "a red supercalifragilistic"
    spans = word_tokens(tokenizer, long)
    assert len(spans[-1]) > 1
    mapper = replace_mapper(tokenizer, src, long)
    circle = word_tokens(tokenizer, src)[-1][0]
    assert all(mapper[circle, j] == 1 for j in spans[-1])  # each new token takes the old word's map
    eos_t = spans[-1][-1] + 1
    assert mapper[word_tokens(tokenizer, src)[-1][-1] + 1, eos_t] == 1  # EOS follows the shift


def test_refine_aligns_the_shared_tokens_and_marks_new_ones():
    tokenizer = load_tokenizer()
    mapper, alphas = refine_mapper(tokenizer, "a circle", "a red circle")
    assert alphas[:4].tolist() == [1, 1, 0, 1]  # BOS, "a", new "red", "circle"
    assert mapper[3] == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(source_prompt=""), "source prompt"),
    (dict(target_prompt="a blue circle"), "one for one"),
    (dict(edit="reweight", weights={}), "at least one word"),
    (dict(weights={"green": 2.0}), "not a word of the target"),
    (dict(blend_words=["square"]), "in neither prompt: change or clear the LocalBlend words"),
    (dict(blend_words=["circle"], blend_levels=[3]), "1/1, 1/2, 1/4 or 1/8"),
    (dict(cross_start=0.9, cross_end=0.2), "start ≤ end"),
    (dict(edit="swap"), "Unknown edit"),
])
def test_bad_input_is_refused_with_a_message(manager, kwargs, match):
    with pytest.raises(ValueError, match=match):
        p2p(manager, **kwargs)


def test_maps_are_recorded_per_step_and_resolution_and_blend_gives_a_mask(manager):
    result = p2p(manager, blend_words=["circle"])
    assert result.maps.steps == list(range(6)) and result.maps.sides == [4, 8]
    assert result.maps.get(0, 8).shape == (2, 8, 8, result.maps.n_tokens)
    assert result.source_tokens[:4] == ["<|startoftext|>", "a", "red", "circle"]
    m = result.maps.token_map(0, 3)
    assert m.shape == (8, 8) and m.max() == pytest.approx(1)
    assert result.blend_mask is not None and result.blend_mask.size == (64, 64)


def test_local_blend_averages_only_the_resolutions_picked(manager):
    """The tiny UNet attends at 8x8 (level 1 of its 8x8 latent) and 4x4 (level 2)."""
    fine, coarse = (p2p(manager, blend_words=["circle"], blend_levels=[level], blend_threshold=0.9)
                    for level in (1, 2))
    assert not np.array_equal(np.asarray(fine.blend_mask), np.asarray(coarse.blend_mask))
    off = p2p(manager, blend_words=["circle"], blend_levels=[8])
    assert off.blend_mask is None and "LocalBlend was off" in off.warnings[0] and "4×4 and 8×8" in off.warnings[0]
    assert np.array_equal(np.asarray(off.edited), np.asarray(p2p(manager).edited))


def test_an_inverted_image_is_the_source_row_and_settings_must_match(manager):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with manager.lend("tiny") as pipe:
        inversion = invert(pipe, image, "a red circle", steps=5, inner_steps=2)
        assert len(inversion.null_embeddings) == 5 and inversion.key == inversion_key(image, "a red circle", 5, 7.5)
        result = run_p2p(pipe, P2PParams("a red circle", "a red circle", steps=5), inversion=inversion)
        # the same walk (up to float rounding between the inversion's fp32 steps and the scheduler's)
        diff = np.abs(np.asarray(result.source, dtype=int) - np.asarray(inversion.reconstruction, dtype=int))
        assert diff.max() <= 2
        with pytest.raises(ValueError, match="invert it again"):
            run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=6), inversion=inversion)
        with pytest.raises(Cancelled):
            invert(pipe, image, "a red circle", steps=5, should_stop=lambda: True)
        with pytest.raises(ValueError, match="source prompt"):
            invert(pipe, image, " ")


def test_the_edit_loop_makes_no_host_transfer_of_its_own(manager, monkeypatch):
    """No `.cpu()`, `.item()`, `.tolist()` or truth test of a tensor in the controller's attention calls or after
    each step (each would wait for the GPU); the maps come to the host in one copy after the loop."""
    import sys

    from studio import p2p

    calls = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == p2p.__file__:
                calls.append((name, sys._getframe(1).f_code.co_name))
            return real(self, *args, **kwargs)

        return wrapper

    for name in ("cpu", "item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    with manager.lend("tiny") as pipe:
        run_p2p(pipe, P2PParams(**{**FAST, "blend_words": ["circle"], "weights": {"blue": 2.0}}))
    inside = [call for call in calls if call[1] in ("cross", "_record", "self_rows", "end_step", "add", "__call__")]
    assert inside == [], inside
    assert [c for c in calls if c[1] == "finish"] == [("cpu", "finish")], "one copy of every map, after the loop"
