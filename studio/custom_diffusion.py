"""Custom Diffusion (Kumari et al., CVPR 2023): several new concepts at once, by fine-tuning only the cross-attention
key and value projections and a modifier token V* per concept.

- Sec. 3.1: the weights that change most in fine-tuning are the cross-attention K and V, which alone read the text;
  updating W_k and W_v (in full, not low-rank) and nothing else learns a concept in 5% of the UNet's size.
- A modifier token V* per concept, initialised from a rare word and trained with the weights ("a V1* dog").
- Sec. 3.2, several concepts: the concepts' datasets are trained jointly, each with its own V* and, against
  overfitting, its own regularisation images of the class (the DreamBooth-style prior); one prompt can then compose
  them ("a V1* dog next to a V2* cat").

Here the full-rank deltas ΔW_k, ΔW_v live on the shared UNet as a peft LoRA whose A is the identity, frozen, and
whose B starts at zero and is ΔW itself (rank = the text width, α = rank: scale 1). Adam on B is then Adam on ΔW, and
the trainer's adapter machinery (switched on for its steps only, checkpoints, validation, the library's LoRA file that
every tab applies) works unchanged. The finished job is also written in diffusers' Custom Diffusion format
(`pytorch_custom_diffusion_weights.safetensors`: each attn2 processor's `to_k_custom_diffusion`/`to_v_custom_diffusion`
weight, W + ΔW), with one `<token>.safetensors` per modifier token.
"""

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from studio.lora import tuner_layers

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"
KV = r".*attn2\.(to_k|to_v)"


def add_kv_deltas(unet: Any, name: str) -> None:
    """Full-rank trainable ΔW on every cross-attention K and V projection, as adapter `name` (zero at the start)."""
    width = unet.config.cross_attention_dim
    unet.add_adapter(LoraConfig(r=width, lora_alpha=width, target_modules=KV), adapter_name=name)
    for layer in tuner_layers(unet):
        if name in layer.lora_A:
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            a.data = torch.eye(width, dtype=a.dtype, device=a.device)
            a.requires_grad_(False)
            b.data.zero_()


def save_custom_diffusion(unet: Any, name: str, folder: Path) -> Path:
    """diffusers' Custom Diffusion file of adapter `name`: the new K/V weights of every cross-attention layer."""
    state = {}
    for path, module in unet.named_modules():
        if path.endswith(("attn2.to_k", "attn2.to_v")) and name in getattr(module, "lora_A", {}):
            weight = module.base_layer.weight.float() + module.get_delta_weight(name).float()
            state[f"{path[:-5]}.processor.{path[-4:]}_custom_diffusion.weight"] = weight.detach().cpu().contiguous()
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
    return folder / WEIGHTS


def load_custom_diffusion(pipe: Any, folder: Path) -> None:
    """Load a studio Custom Diffusion folder into a plain diffusers pipeline (its processors and modifier tokens).

    diffusers 0.42's `unet.load_attn_procs` asks for a processor per attention layer, but its own safetensors file
    holds only the cross-attention ones (safetensors cannot store the others' empty entries), and it sets them only
    when given the pipeline: the empty entries are added here and the pipeline passed."""
    state: dict[str, Any] = dict(load_file(folder / WEIGHTS))
    for key in pipe.unet.attn_processors:
        if f"{key}.to_k_custom_diffusion.weight" not in state:
            state[key] = {}
    pipe.unet.load_attn_procs(state, _pipeline=pipe)
    for token_file in sorted(folder.glob("*.safetensors")):
        if token_file.name != WEIGHTS and token_file.stem in load_file(token_file):
            pipe.load_textual_inversion(str(token_file))
