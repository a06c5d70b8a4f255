"""Prompts as AUTOMATIC1111's webui reads them: attention weights, BREAK, prompts longer than 77 tokens.

Written here rather than taken from a library: compel (2.5.1, the maintained one; it installs beside diffusers 0.42
and transformers 5) has a syntax of its own (`word+`, `(word)1.2`, `.blend()`), not A1111's `(word:1.2)` and
`[word]`, and weights the other way (it moves an embedding away from the empty prompt's and masks down-weighted
words), so what an A1111 user types would neither parse nor mean the same. A1111's rules fit in this file.

The rules, as A1111 documents them (wiki "Features", modules/prompt_parser.py and sd_hijack_clip.py):
- `(text)` multiplies the attention to text by 1.1, `((text))` by 1.21, `[text]` divides it by 1.1, `(text:1.5)`
  multiplies it by 1.5; groups nest and multiply. `\\(` `\\)` `\\[` `\\]` `\\\\` are the characters themselves. A
  bracket left open weights the rest of the prompt; a closing one with nothing to close is text.
- `BREAK` (in capitals, a word of its own) ends the current chunk.
- Long prompts: the tokens are cut into chunks of 75; each becomes BOS + its tokens + EOS + padding (77 positions),
  is encoded on its own, and the chunks' embeddings are concatenated along the sequence: the UNet's cross-attention
  takes any number of keys. Prompts encoded together, and a prompt and its negative, get the same number of chunks,
  filled up with empty ones (the empty prompt's embedding).
- Weights ("Original" emphasis): each token's embedding is multiplied by its weight, then the chunk is rescaled so
  that the mean of its embeddings is the unweighted mean again. A1111 takes that mean over the batch; here it is
  taken per prompt, so a prompt's conditioning does not depend on what it is batched with.
- `<lora:name:weight>` tags are refused with a message: LoRAs are picked in the studio's LoRA bar, for every tab, and
  a tag taken out silently would look applied when it is not.

Not done: prompt editing `[a:b:step]` and alternation `[a|b]` (they change the prompt during sampling; here the
brackets down-weight the text), and A1111's comma backtrack (it ends a chunk at the last comma of its last 20
tokens): chunks are cut at exactly 75 tokens.

A prompt without syntax gives the same token ids as `pipe.encode_prompt`, so up to 75 tokens the same embeddings.
"""

import re
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline

ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's multipliers for ( ) and [ ]
BREAK = "BREAK"
SYNTAX = ("(word:1.3) or (word) weighs a word more, [word] less; \\( \\) are brackets. Longer than 75 tokens is "
          "fine (encoded in chunks; BREAK starts one).")

_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")  # the ":1.5)" that closes a weighted group
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?[^>]*>")  # <lora:name>, <lora:name:w>, <lora:name:w_te:w_unet>
_ESCAPED = "()[]\\"

Token = tuple[int, float] | None  # (token id, weight), or None where BREAK ends a chunk
Chunk = tuple[list[int], list[float]]  # 77 ids (BOS, tokens, EOS, padding) and their weights


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """A1111's attention syntax → (text, weight) pairs, neighbours of equal weight merged, a BREAK as (BREAK, -1) as
    A1111 writes it. `"a (red:1.5) [car]"` → `[("a ", 1), ("red", 1.5), (" ", 1), ("car", 1/1.1)]`."""
    fragments: list[list] = []  # [text, weight]; a BREAK's weight is None, so no bracket scales it
    rounds: list[int] = []  # for each open ( and [, the index of the first fragment inside it
    squares: list[int] = []
    buffer: list[str] = []

    def flush() -> None:
        for i, part in enumerate(_BREAK.split("".join(buffer))):
            if i:
                fragments.append([BREAK, None])
            if part:
                fragments.append([part, 1.0])
        buffer.clear()

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            if fragment[1] is not None:
                fragment[1] *= factor

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPED:
            buffer.append(text[i + 1])
            i += 2
            continue
        weight = _WEIGHT.match(text, i) if c == ":" and rounds else None
        if not (c in "([" or weight or (c == ")" and rounds) or (c == "]" and squares)):
            buffer.append(c)  # text, and brackets with nothing to close
            i += 1
            continue
        flush()
        if c == "(":
            rounds.append(len(fragments))
        elif c == "[":
            squares.append(len(fragments))
        elif c == "]":
            scale(squares.pop(), SQUARE)
        else:
            scale(rounds.pop(), float(weight[1]) if weight else ROUND)
        i = weight.end() if weight else i + 1
    flush()
    for start in rounds:  # unclosed groups run to the end
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for part, weight in fragments:
        if weight is not None and merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + part, weight)
        else:
            merged.append((part, -1.0 if weight is None else weight))
    return merged or [("", 1.0)]


