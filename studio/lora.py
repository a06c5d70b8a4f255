"""LoRA adapters on the shared model: the library folder, the kohya/A1111 export, and applying LoRAs to a pipeline.

LoRA (Hu et al., ICLR 2022) learns a low-rank update ΔW = (α/r)·B·A beside a frozen linear layer W. Adapters live
on the shared UNet and text encoder as peft layers; the rule every lender follows is that **outside the model
manager's lock every adapter is disabled**, so a tab that asks for no LoRA gets the base model exactly. A library
LoRA is a folder:

    outputs/loras/<name>/pytorch_lora_weights.safetensors   diffusers format (what `load_lora_weights` reads)
                         <name>_kohya.safetensors           kohya/A1111 keys (what ComfyUI and A1111 read)
                         metadata.json                      base model, prompts, settings, steps

The saved B matrices carry α/r, so both files load at scale 1 with no extra metadata.

Files made elsewhere come in too (`inspect_file`, `import_file`): kohya/A1111, diffusers and peft LoRAs, whose base
model is read from their keys and shapes and checked against the studio's model before they are added, and
textual-inversion embeddings (Gal et al., ICLR 2023), kept in a library of their own and loaded for each job
(`embedded`) so that a prompt naming one uses its vectors:

    outputs/embeddings/<token>.safetensors   A1111's layout ({"emb_params": vectors}), what A1111 and diffusers read
                       <token>.json          where it came from, its base model, its number of vectors
"""

import json
import pickle
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import (convert_state_dict_to_diffusers, convert_state_dict_to_peft,
                             convert_unet_state_dict_to_peft, recurse_remove_peft_layers)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from studio.params import Params, ranged

WEIGHTS = "pytorch_lora_weights.safetensors"
METADATA = "metadata.json"
KOHYA_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te_"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The layers a trained LoRA adapts (the trainer's targets, also Imagic's). "attention": every linear layer of the
# attention blocks, as kohya's LoRA trains them (Q, K, V and output of self- and cross-attention, the 1x1 projections
# in and out, the feed-forward); "kv": cross-attention K/V only (Custom Diffusion); "cross": all of cross-attention
# (ESD-x, the concept eraser). On the Shapes model the wider set learns a new shape where Q/K/V/out alone does not.
TARGETS = {"attention": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
           "kv": r".*attn2\.(to_k|to_v)", "cross": r".*attn2\.(to_q|to_k|to_v|to_out\.0)"}


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


def check_name(name: str, what: str = "LoRA") -> str:
    name = name.strip()
    if not NAME.match(name):
        raise ValueError(f"{what} name {name!r}: use letters, digits, '-', '_' or '.' (at most 64), e.g. 'sks-cross'.")
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



# 3. Files made elsewhere: what they hold, whether they fit the studio's model, the owner's library
PICKLES = (".pt", ".pth", ".ckpt", ".bin")
KOHYA = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
DOWN = re.compile(r"(lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$")  # A: (rank, in features, ...)
ARCHITECTURES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # by the width of the text features
KOHYA_BASES = {"sd_v1": 768, "sd_v2": 1024, "sdxl": 2048}  # ss_base_model_version, where shapes do not tell
TRIGGERS = 8  # most frequent training tags shown


def architecture(width: int | None) -> str:
    return "an unknown model" if width is None else ARCHITECTURES.get(width, f"a {width}-wide model")


@dataclass
class AdapterInfo:
    """What a LoRA or embedding file holds, read from its keys, shapes and metadata.

    `width` is the text features it was made for: the UNet's cross-attention input (a LoRA's attn2 K/V) or the token
    embedding's (an embedding); `text_width` is a LoRA's text-encoder width. `vectors` is an embedding's number of
    tokens. `state` holds the tensors as `load_lora_weights` reads them (diffusers' prefixes for peft files)."""

    kind: str  # "lora" | "embedding"
    format: str  # "kohya" | "diffusers" | "peft" | "a1111-embedding" | "diffusers-embedding"
    base: str  # "SD 1.x", "SD 2.x", "SDXL", "a 32-wide model", "an unknown model"
    file: str
    width: int | None = None
    text_width: int | None = None
    ranks: list[int] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    vectors: int = 0
    notes: list[str] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def what(self) -> str:
        return "LoRA" if self.kind == "lora" else "embedding"


