"""Derive the CLIP tokenizer files (vocab.json, merges.txt) from open_clip's BPE table.

The table `bpe_simple_vocab_16e6.txt.gz` ships in the MIT-licensed `open-clip-torch` wheel. CLIP's vocabulary is
256 byte symbols, the same 256 with the end-of-word mark `</w>`, one token per merge (the first 48,894 merges), and
the two special tokens: 49,408 entries, the ids Stable Diffusion's text encoder was trained with. Run once:

    pip download --no-deps open-clip-torch && unzip -p open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz > bpe.gz
    python studio/assets/clip_tokenizer/derive.py bpe.gz
"""

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges so the vocabulary is 49,408 tokens


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte value (GPT-2/CLIP's reversible byte-to-unicode table), in id order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    spare = 256
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(spare)
            spare += 1
    return [symbols[b] for b in [*printable, *(b for b in range(256) if b not in printable)]]


def derive(bpe_gz: Path, out: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    derive(Path(sys.argv[1]), Path(__file__).parent)
