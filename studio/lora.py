"""LoRA adapters on the shared model: the library folder, the kohya/A1111 export, and applying LoRAs to a pipeline.

LoRA (Hu et al., ICLR 2022) learns a low-rank update ΔW = (α/r)·B·A beside a frozen linear layer W. Adapters live
on the shared UNet and text encoder as peft layers; the rule every lender follows is that **outside the model
manager's lock every adapter is disabled**, so a tab that asks for no LoRA gets the base model exactly. A library
LoRA is a folder:

    outputs/loras/<name>/pytorch_lora_weights.safetensors   diffusers format (what `load_lora_weights` reads)
                         <name>_kohya.safetensors           kohya/A1111 keys (what ComfyUI and A1111 read)
                         metadata.json                      base model, prompts, settings, steps

The saved B matrices carry α/r, so both files load at scale 1 with no extra metadata.
"""

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import recurse_remove_peft_layers
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from studio.params import Params, ranged

WEIGHTS = "pytorch_lora_weights.safetensors"
METADATA = "metadata.json"
KOHYA_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te_"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The layers a trained LoRA adapts (the trainer's targets, also Imagic's). "attention": every linear layer of the
# attention blocks, as kohya's LoRA trains them (Q, K, V and output of self- and cross-attention, the 1x1 projections
# in and out, the feed-forward); "kv": cross-attention K/V only (Custom Diffusion). On the Shapes model the wider set
# learns a new shape where Q/K/V/out alone does not.
TARGETS = {"attention": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
           "kv": r".*attn2\.(to_k|to_v)"}


@dataclass
class LoraUse(Params):
    """A LoRA applied to one job: a library folder or .safetensors file, and its scale (diffusers' adapter weight)."""

    source: str | Path
    scale: float = ranged(1.0, 0, 1.5, 0.05, "0 is exactly the base model.")


def tuner_layers(*models: torch.nn.Module | None) -> list[BaseTunerLayer]:
    return [m for model in models if model is not None for m in model.modules() if isinstance(m, BaseTunerLayer)]


def activate(layers: Sequence[BaseTunerLayer], names: list[str]) -> None:
    """Make exactly `names` the active adapters of every layer that has them (others keep the base layer only)."""
    for layer in layers:
        present = [n for n in names if n in layer.lora_A]  # type: ignore[attr-defined]
        layer.set_adapter(present)
        layer.enable_adapters(bool(present))


def deactivate(layers: Sequence[BaseTunerLayer]) -> None:
    """Back to the base model: what other tabs must see when nobody holds the lock."""
    for layer in layers:
        layer.enable_adapters(False)


def remove_adapter(model: torch.nn.Module | None, name: str) -> None:
    """Delete one adapter; when none is left, take the peft wrappers out too, so the module is as it was loaded."""
    if model is None:
        return
    layers = tuner_layers(model)
    for layer in layers:
        layer.delete_adapter(name)
    getattr(model, "peft_config", {}).pop(name, None)
    if any(layer.lora_A for layer in layers):  # type: ignore[attr-defined]
        deactivate(layers)
        return
    if layers:
        recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME.match(name):
        raise ValueError(f"LoRA name {name!r}: use letters, digits, '-', '_' or '.' (at most 64), e.g. 'sks-cross'.")
    return name


# 1. The library folder
def save_lora(folder: Path, unet_layers: dict[str, torch.Tensor], text_encoder_layers: dict[str, torch.Tensor],
              scale: float, metadata: dict) -> Path:
    """Write both formats and the metadata. `*_layers` are peft state dicts (lora_A/lora_B, no adapter name);
    `scale` is α/r, folded into B here."""
    def fold(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v * scale if ".lora_B." in k else v).float().contiguous().cpu() for k, v in state.items()}

    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=fold(unet_layers),
                                              text_encoder_lora_layers=fold(text_encoder_layers) or None,
                                              weight_name=WEIGHTS, safe_serialization=True)
    export_kohya(folder / WEIGHTS, folder / f"{folder.name}_kohya.safetensors", metadata)
    (folder / METADATA).write_text(json.dumps(metadata, indent=2, default=str))
    return folder


