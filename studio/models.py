"""ModelManager: the one owner of weights in the studio.

Every tab asks it for a pipeline by name. It resolves the name (catalog entry, hub id, local folder or single
.safetensors file), loads each model once per (source, revision, dtype, device), keeps it on the device in an LRU
cache under a memory budget, and derives the pipelines of other techniques with `from_pipe`, so the UNet, VAE and
text encoder are shared, never copied. `lend` hands a pipeline to one job at a time: techniques that swap attention
processors or adapters on the shared UNet restore them before the lock is released.
"""

import functools
import gc
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
import huggingface_hub.constants
from huggingface_hub import hf_hub_download
from diffusers import ControlNetModel, DiffusionPipeline, StableDiffusionPipeline, T2IAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import SingleFileComponentError
from transformers import CLIPTokenizer

from studio.device import dtype_for, pick_device
from studio.ip2p import is_ip2p_unet
from studio.preprocess import PREPROCESSORS, Preprocessor
from studio.lora import applied, embedded
from studio.pnginfo import file_hash
from studio.sampling import Preview
from studio.tiny import ensure_tiny_family, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
# SD 1.x's component configs in diffusers' layout (no weights): what `from_single_file` needs to read an A1111/civitai
# checkpoint without fetching them from the Hub.
SD15_CONFIG = Path(__file__).resolve().parent / "assets" / "sd15"
CATALOG_PATH = ROOT / "presets" / "models.yaml"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
COMPONENT_CLASSES = {"controlnet": ControlNetModel, "t2i_adapter": T2IAdapter}
INSTRUCT = "instruct_pix2pix"  # the catalog section of InstructPix2Pix models: a UNet that reads the input image
DEFAULT_FAMILY = "sd15"  # what a model not in the catalog is taken for

ProgressFn = Callable[[float, str], None]


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here, with a message that says what to do about it."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from. `kind` is "hub", "folder" or "single_file"."""

    kind: str
    location: str
    revision: str | None = None
    fp16_variant: bool = False
    label: str = ""
    note: str = ""
    size: int = 512  # the resolution it was trained at: the UI's default width and height

    @property
    def name(self) -> str:
        return self.label or self.location


@dataclass
class _Entry:
    value: Any
    nbytes: int
    users: int = 0


@dataclass
class Catalog:
    """The named models of `presets/models.yaml`, by section (base, controlnet, t2i_adapter, annotators)."""

    sections: dict[str, dict[str, dict]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = CATALOG_PATH) -> "Catalog":
        return cls(yaml.safe_load(path.read_text()))

    def find(self, name: str) -> tuple[str, dict] | None:
        for section, entries in self.sections.items():
            if name in entries:
                return section, entries[name]
        return None

    def names(self, section: str) -> list[str]:
        return list(self.sections.get(section, {}))

    def controls(self, family: str) -> list[str]:
        """The ControlNets, then the T2I-Adapters, made for base models of `family` (their `base`, default sd15)."""
        return [name for section in COMPONENT_CLASSES for name, entry in self.sections.get(section, {}).items()
                if entry.get("base", DEFAULT_FAMILY) == family]

    def instruct_models(self, family: str) -> list[str]:
        """The InstructPix2Pix models made for base models of `family`."""
        return [name for name, entry in self.sections.get(INSTRUCT, {}).items()
                if entry.get("base", DEFAULT_FAMILY) == family]


def _quiet_empty_fp32_warning(record: logging.LogRecord) -> bool:
    """diffusers warns on every `from_pipe` that "modules should be kept in float32: []" even when there are none."""
    return "kept in float32: []" not in record.getMessage()


