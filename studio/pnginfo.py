"""Parameters inside every output PNG, and read back from the studio's, AUTOMATIC1111's and ComfyUI's PNGs.

A studio PNG carries three text chunks:
- `parameters`: A1111's "infotext" (the prompt with `<lora:name:weight>` tags, `Negative prompt: …`, then one line
  of `Key: value` pairs: Steps, Sampler, CFG scale, Seed, Size, Model hash, Model, Lora hashes, and the technique's
  own settings), which A1111's "PNG Info", civitai and most image hosts read;
- `diffusion-studio`: the `Recipe` as JSON: the tab that made the image and its settings by name (the seed it really
  used, not -1), the model and its hash, the LoRAs with their weights and hashes;
- `diffusion-studio-inputs`: the input images the tab needs to make it again (SDEdit's guide, a ControlNet's
  image, the photo an edit starts from), as base64 of the very files that were used, compressed.

`read_png` turns any of these into a `Recipe`: the studio's own (also the older flat JSON Generate wrote), an A1111
infotext (txt2img to Generate; img2img, which has "Denoising strength", to SDEdit), or a ComfyUI graph (the API
`prompt` chunk, else the editor's `workflow`: the first KSampler's seed, steps, CFG, sampler and the texts wired to it,
the empty latent's size). What the studio cannot use is listed in `notes`, never silently dropped.
"""

import base64
import functools
import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.prompts import LORA_TAG
from studio.sampling import SCHEDULERS

KEY, INPUTS = "diffusion-studio", "diffusion-studio-inputs"
MAX_INPUT_BYTES = 8 << 20  # an input larger than this is not carried (the note says so)
IMAGE_REF = "$image"  # a setting that was an image: {"$image": key into Recipe.images}

# Settings that A1111's infotext has names for; the rest are written under humanised names ("cross_start" ->
# "Cross start"). Prompts come first, on lines of their own.
PROMPTS = ("prompt", "target_prompt", "instance_prompt")
A1111_NAMES = {"steps": "Steps", "scheduler": "Sampler", "cfg": "CFG scale", "seed": "Seed",
               "t0": "Denoising strength"}
TAB_NAMES = {"generate": "Generate", "sdedit": "SDEdit", "p2p": "Prompt-to-Prompt", "control": "ControlNet",
             "edit": "Edit a real image", "classify": "Classify", "train": "Train a LoRA"}


@dataclass
class Recipe:
    """How one output was made, enough to make it again in its tab."""

    tab: str  # the id of the tab that made it, and that restores it
    settings: dict[str, Any]  # the tab's inputs by name; an image input is {"$image": key}
    model: str = ""
    model_hash: str = ""
    loras: list[dict] = field(default_factory=list)  # {"name", "weight", "hash"} as the header applied them
    images: dict[str, bytes] = field(default_factory=dict)  # the input files, by key
    extra: dict[str, Any] = field(default_factory=dict)  # what the technique reports (versions, device, index…)
    notes: list[str] = field(default_factory=list)  # what could not be carried or taken over
    source: str = "Diffusion Studio"  # or "AUTOMATIC1111", "ComfyUI"

    def summary(self) -> dict[str, Any]:
        """What a person (or a script through the API) is shown of a restored file: no image bytes."""
        return {"tab": self.tab, "source": self.source, "model": self.model, "model_hash": self.model_hash,
                "settings": self.settings, "loras": self.loras, "inputs": sorted(self.images), "notes": self.notes}