def to_kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers LoRA keys → kohya-ss/A1111 keys.

    `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight` becomes
    `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight` (B: `lora_up`), plus one
    `.alpha` per module. Our B already carries α/r, so alpha = rank (kohya scales by alpha / rank).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in KOHYA_PREFIXES if key.startswith(p)), None)
        if prefix is None or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"Not a diffusers LoRA key: {key}")
        module, kind = key[len(prefix):].rsplit(".", 2)[:2]
        if prefix == "text_encoder." and not module.startswith("text_model."):
            module = "text_model." + module  # transformers 5 dropped CLIPTextModel's wrapper; A1111 keys keep it
        stem = KOHYA_PREFIXES[prefix] + module.replace(".", "_")
        out[f"{stem}.{'lora_down' if kind == 'lora_A' else 'lora_up'}.weight"] = value
        if kind == "lora_A":
            out[f"{stem}.alpha"] = torch.tensor(float(value.shape[0]))
    return out


def export_kohya(weights: Path, target: Path, metadata: dict) -> Path:
    """The kohya-format file, with the `ss_*` metadata that A1111 and civitai show."""
    state = load_file(weights)
    rank = next(v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight"))
    info = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
            "ss_base_model_version": "sd_v1", "ss_output_name": target.stem,
            "ss_training_comment": f"Diffusion Studio; base {metadata.get('base_model', '?')}; "
                                   f"prompt {metadata.get('instance_prompt', '?')!r}"}
    save_file(to_kohya(state), target, metadata=info)
    return target


def library(root: Path) -> list[str]:
    """Names of the finished LoRAs under `root` (folders with weights and metadata), newest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if (p / WEIGHTS).is_file() and (p / METADATA).is_file()]
    return [p.name for p in sorted(done, key=lambda p: -(p / WEIGHTS).stat().st_mtime)]


def weights_file(source: str | Path) -> Path:
    """A library folder or a .safetensors file → the file to load."""
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file() or path.suffix != ".safetensors":
        raise ValueError(f"No LoRA at {source}: expected a LoRA library folder or a .safetensors file.")
    return path


# 2. Applying library LoRAs to a lent pipeline
@contextmanager
def applied(pipe: StableDiffusionPipeline, loras: Sequence[tuple[str | Path, float]]) -> Iterator[None]:
    """Load `loras` (folder or file, scale) into `pipe`'s shared UNet/text encoder for one job; remove them after.

    Scale 0 leaves the output exactly the base model's: the LoRA branch adds (B·A·x)·0. Nested in another job's
    (DDIB's target domain), these LoRAs replace the job's for the inner block, and the job's come back after it.
    """
    uses = [LoraUse(source, float(scale)) for source, scale in loras]
    layers = tuner_layers(pipe.unet, pipe.text_encoder)
    before = [(layer, list(layer.active_adapters), not layer.disable_adapters) for layer in layers]
    in_use = {n for layer in layers for n in layer.lora_A}  # type: ignore[attr-defined]
    free = (f"lend-{k}" for k in range(len(in_use) + len(uses) + 1) if f"lend-{k}" not in in_use)
    names: list[str] = []
    try:
        for use in uses:
            name = next(free)
            names.append(name)  # before loading: a file that fails half-way is still cleaned up
            # load_lora_weights reads kohya files as well as diffusers ones.
            pipe.load_lora_weights(str(weights_file(use.source)), adapter_name=name)
        if names:
            activate(tuner_layers(pipe.unet, pipe.text_encoder), names)
            pipe.set_adapters(names, [use.scale for use in uses])
        yield
    finally:
        for name in names:
            for model in (pipe.unet, pipe.text_encoder):
                remove_adapter(model, name)
        for layer, active, enabled in before:
            layer.set_adapter(active)
            layer.enable_adapters(enabled)