def read_weights(path: Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A file's tensors and its metadata. Pickles (.pt/.ckpt/.bin) only with `allow_pickle`: unpickling can run code,
    so torch's weights-only loader is tried first and the full one only if the file needs it."""
    name = path.name
    if path.suffix.lower() in PICKLES:
        if not allow_pickle:
            raise ValueError(f"{name} is a pickle file ({path.suffix}): unpickling can run code, so the studio reads "
                             "only .safetensors. Convert it, or start the studio with --allow-pickle.")
        try:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                loaded = torch.load(path, map_location="cpu", weights_only=False)  # the operator allowed it
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged file
            raise ValueError(f"{name} could not be read as a PyTorch file ({error}). Is the download complete?") \
                from error
        if not isinstance(loaded, dict):
            raise ValueError(f"{name} holds a {type(loaded).__name__}, not a LoRA or an embedding.")
        loaded = loaded.get("state_dict", loaded)
        if "string_to_param" in loaded:  # A1111's .pt embedding: {"string_to_param": {"*": vectors}, "name": ...}
            return {"emb_params": loaded["string_to_param"]["*"].detach()}, {"name": str(loaded.get("name", ""))}
        return {k: v.detach() for k, v in loaded.items() if isinstance(v, torch.Tensor)}, {}
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{name}: expected a .safetensors file (or .pt/.ckpt/.bin when the studio allows pickles).")
    try:
        with safe_open(str(path), "pt") as f:
            keys, metadata = list(f.keys()), f.metadata() or {}
            if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
                raise ValueError(f"{name} is a whole model checkpoint, not a LoRA: start the studio with --model "
                                 f"{name} to use it.")
            return {k: f.get_tensor(k) for k in keys}, metadata
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors' errors for a damaged file are of its own type
        raise ValueError(f"{name} could not be read as .safetensors ({error}). Is the download complete?") from error


def inspect_file(path: str | Path, allow_pickle: bool = False) -> AdapterInfo:
    """Which kind and format a LoRA or embedding file is, and for which base model, from its keys and shapes."""
    path = Path(path)
    state, metadata = read_weights(path, allow_pickle)
    if not state:
        raise ValueError(f"{path.name} holds no tensors: it is not a LoRA or an embedding.")
    if any(re.search(r"\.(hada|lokr)_", k) for k in state):
        raise ValueError(f"{path.name} is a LyCORIS LoHa/LoKr file; the studio loads plain LoRAs (kohya's "
                         "networks.lora, diffusers, peft).")
    if (info := _embedding(path, state, metadata)) is None:
        info = _lora(path, state, metadata)
    return info


def _embedding(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> AdapterInfo | None:
    if {"clip_l", "clip_g"} <= set(state):  # SDXL's pair, one per text encoder
        return AdapterInfo("embedding", "a1111-embedding", "SDXL", path.name, 2048, vectors=len(state["clip_l"]))
    if "emb_params" in state:
        vectors, fmt = state["emb_params"], "a1111-embedding"
    elif len(state) == 1 and "lora" not in next(iter(state)) and next(iter(state.values())).ndim <= 2:
        vectors, fmt = next(iter(state.values())), "diffusers-embedding"  # {token: vectors}, as diffusers saves
    else:
        return None
    vectors = vectors.reshape(-1, vectors.shape[-1]).float()
    width = vectors.shape[-1]
    return AdapterInfo("embedding", fmt, architecture(width), path.name, width, vectors=len(vectors),
                       state={"emb_params": vectors.contiguous()}, metadata=metadata)


def _lora(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> AdapterInfo:
    keys = list(state)
    notes: list[str] = []
    if all(k.startswith(KOHYA) for k in keys):
        fmt = "kohya"
    elif all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in keys):
        fmt = "diffusers"
    elif all(".lora_A." in k or ".lora_B." in k for k in keys):
        fmt, state = "peft", _from_peft(path, state, notes)
    else:
        raise ValueError(f"{path.name} is neither a LoRA nor a textual-inversion embedding the studio knows (keys "
                         f"such as {', '.join(keys[:3])}).")
    downs = {k: v for k, v in state.items() if DOWN.search(k)}
    if not downs:
        raise ValueError(f"{path.name} has LoRA keys but no down (A) matrices: the file is incomplete.")
    text = ("lora_te_", "lora_te1_", "text_encoder.")
    cross = {v.shape[1] for k, v in downs.items() if "attn2" in k and re.search(r"to_[kv]", k)}
    text_widths = {v.shape[1] for k, v in downs.items() if k.startswith(text) and "self_attn" in k}
    sdxl = any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys)
    width = 2048 if sdxl else max(cross, default=None)
    if width is None:  # no cross-attention K/V adapted: kohya's metadata, else the text encoder's width
        hint = metadata.get("ss_base_model_version", "")
        width = next((w for prefix, w in KOHYA_BASES.items() if hint.startswith(prefix)),
                     max(text_widths, default=None))
    return AdapterInfo("lora", fmt, architecture(width), path.name, width, max(text_widths, default=None),
                       sorted({v.shape[0] for v in downs.values()}), trigger_words(metadata), notes=notes,
                       state=state, metadata=metadata)


def _from_peft(path: Path, state: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """peft's `save_pretrained` keys (`base_model.model.<module>.lora_A.weight`) → diffusers' (`unet.<module>...`),
    α/r folded into B. peft keeps α in adapter_config.json: read beside a server file, else α = r (scale 1)."""
    config = path.with_name("adapter_config.json")
    settings = json.loads(config.read_text()) if config.is_file() else {}
    if not settings:
        notes.append("No adapter_config.json beside the file: its scale is taken as α = rank.")
    out = {}
    for key, value in state.items():
        module = key.removeprefix("base_model.model.")
        text = module.startswith(("text_model.", "encoder.layers.")) or "self_attn" in module or ".mlp." in module
        if ".lora_B." in key and settings:
            rank = value.shape[1]
            alpha = settings.get("alpha_pattern", {}).get(module.split(".lora_B.")[0], settings.get("lora_alpha", rank))
            value = value * (alpha / rank ** 0.5 if settings.get("use_rslora") else alpha / rank)
        out[("text_encoder." if text else "unet.") + module] = value
    return out


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """The words a kohya LoRA was trained with: modelspec's trigger phrase, else the most frequent of its training
    captions' tags (`ss_tag_frequency`, per dataset folder), else its output name."""
    if phrase := metadata.get("modelspec.trigger_phrase", "").strip():
        return [phrase]
    counts: Counter[str] = Counter()
    try:
        for tags in json.loads(metadata.get("ss_tag_frequency") or "{}").values():
            counts.update({tag.strip(): int(n) for tag, n in tags.items() if tag.strip()})
    except (ValueError, AttributeError, TypeError):
        pass  # a damaged tag table is no reason to refuse the weights; the UI then shows no trigger words
    if counts:
        return [tag for tag, _ in counts.most_common(TRIGGERS)]
    return [metadata["ss_output_name"]] if metadata.get("ss_output_name") else []


def lora_layers(state: dict[str, torch.Tensor], pipe: StableDiffusionPipeline) -> dict[str, dict[str, list]]:
    """component → module → [A shape, B shape], the modules named as diffusers' `load_lora_weights` names them: its
    own conversions (kohya → diffusers → peft), so the check below sees what loading would."""
    converted, _ = StableDiffusionPipeline.lora_state_dict(dict(state))
    out: dict[str, dict[str, list]] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {k.removeprefix(f"{component}."): v for k, v in converted.items() if k.startswith(f"{component}.")}
        if not part:
            continue
        if component == "unet":
            part = part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
            if component == "text_encoder" and not hasattr(pipe.text_encoder, "text_model"):
                part = {k.removeprefix("text_model."): v for k, v in part.items()}  # transformers 5 flattened it
        for key, value in part.items():
            # A key left in another form is one diffusers would not load: its module keeps no shapes, so it is refused.
            module, _, kind = key.rpartition(".lora_")
            shapes = out.setdefault(component, {}).setdefault(module or key, [None, None])
            if kind in ("A.weight", "B.weight"):
                shapes["AB".index(kind[0])] = value.shape
    return out


def check_fits(info: AdapterInfo, pipe: StableDiffusionPipeline, model: str = "the studio's model") -> None:
    """Refuse, with what to do instead, a LoRA or embedding made for another base model: its text width, and for a
    LoRA every layer it adapts (a LoRA for another UNet layout is refused, never half applied)."""
    text = pipe.text_encoder.get_input_embeddings().embedding_dim
    cross = pipe.unet.config.cross_attention_dim
    mine = text if info.kind == "embedding" else cross
    if info.width is not None and info.width != mine or info.base == "SDXL" and mine != 2048:
        raise ValueError(f"This {info.what} was trained for {info.base} ({info.width}-wide text features); "
                         f"{model} is {architecture(mine)} ({mine}). Pick a {info.what} for {architecture(mine)}.")
    if info.kind == "embedding":
        return
    if info.text_width is not None and info.text_width != text:
        raise ValueError(f"This LoRA's text-encoder layers are {info.text_width} wide; {model}'s text encoder is "
                         f"{text}. Pick a LoRA for {architecture(cross)}.")
    try:
        layers = lora_layers(info.state, pipe)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{info.file}: diffusers cannot read its LoRA layers ({error}).") from error
    missing, unread, total = [], [], 0
    for component, modules in layers.items():
        have = dict(getattr(pipe, component).named_modules()) if getattr(pipe, component, None) else {}
        for module, (down, up) in modules.items():
            total += 1
            layer = getattr(have.get(module), "base_layer", have.get(module))  # a trainer's peft wrapper, if any
            size = (getattr(layer, "in_features", getattr(layer, "in_channels", None)),
                    getattr(layer, "out_features", getattr(layer, "out_channels", None)))
            if down is None or up is None:
                unread.append(f"{component}.{module}")
            elif layer is None or size != (down[1], up[0]):
                missing.append(f"{component}.{module}")
    if unread:
        raise ValueError(f"diffusers would load only part of this LoRA: {len(unread)} of its {total} layers are in a "
                         f"form it does not read (e.g. {unread[0]}). The studio applies a LoRA whole or not at all.")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(f"This LoRA's layers do not match {model}: {len(missing)} of {total} {verb} missing there or "
                         f"of another size (e.g. {missing[0]}). It was made for another model layout; pick a LoRA for "
                         f"{architecture(cross)}.")


def suggest_name(filename: str) -> str:
    """A library name from a file's name: `My style v2.safetensors` → `My-style-v2`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(filename).stem).strip("-.")[:64] or "imported"


def token_names(token: str, vectors: int) -> list[str]:
    """The tokenizer entries of a several-vector embedding, as diffusers names them: `maybe_convert_prompt` turns
    "a <token>" into "a <token> <token>_1 …" when they are there."""
    return [token, *(f"{token}_{i}" for i in range(1, vectors))]


def check_token(name: str, tokenizer: Any, vectors: int) -> str:
    """An embedding's token: its name, lower case (CLIP reads prompts in lower case, and diffusers expands a
    several-vector token only when the prompt spells it as the tokenizer does). It must be new to the tokenizer:
    a word it knows would be replaced in every prompt."""
    token = check_name(name, "Embedding").lower()
    vocab = tokenizer.get_vocab()
    taken = [t for t in token_names(token, vectors) if t in vocab or f"{t}</w>" in vocab]
    if taken:
        raise ValueError(f"'{taken[0]}' is already a token of the model's tokenizer: an embedding named so would "
                         f"replace it in every prompt. Choose a rarer name, e.g. '{token}-emb'.")
    return token


def import_file(pipe: StableDiffusionPipeline, path: str | Path, name: str, *, loras: Path, embeddings: Path,
                allow_pickle: bool = False, model: str = "the studio's model") -> tuple[AdapterInfo, Path]:
    """Add a LoRA (to `loras`, as a library folder) or an embedding (to `embeddings`) made elsewhere, once it is
    known to fit `pipe`. A LoRA's .safetensors is kept as it came (`load_lora_weights` reads kohya and diffusers keys;
    a peft or pickle file is written in diffusers' keys); its metadata.json says where it came from."""
    path = Path(path)
    info = inspect_file(path, allow_pickle)
    check_fits(info, pipe, model)
    record = {"source": "imported", "format": info.format, "base": info.base, "original_file": info.file,
              "imported": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": info.notes}
    if info.kind == "embedding":
        token = check_token(name, pipe.tokenizer, info.vectors)
        target = embeddings / f"{token}.safetensors"
        if target.exists():
            raise ValueError(f"You already have an embedding named {token}: choose another name.")
        embeddings.mkdir(parents=True, exist_ok=True)
        save_file(info.state, target, metadata={"name": token})
        target.with_suffix(".json").write_text(json.dumps({**record, "token": token, "vectors": info.vectors},
                                                          indent=2))
        return info, target
    folder = loras / check_name(name)
    if folder.exists():
        raise ValueError(f"You already have a LoRA named {folder.name}: choose another name.")
    folder.mkdir(parents=True)
    if info.format in ("kohya", "diffusers") and path.suffix.lower() == ".safetensors":
        shutil.copyfile(path, folder / WEIGHTS)
    else:
        save_file({k: v.contiguous() for k, v in info.state.items()}, folder / WEIGHTS, metadata=info.metadata)
    record |= {"rank": info.ranks, "trigger_words": info.triggers}
    (folder / METADATA).write_text(json.dumps(record, indent=2))  # last: `library` lists folders that have it
    return info, folder


def embedding_library(root: Path) -> list[str]:
    """Tokens of the embeddings under `root`, newest first."""
    done = [p for p in root.glob("*.safetensors") if p.with_suffix(".json").is_file()] if root.is_dir() else []
    return [p.stem for p in sorted(done, key=lambda p: -p.stat().st_mtime)]


# 4. Embeddings on a lent pipeline
TOKENIZERS = 8  # job tokenizers a model keeps (one per set of embedding tokens in use)


def job_tokenizer(tokenizer: Any, names: list[str], cache: dict[tuple[str, ...], Any]) -> Any:
    """A copy of `tokenizer` that also knows `names`, kept in `cache` (copying CLIP's takes about half a second; a
    token cannot be taken out of a fast tokenizer again without rebuilding it, which takes longer still)."""
    key = tuple(names)
    if key not in cache:
        while len(cache) >= TOKENIZERS:
            cache.pop(next(iter(cache)))
        copy = deepcopy(tokenizer)
        copy.add_tokens(names)
        cache[key] = copy
    return cache[key]


@contextmanager
def embedded(pipe: StableDiffusionPipeline, embeddings: Sequence[tuple[str | Path, str]],
             tokenizers: dict[tuple[str, ...], Any] | None = None) -> Iterator[None]:
    """Load textual-inversion embeddings, (file, token) pairs, into a lent pipeline for one job: a prompt that names a
    token reads its vectors (a several-vector one, all of them), other prompts encode as before.

    The shared tokenizer is never changed: the lent pipeline gets a copy that knows the tokens (from `tokenizers`, the
    model's cache of them). The shared text encoder's embedding table gets the vectors as extra rows for the job, and
    its own tensor back afterwards (same rows, dtype, device, no gradient), also if the job raised. Done here rather
    than with diffusers' `load_textual_inversion`, which adds to the shared tokenizer and resizes the table with
    random rows, and whose unload rebuilds the tokenizer: seconds per job, with every embedding of a library."""
    if not embeddings:
        yield
        return
    tokenizer, table = pipe.tokenizer, pipe.text_encoder.get_input_embeddings()
    rows, count = table.weight.data, table.num_embeddings
    try:
        names, vectors = [], []
        for path, token in embeddings:
            if not Path(path).is_file():
                raise ValueError(f"The embedding {token} is gone from your library ({path}).")
            emb = load_file(path)["emb_params"]
            emb = emb.reshape(-1, emb.shape[-1])
            if emb.shape[-1] != rows.shape[-1]:
                raise ValueError(f"The embedding {token} of your library was made for {architecture(emb.shape[-1])} "
                                 f"({emb.shape[-1]}-wide vectors); this model reads {rows.shape[-1]}-wide ones. Untick "
                                 "it under Embeddings in the LoRAs accordion.")
            names += token_names(token, len(emb))
            vectors.append(emb)
        lent = job_tokenizer(tokenizer, names, {} if tokenizers is None else tokenizers)
        ids = lent.convert_tokens_to_ids(names)
        if taken := [name for name, i in zip(names, ids) if i < count]:  # a file renamed by hand: never a word's row
            raise ValueError(f"The embedding {taken[0]} is named like a token the model's tokenizer has: rename its "
                             "file in your library.")
        grown = torch.zeros(max(count, max(ids) + 1), rows.shape[-1], dtype=rows.dtype, device=rows.device)
        grown[:count] = rows
        grown[ids] = torch.cat(vectors).to(rows)
        table.weight.data, table.num_embeddings = grown, len(grown)
        pipe.tokenizer = lent
        yield
    finally:
        pipe.tokenizer = tokenizer
        table.weight.data, table.num_embeddings = rows, count