def file_hash(path: Path) -> str:
    """A1111's "AutoV2" hash: the first 10 hex digits of the file's SHA-256; read once per version of the file
    (every image a LoRA makes records its hash)."""
    stat = Path(path).stat()
    return _hash(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _hash(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:10]


def embed_image(recipe: Recipe, name: str, path: str | Path) -> dict[str, str] | None:
    """Put the file of an image input into the recipe; its setting becomes a reference to it."""
    data = Path(path).read_bytes()
    if len(data) > MAX_INPUT_BYTES:
        recipe.notes.append(f"{name} is larger than {MAX_INPUT_BYTES >> 20} MB: it is not kept in the PNG.")
        return None
    key = f"{name}-{hashlib.sha256(data).hexdigest()[:8]}"
    recipe.images[key] = data
    return {IMAGE_REF: key}


# 1. Writing
def humanise(name: str) -> str:
    return name.replace("_", " ").capitalize()


def infotext(recipe: Recipe, size: tuple[int, int]) -> str:
    """The A1111 `parameters` text for an image of `size` made by `recipe`."""
    s = recipe.settings
    prompt = next((s[k] for k in PROMPTS if isinstance(s.get(k), str)), "")
    prompt += "".join(f" <lora:{lora['name']}:{lora['weight']:g}>" for lora in recipe.loras)
    lines = [prompt.strip()]
    if s.get("negative_prompt"):
        lines.append(f"Negative prompt: {s['negative_prompt']}")
    pairs = {A1111_NAMES[k]: s[k] for k in A1111_NAMES if k in s and s[k] is not None}
    pairs["Size"] = f"{size[0]}x{size[1]}"
    if recipe.model_hash:
        pairs["Model hash"] = recipe.model_hash
    pairs["Model"] = recipe.model
    if recipe.loras:
        pairs["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['hash']}" for lora in recipe.loras)
    pairs["Studio tab"] = TAB_NAMES.get(recipe.tab, recipe.tab)
    used = {*PROMPTS, "negative_prompt", *A1111_NAMES, "width", "height"}
    for name, value in s.items():
        if name not in used and value not in (None, "", []) and not _is_image(value):
            pairs[humanise(name)] = value
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs.items()))
    return "\n".join(lines)


def _is_image(value: Any) -> bool:
    if isinstance(value, dict):
        return IMAGE_REF in value or any(_is_image(v) for v in value.values())
    return isinstance(value, list) and any(_is_image(v) for v in value)


def _quote(value: Any) -> str:
    """A value as A1111 writes it: quoted (JSON) when it holds a comma, colon, quote or line break."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return json.dumps(text) if re.search(r'[,:"\n]', text) else text


def save_png(image: Image.Image, recipe: Recipe, path: Path) -> Path:
    info = PngInfo()
    info.add_text("parameters", infotext(recipe, image.size))
    body = asdict(recipe)
    body.pop("images")
    info.add_text(KEY, json.dumps(body))
    if recipe.images:
        info.add_text(INPUTS, json.dumps({k: base64.b64encode(v).decode() for k, v in recipe.images.items()}),
                      zip=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


# 2. Reading
def read_png(path: Path | str) -> Recipe:
    """The recipe of a studio, A1111 or ComfyUI PNG; ValueError for other files, and for damaged parameters."""
    name = Path(path).name
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"{name} is not a PNG image.")
            chunks = dict(image.info)
    except (OSError, SyntaxError, zlib.error):
        raise ValueError(f"{name} is not a PNG image.") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is far too large to be a picture made here.") from None
    if KEY in chunks:
        return _studio(name, chunks)
    if "prompt" in chunks or "workflow" in chunks:
        return _comfy(name, chunks)
    if "parameters" in chunks:
        return from_infotext(chunks["parameters"])
    raise ValueError(f"{name} carries no parameters (none of the studio's, AUTOMATIC1111's or ComfyUI's).")


def _json(name: str, text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise ValueError(f"{name}: its {what} are damaged (not JSON).") from None


def _studio(name: str, chunks: dict) -> Recipe:
    body = _json(name, chunks[KEY], "Diffusion Studio parameters")
    if not isinstance(body, dict):
        raise ValueError(f"{name}: its Diffusion Studio parameters are not a set of named values.")
    if "tab" not in body:  # written by Generate before every tab wrote recipes: its flat parameters
        return _old_generate(name, body)
    try:
        recipe = Recipe(**body)
    except TypeError:
        raise ValueError(f"{name}: its Diffusion Studio parameters are incomplete.") from None
    if INPUTS in chunks:
        inputs = _json(name, chunks[INPUTS], "input images")
        recipe.images = {k: base64.b64decode(v) for k, v in inputs.items()}
    return recipe


OLD_GENERATE = ("prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "scheduler", "n_images")


def _old_generate(name: str, meta: dict) -> Recipe:
    if missing := [k for k in OLD_GENERATE if k not in meta]:
        raise ValueError(f"{name}: its Diffusion Studio parameters lack {', '.join(missing)}.")
    settings = {k: meta[k] for k in OLD_GENERATE} | {"seed": meta.get("image_seed", meta["seed"]), "n_images": 1}
    return Recipe("generate", settings, model=meta.get("model", ""))


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A1111's `<lora:name:weight>` tags taken out of a prompt: here LoRAs are picked in the header."""
    tags = []
    for match in LORA_TAG.finditer(prompt):
        try:
            tags.append((match[1].strip(), float(match[2] or 1)))
        except ValueError:
            tags.append((match[1].strip(), 1.0))
    return re.sub(r"\s+(?=,)|(?<= ) +", "", LORA_TAG.sub("", prompt)), tags


