"""Prompt-to-Prompt cost: one edit (source + edit in one batch, with attention control) vs one plain image.

    python -m bench.p2p                      # CUDA: SD1.5 architecture, random weights, 50 DDIM steps, 512x512
    python -m bench.p2p --model shapes --device cpu
    python -m bench.p2p --model tiny         # any device: checks the script itself

Times a plain image (diffusers' own attention), a replace edit and a replace edit with LocalBlend, interleaved on
one lent pipeline (bench/common.py), and gives each one's ratio to the plain image (the goal on a GPU: ≤ 2.1x; an
edit draws two images). The last row is the same edit with every self-attention's probabilities materialised, the
way the official notebooks and diffusers' community pipeline attend: the studio only materialises cross-attention.
"""

from dataclasses import replace
from unittest import mock

import torch

from bench.common import interleave, open_manager, parser, report
from bench.sd15 import save_random_sd15
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
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's own)")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    folder = manager.resolve(args.model).location if args.model else str(save_random_sd15(args.workdir / "sd15-random"))
    size = args.size or manager.resolve(folder).size
    edit = P2PParams(SOURCE, TARGET, steps=args.steps, width=size, height=size)
    with manager.lend(folder) as pipe:
        runs = {
            "plain image": lambda: run_generate(pipe, GenerateParams(SOURCE, steps=args.steps, width=size,
                                                                     height=size, seed=0, scheduler="DDIM")),
            "replace edit": lambda: run_p2p(pipe, edit),
            "replace + LocalBlend": lambda: run_p2p(pipe, replace(edit, blend_words=["cat", "dog"])),
            "replace edit, classic attention": lambda: classic_edit(pipe, edit),
        }
        timings = interleave(runs, device, rounds=args.rounds, warmup=args.warmup)
    return report(f"Prompt-to-Prompt · {args.model or 'SD1.5 architecture, random weights'} · {size}x{size} · "
                  f"{args.steps} DDIM steps · CFG 7.5", device, timings, args)


if __name__ == "__main__":
    main()