@functools.cache
def _folder_tokenizer(folder: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(folder)


def go_offline() -> None:
    """Offline mode for every library that reads it: the environment variables for code that reads them later, and
    huggingface_hub's own switch, which transformers and diffusers consult at call time (it was read at import)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub within `timeout` seconds?

    Runs in a thread because DNS lookups ignore socket timeouts; on a closed network this answers in seconds instead
    of letting a download hang.
    """
    host = (endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("://")[-1].split("/")[0]
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def native_size(folder: Path) -> int:
    """Image size a diffusers Stable Diffusion folder was trained at: UNet sample size x the VAE's downsampling."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except FileNotFoundError:
        return 512  # not a pipeline folder (a ControlNet, say): the size is the base model's business
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def module_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers held by a pipeline, a model, or an annotator object that holds models (at
    most two attributes deep, as controlnet-aux's detectors do)."""
    if isinstance(obj, DiffusionPipeline):
        modules = list(obj.components.values())
    elif isinstance(obj, torch.nn.Module):
        modules = [obj]
    else:
        inner = [v for v in vars(obj).values() if not isinstance(v, torch.nn.Module) and hasattr(v, "__dict__")]
        modules = [v for holder in [obj, *inner] for v in vars(holder).values()]
    return sum(t.numel() * t.element_size() for m in modules if isinstance(m, torch.nn.Module)
               for t in [*m.parameters(), *m.buffers()])


def weights_hash(source: ModelSource) -> str:
    """`file_hash` of the file that holds a model's weights (for a folder or Hub model, its UNet's)."""
    if source.kind == "single_file":
        return file_hash(Path(source.location))
    folder = Path(source.location)
    if source.kind == "hub":
        try:
            folder = Path(huggingface_hub.snapshot_download(source.location, revision=source.revision,
                                                            local_files_only=True, allow_patterns=["unet/*"]))
        except Exception:  # noqa: BLE001 - not downloaded (or no Hub library state): no hash, not an error
            return ""
    files = sorted((folder / "unet").glob("*.safetensors")) + sorted((folder / "unet").glob("*.bin"))
    return file_hash(files[0]) if files else ""


class ModelManager:
    """Loads, caches and lends models; one instance per process, shared by every tab.

    Args:
        device: "cpu", "cuda", "mps" or None for the best one present.
        memory_budget_gb: keep at most this many GiB of weights loaded; least recently used models are evicted first,
            and on CUDA a model larger than the whole budget runs with CPU offload.
        offline: never contact the Hub (also implied by HF_HUB_OFFLINE=1); sets offline mode for every library.
        allow_pickle: also load .ckpt/.bin weights, which can run code when unpickled. Off by default.
        compile: compile the UNet of each base model by regions (its repeated transformer blocks, with dynamic
            shapes), in place: one set of graphs serves every tab's batch and size, and LoRAs and attention
            processors still apply to the same modules. False, True (inductor) or a torch.compile backend name.
        cache_dir: where built-in models are built or found.
        annotators_dir: a folder holding preprocessor weights (files of lllyasviel/Annotators), used instead of the
            Hub: classrooms copy it once.
        single_file_config: the diffusers-layout configs (no weights) a single .safetensors checkpoint is read with
            when the Hub is not used; SD 1.x's by default.
        screen: pass every image the lent pipelines decode through the model's safety checker (a public studio).
        vae_tiling: "auto" (large images are decoded by tiles), "on" or "off".
    """

    def __init__(self, device: str | None = None, *, dtype: torch.dtype | None = None,
                 memory_budget_gb: float | None = None, offline: bool = False, allow_pickle: bool = False,
                 compile: bool | str = False, cache_dir: Path | None = None, catalog: Catalog | None = None,
                 annotators_dir: Path | None = None, single_file_config: Path = SD15_CONFIG,
                 screen: bool = False, vae_tiling: str = "auto"):
        self.device = pick_device(device)
        self.dtype = dtype or dtype_for(self.device)
        self.budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
        self.offline = offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if self.offline:
            go_offline()
        self.single_file_config = single_file_config
        self.screen = screen
        if vae_tiling not in ("auto", "on", "off"):
            raise ValueError(f"vae_tiling is auto, on or off, not {vae_tiling!r}")
        self.vae_tiling = vae_tiling
        self.allow_pickle = allow_pickle
        self.compile = compile
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "diffusion-studio")
        self.catalog = catalog or Catalog.load()
        self.annotators_dir = Path(annotators_dir) if annotators_dir else None
        self._hub_checked = (-1e9, False)  # (when, answer) of the last reachability probe
        self.gpu_lock = threading.RLock()  # one job at a time on the shared weights
        self._lock = threading.Lock()  # guards the two dicts below
        self._cache: OrderedDict[tuple, _Entry] = OrderedDict()
        self._loading: dict[tuple, Future] = {}
        self.load_count = 0  # models actually read from disk; tests use it to prove single loading
        self._claim: Callable[[], None] | None = None  # undoes a job's lasting change to the shared modules
        self._hashes: dict[str, str] = {}  # model location -> its short hash
        modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
        if _quiet_empty_fp32_warning not in modeling_logger.filters:
            modeling_logger.addFilter(_quiet_empty_fp32_warning)

    # 1. Naming: catalog entry, hub id, folder or file -> ModelSource
    def resolve(self, spec: str) -> ModelSource:
        spec = spec.strip()
        found = self.catalog.find(spec)
        if found:
            _, entry = found
            if "builtin" in entry or "path" in entry:
                if "builtin" in entry:  # built on first use, in the cache folder
                    family, sub = entry["builtin"].split("/", 1)
                    location = ensure_tiny_family(self.cache_dir / family) / sub
                else:  # shipped in this repository (models/...)
                    location = ROOT / entry["path"]
                    if not location.is_dir():
                        raise ModelUnavailable(f"The built-in model '{spec}' is missing ({location}). "
                                               f"{entry.get('howto', 'Reinstall the studio from its repository.')}")
                return ModelSource("folder", str(location), label=entry.get("label", spec),
                                   note=entry.get("note", ""), size=native_size(location))
            repo, _, revision = entry["repo"].partition("@")
            return ModelSource("hub", repo, revision or None, entry.get("fp16_variant", False),
                               entry.get("label", repo), size=entry.get("size", 512))
        path = Path(spec).expanduser()
        if path.is_dir():
            return ModelSource("folder", str(path.resolve()), size=native_size(path))
        if path.is_file():
            if path.suffix == ".safetensors" or (self.allow_pickle and path.suffix in PICKLE_SUFFIXES):
                return ModelSource("single_file", str(path.resolve()))
            if path.suffix in PICKLE_SUFFIXES:
                raise ModelUnavailable(f"{path.name} is a pickle checkpoint, which can run code when loaded. Convert "
                                       "it to .safetensors, or start the studio with --allow-pickle if you trust it.")
            raise ModelUnavailable(f"{path} is not a model: expected a diffusers folder or a .safetensors file.")
        repo, _, revision = spec.partition("@")
        if repo.count("/") == 1 and not spec.startswith((".", "/", "~")):
            return ModelSource("hub", repo, revision or None)
        names = ", ".join(self.catalog.names("base"))
        raise ModelUnavailable(f"Model '{spec}' not found: it is not a catalog name ({names}), "
                               "an existing folder or .safetensors file, or a Hub id like 'owner/name'.")

    # 2. Loading, once per key, under the memory budget
    def _key(self, source: ModelSource, what: str) -> tuple:
        return (what, source.kind, source.location, source.revision, str(self.dtype), str(self.device))

    def _cached(self, key: tuple, load: Callable[[], Any], *, hold: bool = False) -> Any:
        """Return the cached value for `key`, loading it exactly once even when many threads ask at the same time.

        With `hold`, the entry is marked in use (atomically with the lookup) until `_release(key)`.
        """
        with self._lock:
            entry = self._cache.get(key)
            if entry:
                self._cache.move_to_end(key)
                entry.users += hold
                return entry.value
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = self._loading[key] = Future()
        if not owner:
            pending.result()
            return self._cached(key, load, hold=hold)
        try:
            value = load()
            nbytes = module_bytes(value)
            with self._lock:
                self._evict_for(nbytes)
            # On the device before it is visible to others: nobody runs on half-moved weights.
            value = self._to_device(value, nbytes)
            with self._lock:
                self._cache[key] = _Entry(value, nbytes, users=int(hold))
            pending.set_result(value)
            return value
        except BaseException as error:
            pending.set_exception(error)
            raise
        finally:
            with self._lock:
                del self._loading[key]

    def _release(self, key: tuple) -> None:
        with self._lock:
            if key in self._cache:
                self._cache[key].users -= 1

    def _evict_for(self, nbytes: int) -> None:
        """Drop least recently used models that no job is using until `nbytes` more fit in the budget."""
        if self.budget is None:
            return
        for key in list(self._cache):
            if self.loaded_bytes() + nbytes <= self.budget:
                break
            if self._cache[key].users == 0:
                del self._cache[key]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _to_device(self, value: Any, nbytes: int) -> Any:
        too_big = self.budget is not None and nbytes > self.budget
        if isinstance(value, DiffusionPipeline) and too_big and self.device.type == "cuda":
            # Larger than the whole budget: keep weights in RAM and move each model to the GPU only while it runs.
            value.enable_model_cpu_offload(device=self.device)
        else:
            value.to(self.device)
        return value

    def loaded_bytes(self) -> int:
        return sum(e.nbytes for e in self._cache.values())

    def loaded(self) -> list[str]:
        """Human-readable names of what is in memory, least recently used first."""
        return [f"{k[2]} ({e.nbytes / 2**20:.0f} MiB)" for k, e in self._cache.items()]

    def _from_pretrained(self, cls: Any, source: ModelSource, on_progress: ProgressFn | None, **extra: Any) -> Any:
        """Load from cache or disk first; touch the network only when allowed and reachable, and fail fast if not.
        `extra` goes to `from_pretrained` (a `subfolder`)."""
        kwargs: dict[str, Any] = dict(dtype=self.dtype, use_safetensors=None if self.allow_pickle else True, **extra)
        if source.revision:
            kwargs["revision"] = source.revision
        if source.fp16_variant and self.dtype == torch.float16:
            kwargs["variant"] = "fp16"
        if on_progress:
            on_progress(0.0, f"Loading {source.name}")
        self.load_count += 1
        if source.kind == "single_file":
            return self._single_file(cls, source)
        if source.kind == "folder":
            return self._explain_missing_safetensors(cls, source.location, kwargs)
        try:
            return cls.from_pretrained(source.location, local_files_only=True, **kwargs)
        except OSError:
            pass  # not in the local Hub cache yet
        if self.offline or not hub_reachable():
            why = ("offline mode is on (--offline or HF_HUB_OFFLINE=1)" if self.offline
                   else "the Hugging Face Hub cannot be reached")
            raise ModelUnavailable(
                f"Model '{source.location}' is not on this machine and {why}. To provide it: point --model at a local "
                f"diffusers folder or .safetensors file; or, on a machine with internet, run "
                f"`hf download {source.location} --local-dir {source.location.split('/')[-1]}` (older hubs: "
                f"`huggingface-cli download ...`) and copy that folder here, then pass --model with its path.")
        if on_progress:
            on_progress(0.0, f"Downloading {source.location} (first use only)")
        return self._explain_missing_safetensors(cls, source.location, kwargs)

    def _single_file(self, cls: Any, source: ModelSource) -> Any:
        """An A1111/civitai checkpoint: weights only. Online, diffusers fetches the configs of the architecture it
        detects (SD 1.x, 2.x); offline, or with the Hub out of reach, the shipped SD 1.x configs are used."""
        kwargs: dict[str, Any] = dict(dtype=self.dtype)
        local = self.offline or not self._hub_reachable()
        if local:
            kwargs["local_files_only"] = True
            if issubclass(cls, StableDiffusionPipeline):  # the tokenizer is vendored; no safety checker offline
                kwargs.update(config=str(self.single_file_config), tokenizer=load_tokenizer(), safety_checker=None,
                              feature_extractor=None, requires_safety_checker=False)
        try:
            return cls.from_single_file(source.location, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
            how = (f"offline, with the Stable Diffusion 1.x configs shipped in {self.single_file_config}"
                   if local else "with the configs diffusers fetched for it")
            raise ModelUnavailable(f"Could not load {Path(source.location).name} as a single-file checkpoint "
                                   f"({how}): {error}. A checkpoint of another architecture needs a diffusers "
                                   "folder of the same model.") from error

    @staticmethod
    def _explain_missing_safetensors(cls: Any, location: str, kwargs: dict) -> Any:
        try:
            return cls.from_pretrained(location, **kwargs)
        except (OSError, EnvironmentError) as error:
            if "safetensors" in str(error) and kwargs.get("use_safetensors"):
                raise ModelUnavailable(f"{location} has no .safetensors weights. The studio does not load pickle "
                                       "weights unless started with --allow-pickle.") from error
            raise ModelUnavailable(f"Could not load {location}: {error}") from error

    # 3. What the tabs call
    def base(self, spec: str, *, on_progress: ProgressFn | None = None) -> StableDiffusionPipeline:
        """The cached base text-to-image pipeline for `spec`; loads it the first time."""
        return self._base(self.resolve(spec), on_progress, hold=False)

    def _base(self, source: ModelSource, on_progress: ProgressFn | None, *, hold: bool) -> StableDiffusionPipeline:
        def load() -> StableDiffusionPipeline:
            pipe = self._from_pretrained(StableDiffusionPipeline, source, on_progress)
            pipe.set_progress_bar_config(desc="Denoising")
            pipe.preview = Preview(pipe.vae)
            pipe.job_tokenizers = {}  # the tokenizer with a job's embedding tokens, copied once per set
            for module in pipe.components.values():  # shared weights are read, never trained (a trainer's adapter
                if isinstance(module, torch.nn.Module):  # asks for its own gradients); peft freezes them anyway
                    module.requires_grad_(False)
            if self.compile:
                # Regional and in place (diffusers' compile_repeated_blocks): a whole-model torch.compile wrapped the
                # UNet, so a LoRA loaded later missed its adapters, and each new batch or size recompiled it all.
                backend = "inductor" if self.compile is True else self.compile
                # One transformer-block class runs at each block width, for self- and cross-attention, with the
                # default processor and Prompt-to-Prompt's, with and without LoRA layers: a few dozen variants,
                # more than torch's default of 8 before it gives up and runs the rest eagerly.
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                pipe.unet.compile_repeated_blocks(dynamic=True, backend=backend)
            return pipe

        return self._cached(self._key(source, "pipeline"), load, hold=hold)

    def component(self, spec: str, *, on_progress: ProgressFn | None = None) -> ControlNetModel | T2IAdapter:
        """A cached ControlNet or T2I-Adapter, by catalog name (section tells the class) or path/hub id."""
        section = self.component_kind(spec)
        cls = COMPONENT_CLASSES[section]
        source = self.resolve(spec)
        return self._cached(self._key(source, section), lambda: self._from_pretrained(cls, source, on_progress))

    def instruct_unet(self, spec: str, *, on_progress: ProgressFn | None = None) -> UNet2DConditionModel:
        """The cached UNet of an InstructPix2Pix model (catalog name, pipeline folder or Hub id): the one part that
        differs from its base model, whose VAE and text encoder it shares. Lend it with
        `lend(base, StableDiffusionInstructPix2PixPipeline, unet=...)`."""
        source = self.resolve(spec)
        if source.kind == "single_file":
            raise ModelUnavailable(f"{Path(spec).name}: an InstructPix2Pix model must be a diffusers folder or a Hub "
                                   "id (its UNet in unet/).")

        def load() -> UNet2DConditionModel:
            unet = self._from_pretrained(UNet2DConditionModel, source, on_progress, subfolder="unet")
            if not is_ip2p_unet(unet):
                raise ModelUnavailable(f"{source.name} is not an InstructPix2Pix model: its UNet reads "
                                       f"{unet.config.in_channels} channels, not the image latent's 4 more.")
            return unet.requires_grad_(False)

        return self._cached(self._key(source, INSTRUCT), load)

    def instruct_models_for(self, spec: str) -> list[str]:
        """Catalog InstructPix2Pix models that fit the base model `spec`."""
        return self.catalog.instruct_models(self.family(spec))

    def component_kind(self, spec: str) -> str:
        """"controlnet" or "t2i_adapter", from the catalog section or a folder's config.json."""
        found = self.catalog.find(spec)
        if found and found[0] in COMPONENT_CLASSES:
            return found[0]
        config = Path(spec).expanduser() / "config.json"
        if config.is_file():
            kind = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter"}.get(
                json.loads(config.read_text()).get("_class_name"))
            if kind:
                return kind
        names = ", ".join(self.catalog.names("controlnet") + self.catalog.names("t2i_adapter"))
        raise ModelUnavailable(f"'{spec}' is not a ControlNet or T2I-Adapter: use a catalog name ({names}) or a "
                               "diffusers folder of one.")

    def annotator(self, name: str, *, on_progress: ProgressFn | None = None) -> Any:
        """The cached controlnet-aux detector of a network preprocessor (None for weight-free ones). Its files come
        from --annotators FOLDER when given, else from the Hub cache, downloading them when online."""
        pre = PREPROCESSORS[name]
        if not pre.needs_weights:
            return None
        folder = self._annotator_folder(pre, on_progress)
        key = ("annotator", name, folder, "float32", str(self.device))
        return self._cached(key, lambda: self._count_load(pre.loader, folder))

    def _hub_reachable(self) -> bool:
        """`hub_reachable`, remembered for a minute: one "all preprocessors" click probes the network once."""
        now = time.monotonic()
        if now - self._hub_checked[0] > 60:
            self._hub_checked = (now, hub_reachable())
        return self._hub_checked[1]

    def _count_load(self, load: Callable[[str], Any], location: str) -> Any:
        self.load_count += 1
        return load(location)

    def _annotator_folder(self, pre: Preprocessor, on_progress: ProgressFn | None) -> str:
        if self.annotators_dir:
            missing = [f for f in pre.weights if not (self.annotators_dir / f).is_file()]
            if missing:
                raise ModelUnavailable(f"{pre.label} needs {', '.join(missing)} in {self.annotators_dir} (from the "
                                       f"Hub repository {pre.repo}).")
            return str(self.annotators_dir)
        paths = []
        for filename in pre.weights:
            try:
                paths.append(hf_hub_download(pre.repo, filename, local_files_only=True))
                continue
            except Exception:  # noqa: BLE001 - any miss means: not in the local Hub cache
                pass
            if self.offline or not self._hub_reachable():
                why = "offline mode is on" if self.offline else "the Hugging Face Hub cannot be reached"
                free = ", ".join(p.name for p in PREPROCESSORS.values() if not p.needs_weights)
                raise ModelUnavailable(
                    f"{pre.label} needs {', '.join(pre.weights)} from {pre.repo}, which is not on this "
                    f"machine, and {why}. Weight-free preprocessors work offline: {free}. To add it, on a machine "
                    f"with internet run `hf download {pre.repo} {' '.join(pre.weights)} --local-dir "
                    f"annotators`, copy that folder here and start the studio with --annotators annotators.")
            if on_progress:
                on_progress(0.0, f"Downloading {filename} from {pre.repo} (first use only)")
            paths.append(hf_hub_download(pre.repo, filename))
        return str(Path(paths[0]).parent)  # one snapshot folder holds every file of the repository

    def pipeline(self, spec: str, cls: type[DiffusionPipeline] = StableDiffusionPipeline,
                 *, on_progress: ProgressFn | None = None, **components: Any) -> DiffusionPipeline:
        """A pipeline of class `cls` over the shared base model, with extra or replaced components (a ControlNet, a
        scheduler). Derived with `from_pipe`: no weights are copied, and the new object is the caller's to change."""
        return self._derive(self.base(spec, on_progress=on_progress), cls, components)

    def _derive(self, base: StableDiffusionPipeline, cls: type[DiffusionPipeline],
                components: dict) -> DiffusionPipeline:
        # from_pipe casts every module to `torch_dtype`, float32 by default: always pass ours, or the shared fp16
        # UNet would be converted in place for every tab.
        return cls.from_pipe(base, dtype=self.dtype, **components)

    @contextmanager
    def lend(self, spec: str, cls: type[DiffusionPipeline] = StableDiffusionPipeline,
             *, on_progress: ProgressFn | None = None, loras: list[tuple[str | Path, float]] | None = None,
             embeddings: list[tuple[str | Path, str]] | None = None, **components: Any) -> Iterator[DiffusionPipeline]:
        """Use a pipeline exclusively: one job at a time runs on the shared weights, and the model cannot be evicted
        while it is lent. `loras`: (library folder or .safetensors file, scale) pairs applied for this job only;
        `embeddings`: (file, token) textual-inversion embeddings, also loaded for this job only."""
        source = self.resolve(spec)
        with self.gpu_lock:
            self.unclaim()
            base = self._base(source, on_progress, hold=True)
            try:
                pipe = self._derive(base, cls, components)
                pipe.screen, pipe.withheld = self.screen, 0  # the safety checker's marks, this job's own
                pipe.vae_tiling = self.vae_tiling
                pipe.preview = base.preview  # fitted once per model, at its first preview
                with applied(pipe, loras or []), embedded(pipe, embeddings or [], base.job_tokenizers):
                    yield pipe
            finally:
                self._release(self._key(source, "pipeline"))

    def family(self, spec: str) -> str:
        """The catalog family of a base model ("sd15", "shapes", "tiny"), also when it is given by its folder; any
        other model is taken for SD 1.x."""
        location = Path(self.resolve(spec).location)
        for name, entry in self.catalog.sections.get("base", {}).items():
            shipped = ROOT / entry["path"] if "path" in entry else None
            built = self.cache_dir / entry["builtin"] if "builtin" in entry else None
            if name == spec.strip() or location in (shipped, built):
                return entry.get("family", DEFAULT_FAMILY)
        return DEFAULT_FAMILY

    def default_sampler(self, spec: str) -> str | None:
        """The sampler the tabs open with for this model: its family's `sampler` in the catalog (SD 1.x: DPM++ 2M
        Karras, as in A1111), else None (the tabs' own default)."""
        family = self.family(spec)
        return next((entry["sampler"] for entry in self.catalog.sections.get("base", {}).values()
                     if entry.get("family") == family and "sampler" in entry), None)

    def controls_for(self, spec: str) -> list[str]:
        """Catalog ControlNets and T2I-Adapters that fit the base model `spec`."""
        return self.catalog.controls(self.family(spec))

    def tokenizer(self, spec: str) -> Any:
        """The model's tokenizer without loading its weights (the Train tab shows how an identifier splits)."""
        source = self.resolve(spec)
        entry = self._cache.get(self._key(source, "pipeline"))
        if entry:
            return entry.value.tokenizer
        if source.kind == "folder" and (Path(source.location) / "tokenizer").is_dir():
            return _folder_tokenizer(str(Path(source.location) / "tokenizer"))
        # A Hub model not downloaded yet, or a single file: every SD 1.x model reads CLIP ViT-L/14's BPE, vendored.
        return load_tokenizer()

    def claim(self, undo: Callable[[], None]) -> None:
        """A job that keeps the shared modules changed between its turns (a trainer's adapter, left enabled from
        step to step) leaves `undo` here, holding `gpu_lock`; whoever lends the model next runs it first, so every
        lend still starts from the base model, and the trainer need not switch ~200 layers off and on each step."""
        self._claim = undo

    def unclaim(self) -> None:
        """Run the pending `undo`, if any (the caller holds `gpu_lock`)."""
        undo, self._claim = self._claim, None
        if undo:
            undo()

    def model_hash(self, spec: str) -> str:
        """A1111's short hash of the model, as PNGs record it: of the checkpoint file, or of a folder's (or a
        downloaded Hub model's) UNet weights; "" when they are not on this disk. Hashed once per process."""
        source = self.resolve(spec)
        if source.location not in self._hashes:
            self._hashes[source.location] = weights_hash(source)
        return self._hashes[source.location]

    def source_note(self, spec: str) -> str:
        """The catalog's warning for a model (e.g. that the tiny model draws noise), or ""."""
        return self.resolve(spec).note