# A1111: "Key: value" pairs, a value quoted when it holds commas (our pattern, written from A1111's format).
_PAIR = re.compile(r'\s*([^,:"\n]+?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _pairs(line: str) -> dict[str, str]:
    out = {}
    for key, value in _PAIR.findall(line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value.strip('"')
        out[key.strip()] = value.strip()
    return out


def from_infotext(text: str) -> Recipe:
    """An A1111 `parameters` text: txt2img settings for Generate, img2img (with a denoising strength) for SDEdit."""
    lines = text.strip().split("\n")
    pairs = _pairs(lines[-1]) if lines else {}
    if len(pairs) < 3:  # as A1111 reads it: a last line with fewer pairs is still the prompt
        pairs = {}
    else:
        lines = lines[:-1]
    negative_at = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), len(lines))
    prompt = "\n".join(lines[:negative_at]).strip()
    negative = "\n".join(lines[negative_at:]).removeprefix("Negative prompt:").strip()
    prompt, tags = split_lora_tags(prompt)
    hashes = _pairs(pairs.get("Lora hashes", "").replace(",", ", "))
    recipe = Recipe("generate", {"prompt": prompt.strip(), "negative_prompt": negative}, model=pairs.get("Model", ""),
                    model_hash=pairs.get("Model hash", ""), source="AUTOMATIC1111",
                    loras=[{"name": n, "weight": w, "hash": hashes.get(n, "")} for n, w in tags])
    if pairs.get("Studio tab") in TAB_NAMES.values():
        recipe.notes.append("Made by Diffusion Studio, but only its A1111 text survived: the tab's own settings "
                            "and input images are lost.")
    s, taken = recipe.settings, {"Model", "Model hash", "Lora hashes", "Size", "Sampler", "Schedule type"}
    for key, name, kind in (("Steps", "steps", int), ("CFG scale", "cfg", float), ("Seed", "seed", int),
                            ("Denoising strength", "t0", float)):
        if key in pairs:
            try:
                s[name] = kind(float(pairs[key]))
                taken.add(key)
            except ValueError:
                recipe.notes.append(f"{key} {pairs[key]!r} is not a number: left as it was.")
    if size := re.fullmatch(r"(\d+)x(\d+)", pairs.get("Size", "")):
        s["width"], s["height"] = int(size[1]), int(size[2])
    if "Sampler" in pairs:
        _sampler(recipe, pairs["Sampler"], pairs.get("Schedule type", ""))
    if "t0" in s:
        recipe.tab = "sdedit"
        recipe.notes.append("An img2img image: its settings go to SDEdit (Denoising strength is t0); the image it "
                            "started from is not in the file.")
    else:
        s["n_images"] = 1
    if ignored := [k for k in pairs if k not in taken]:
        recipe.notes.append(f"Not used here: {', '.join(ignored)}.")
    return recipe


def _sampler(recipe: Recipe, name: str, schedule: str = "") -> None:
    """A sampler by A1111's name (with its "Schedule type", newer A1111 writes it apart), if the studio has it."""
    suffix = {"karras": " Karras", "exponential": " exponential"}.get(schedule.lower(), "")
    for candidate in (name + suffix, name):
        if candidate in SCHEDULERS:
            recipe.settings["scheduler"] = candidate
            if candidate != name + suffix:
                recipe.notes.append(f"{name} with the {schedule} schedule is not here: plain {name} is used.")
            return
    recipe.notes.append(f"The sampler {(name + suffix).strip()} is not in the studio: the tab's own is kept.")


# ComfyUI. Its samplers and schedules by their names in ComfyUI's KSampler.
COMFY_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS", "ddim": "DDIM",
                  "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC"}