def plain_text(prompt: str) -> str:
    """The prompt's words without the syntax: "a (red:1.5) car BREAK sky" → "a red car sky"."""
    return "".join(" " if text == BREAK else text for text, _ in parse_prompt_attention(prompt))


def escape(text: str) -> str:
    """Text that the parser reads back as itself: brackets and backslashes escaped."""
    return re.sub(r"([\\()\[\]])", r"\\\1", text)


def prompt_tokens(tokenizer, prompt: str) -> list[Token]:
    """The prompt's token ids with their weights, in order, and None for each BREAK. Each
    fragment is tokenized on its own, as A1111 does, so weights never fall inside a token."""
    if tag := LORA_TAG.search(prompt):
        raise ValueError(f"{tag[0]}: LoRA tags are not read from prompts here. Pick the LoRA and its scale in "
                         "\"LoRAs and embeddings\" at the top (it applies in every tab), and take the tag out of "
                         "the prompt.")
    parts = parse_prompt_attention(prompt)
    ids = tokenizer([text for text, _ in parts], add_special_tokens=False, verbose=False).input_ids
    tokens: list[Token] = []
    for (text, weight), piece in zip(parts, ids):
        tokens += [None] if text == BREAK else [(token, weight) for token in piece]
    return tokens


def prompt_chunks(tokenizer, prompt: str, *, chunks: bool = True) -> list[Chunk]:
    """The prompt as chunks of the text encoder's length (77 for CLIP): 75 tokens each, cut at BREAK too. With
    `chunks=False`, one chunk: BREAK is ignored and tokens past 75 are dropped, as `pipe.encode_prompt` drops them."""
    length = tokenizer.model_max_length
    size = length - 2
    tokens = prompt_tokens(tokenizer, prompt)
    if not chunks:
        tokens = [t for t in tokens if t is not None][:size]
    groups: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for token in tokens:
        if token is None or len(current) == size:
            groups.append(current)
            current = []
        if token is not None:
            current.append(token)
    if current or not groups:  # a BREAK at the very end adds no empty chunk
        groups.append(current)
    pad = [tokenizer.pad_token_id] * length
    return [([tokenizer.bos_token_id, *(t for t, _ in g), tokenizer.eos_token_id, *pad][:length],
             [1.0, *(w for _, w in g), *[1.0] * (length - 1 - len(g))]) for g in groups]


def encode_text(pipe: DiffusionPipeline, prompts: Sequence[str], *, chunks: bool = True) -> torch.Tensor:
    """Text-encoder embeddings of `prompts` with A1111's weights and chunks: (len(prompts), 77·k, d) on the UNet's
    device and dtype, k the most chunks any prompt needs (the others filled up with empty chunks). `chunks=False`
    for techniques that take exactly one 77-token chunk."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    texts = list(prompts)
    if hasattr(pipe, "maybe_convert_prompt"):  # multi-vector textual-inversion tokens, as encode_prompt expands them
        texts = pipe.maybe_convert_prompt(texts, tokenizer)
    rows = [prompt_chunks(tokenizer, text, chunks=chunks) for text in texts]
    k = max(len(row) for row in rows)
    empty = prompt_chunks(tokenizer, "")[0]
    rows = [row + [empty] * (k - len(row)) for row in rows]
    ids = torch.tensor([ids for row in rows for ids, _ in row], device=encoder.device)
    weights = torch.tensor([w for row in rows for _, w in row], device=encoder.device)
    z = encoder(ids)[0]
    if (weights != 1).any():
        mean = z.mean((1, 2), keepdim=True)
        z = z * weights[..., None].to(z.dtype)
        # An unweighted chunk's ratio is exactly 1. Embeddings with no mean to restore (a final LayerNorm without
        # bias: the tiny test model's) would give 0/0, so they keep the plain weighting.
        meaningful = mean.abs() > 1e-4 * z.abs().mean((1, 2), keepdim=True)
        z = z * torch.where(meaningful, mean / z.mean((1, 2), keepdim=True), 1)
    return z.reshape(len(texts), k * ids.shape[1], -1).to(pipe.unet.device, pipe.unet.dtype)


def match_chunks(pipe: DiffusionPipeline, *contexts: torch.Tensor) -> list[torch.Tensor]:
    """Embeddings from separate `encode_text` calls (a prompt and its negative) brought to the same length by
    appending the empty prompt's chunk, so they stack into one batch."""
    longest = max(c.shape[1] for c in contexts)
    if all(c.shape[1] == longest for c in contexts):
        return list(contexts)
    empty = encode_text(pipe, [""])
    return [torch.cat([c, empty.expand(len(c), -1, -1).repeat(1, (longest - c.shape[1]) // empty.shape[1], 1)], 1)
            for c in contexts]
