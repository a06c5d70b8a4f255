"""Textual Inversion (Gal et al., ICLR 2023): a new word for a concept, learned as one token embedding v* while the
whole model stays frozen.

Sec. 3 of the paper: a placeholder S* is added to the tokenizer, its embedding initialised from a coarse word that
describes the concept ("star" for a cross), and only that row is optimised with the ordinary denoising loss (Eq. 2)
on prompts that name S*. Custom Diffusion (Kumari et al. 2023) uses the same device for its modifier tokens V*.

The shared tokenizer and text encoder are never changed. The job gets a copy of the tokenizer that knows the new
tokens (`studio.lora.job_tokenizer`), and while a step or a validation runs, two hooks on the shared embedding table
put the trainable vectors where the new ids are (`NewTokens.applied`): the table keeps its rows and its size, and the
gradient reaches only the vectors. A finished token is saved in both formats people use: diffusers'
`learned_embeds.safetensors` ({token: vectors}, what `load_textual_inversion` reads; `<token>.safetensors` each
when a job has several, as diffusers' Custom Diffusion script writes them) and A1111's layout
({"emb_params": vectors}) in the owner's embedding library, where every tab picks it up like an imported one.
"""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from studio.lora import check_token, job_tokenizer

DIFFUSERS_FILE = "learned_embeds.safetensors"


def initial_vector(pipe: Any, word: str) -> torch.Tensor:
    """The embedding of `word` (the mean of its pieces if the tokenizer splits it), where a new token starts."""
    if not word.strip():
        raise ValueError("Give an initializer word that describes the concept coarsely, e.g. 'star'.")
    ids = pipe.tokenizer(word.strip(), add_special_tokens=False).input_ids
    table = pipe.text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, device=table.device)].detach().float().mean(0)


class NewTokens:
    """Trainable embeddings for new tokens (fp32, on the text encoder's device), read through a job tokenizer."""

    def __init__(self, pipe: Any, names: list[str], initializers: list[str],
                 tokenizers: dict[tuple[str, ...], Any] | None = None):
        self.names = [check_token(name, pipe.tokenizer, 1) for name in names]
        self.tokenizer = job_tokenizer(pipe.tokenizer, self.names, {} if tokenizers is None else tokenizers)
        device = pipe.text_encoder.device
        self.ids = torch.tensor(self.tokenizer.convert_tokens_to_ids(self.names), device=device)
        self.vectors = torch.nn.Parameter(torch.stack([initial_vector(pipe, w) for w in initializers]))

    @contextmanager
    def applied(self, pipe: Any) -> Iterator[None]:
        """Prompts on `pipe` read the new tokens' vectors, for this block only (hold the model's lock)."""
        table = pipe.text_encoder.get_input_embeddings()
        hits: list[torch.Tensor] = []

        def before(module: torch.nn.Module, args: tuple) -> tuple:
            ids = args[0]
            hits.append(ids[..., None] == self.ids)  # (..., n): which new token sits where
            return (torch.where(hits[-1].any(-1), 0, ids), *args[1:])  # any real row; replaced below

        def after(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            hit = hits.pop().to(out.dtype)
            return out * (1 - hit.sum(-1, keepdim=True)) + hit @ self.vectors.to(out.dtype)

        saved = pipe.tokenizer
        handles = [table.register_forward_pre_hook(before), table.register_forward_hook(after)]
        pipe.tokenizer = self.tokenizer
        try:
            yield
        finally:
            pipe.tokenizer = saved
            for handle in handles:
                handle.remove()

    def save(self, folder: Path, library: Path, record: dict) -> list[Path]:
        """diffusers' file in the job folder, and each token in the A1111 layout in the embedding `library`."""
        vectors = self.vectors.detach().float().cpu()
        for i, name in enumerate(self.names):  # diffusers reads one token a file
            save_file({name: vectors[i : i + 1].contiguous()},
                      folder / (DIFFUSERS_FILE if len(self.names) == 1 else f"{name}.safetensors"))
        library.mkdir(parents=True, exist_ok=True)
        made = []
        for i, name in enumerate(self.names):
            target = library / f"{name}.safetensors"
            save_file({"emb_params": vectors[i : i + 1].contiguous()}, target, metadata={"name": name})
            target.with_suffix(".json").write_text(json.dumps({
                "source": "trained", "job": folder.name, "token": name, "vectors": 1,
                "trained": time.strftime("%Y-%m-%d %H:%M:%S"), **record}, indent=2))
            made.append(target)
        return made
