"""Prompt-to-Prompt cost: one edit (source + edit in one batch, with attention control) vs one plain image.

    python -m bench.p2p                      # CUDA: SD1.5 architecture, random weights, 50 DDIM steps, 512x512
    python -m bench.p2p --model shapes --device cpu
    python -m bench.p2p --model tiny         # any device: checks the script itself

Prints seconds for a plain image (diffusers' own attention), for a replace edit and for a replace edit with
LocalBlend, and their ratio to the plain image (the goal on a GPU: ≤ 2.1x; an edit draws two images). The last row
is the same edit with every self-attention's probabilities materialised, the way the official notebooks and
diffusers' community pipeline attend (about 2.7x there): the studio only materialises cross-attention.
"""

from dataclasses import replace
from unittest import mock

import torch

from bench.common import measure, open_manager, parser
from bench.sd15 import save_random_sd15
from studio.device import describe
from studio.generate import GenerateParams, run_generate
from studio import p2p
from studio.p2p import P2PAttnProcessor, P2PParams, run_p2p

SOURCE, TARGET = "a photograph of a cat riding a bicycle", "a photograph of a dog riding a bicycle"


class MaterialisedSelfAttention(P2PAttnProcessor):
    """Classic attention for self-attention too: softmax(QKᵀ/√d) as a (batch, heads, N, N) tensor, then times V."""

    def self_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        scale = query.shape[-1] ** -0.5
        return (query @ key.transpose(-1, -2) * scale).softmax(-1) @ value


def classic_edit(pipe, params: P2PParams):
    with mock.patch.object(p2p, "P2PAttnProcessor", MaterialisedSelfAttention):
        return run_p2p(pipe, params)


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's own)")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    folder = manager.resolve(args.model).location if args.model else str(save_random_sd15(args.workdir / "sd15-random"))
    size = args.size or manager.resolve(folder).size
    edit = P2PParams(SOURCE, TARGET, steps=args.steps, width=size, height=size)
    runs = {
        "plain image": lambda pipe: run_generate(pipe, GenerateParams(SOURCE, steps=args.steps, width=size,
                                                                      height=size, seed=0, scheduler="DDIM")),
        "replace edit": lambda pipe: run_p2p(pipe, edit),
        "replace + LocalBlend": lambda pipe: run_p2p(pipe, replace(edit, blend_words=["cat", "dog"])),
        "replace edit, classic attention": lambda pipe: classic_edit(pipe, edit),
    }
    rows = []
    with manager.lend(folder) as pipe:
        for name, run in runs.items():
            seconds, peak = measure(lambda: run(pipe), device, args.repeats)
            rows.append({"path": name, "seconds": seconds, "peak_gib": peak})
    print(f"\n{args.model or 'SD1.5 architecture, random weights'} · {size}x{size} · {args.steps} DDIM steps · CFG 7.5"
          f" · {describe(device)} · torch {torch.__version__}")
    print("| run | s | × plain image | peak memory (GiB) |\n|---|---|---|---|")
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
        print(f"| {row['path']} | {row['seconds']:.3f} | {row['ratio']:.2f} | {row['peak_gib']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