COMFY_WIDGETS = {  # the names of the widget values the editor's `workflow` lists, per node type
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "CLIPTextEncode": ("text",), "EmptyLatentImage": ("width", "height", "batch_size"),
    "CheckpointLoaderSimple": ("ckpt_name",), "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
}


def _comfy(name: str, chunks: dict) -> Recipe:
    graph = _json(name, chunks["prompt"], "ComfyUI prompt") if "prompt" in chunks else \
        _from_workflow(_json(name, chunks["workflow"], "ComfyUI workflow"))
    if not isinstance(graph, dict) or not all(isinstance(node, dict) for node in graph.values()):
        raise ValueError(f"{name}: its ComfyUI graph is not one ComfyUI writes.")
    samplers = sorted((k for k, node in graph.items() if node.get("class_type") in ("KSampler", "KSamplerAdvanced")),
                      key=lambda k: int(k) if str(k).isdigit() else 0)
    if not samplers:
        raise ValueError(f"{name}: its ComfyUI graph has no KSampler, so no settings to take.")
    inputs = graph[samplers[0]].get("inputs", {})

    def follow(value: Any, *names: str) -> Any:
        """A value, or the value a link ([node id, output]) leads to: the first of `names` in that node."""
        for _ in range(8):  # links through reroutes and primitives, not forever
            if not (isinstance(value, list) and len(value) == 2 and str(value[0]) in graph):
                return value
            node = graph[str(value[0])].get("inputs", {})
            value = next((node[n] for n in names if n in node), None)
        return None

    recipe = Recipe("generate", {"prompt": follow(inputs.get("positive"), "text", "string", "value") or "",
                                 "negative_prompt": follow(inputs.get("negative"), "text", "string", "value") or ""},
                    source="ComfyUI")
    s = recipe.settings
    for key, target, kind in (("noise_seed", "seed", int), ("seed", "seed", int), ("steps", "steps", int),
                              ("cfg", "cfg", float)):
        value = follow(inputs.get(key), "value", key)
        if isinstance(value, (int, float)):
            s[target] = kind(value)
    latent = inputs.get("latent_image")
    if isinstance(latent, list) and str(latent[0]) in graph:
        node = graph[str(latent[0])]
        if node.get("class_type") == "EmptyLatentImage":
            s["width"], s["height"] = int(node["inputs"]["width"]), int(node["inputs"]["height"])
        elif isinstance(inputs.get("denoise"), (int, float)) and inputs["denoise"] < 1:
            s["t0"] = float(inputs["denoise"])
            recipe.tab = "sdedit"
            recipe.notes.append("An image-to-image graph: its settings go to SDEdit (denoise is t0); the image it "
                                "started from is not in the file.")
    sampler = COMFY_SAMPLERS.get(str(inputs.get("sampler_name")))
    if sampler is None:
        recipe.notes.append(f"The sampler {inputs.get('sampler_name')} is not in the studio: the tab's own is kept.")
    else:
        _sampler(recipe, sampler, str(inputs.get("scheduler", "")))
    for node in graph.values():
        kind, values = node.get("class_type"), node.get("inputs", {})
        if kind == "CheckpointLoaderSimple":
            recipe.model = str(values.get("ckpt_name", ""))
        elif kind == "LoraLoader":
            recipe.loras.append({"name": Path(str(values.get("lora_name", ""))).stem,
                                 "weight": float(values.get("strength_model", 1)), "hash": ""})
    if "t0" not in s:
        s["n_images"] = 1
    return recipe


def _from_workflow(workflow: Any) -> dict:
    """The editor's `workflow` (nodes with widget values, links apart) as an API graph of the nodes read here."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return {}
    sources = {link[0]: link[1:3] for link in workflow.get("links", []) if isinstance(link, list) and len(link) >= 3}
    graph = {}
    for node in workflow["nodes"]:
        if not isinstance(node, dict):
            continue
        names = COMFY_WIDGETS.get(node.get("type"), ())
        inputs = dict(zip(names, node.get("widgets_values") or []))
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("link") in sources:
                inputs[slot["name"]] = sources[slot["link"]]
        graph[str(node.get("id"))] = {"class_type": node.get("type"), "inputs": inputs}
    return graph
