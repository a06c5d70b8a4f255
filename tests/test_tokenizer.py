"""The vendored CLIP vocabulary gives Stable Diffusion's real token ids, offline."""

from studio.tiny import load_tokenizer


def test_real_clip_token_ids():
    tok = load_tokenizer()
    # The ids OpenAI's CLIP (and so SD 1.x's text encoder) assigns to this sentence.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77


def test_padding_and_truncation_like_stable_diffusion():
    tok = load_tokenizer()
    ids = tok("a red circle " * 50, padding="max_length", truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {49407}
