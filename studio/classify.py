"""Diffusion classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023).

For an image latent z and each class prompt c, noise z with ε at timestep t and measure how well the text-conditioned
UNet predicts ε: the class with the lowest expected error E_{t,ε} ||ε - ε_θ(z_t, t, c)|| wins (Eq. 5 of the paper:
the error is a Monte-Carlo estimate of each class's ELBO). As in the paper's code:

- the same (t, ε) pairs are used for every class, so the comparison is paired and its variance small;
- timesteps are evenly spaced over [0, T); no classifier-free guidance (conditional branch only);
- a v-prediction UNet's output is turned into its ε first, so the error is the paper's ε-error for every model;
- an adaptive schedule spends few samples on every class, keeps the best ones and spends more on those
  (e.g. CIFAR-10: 50 samples keeping 5, then 500 keeping 1). A later stage's timesteps include the earlier ones, so
  errors already measured are reused, and a schedule whose stages keep every class ranks exactly as the
  exhaustive evaluation does.

Work is batched across classes and timesteps to fill the device; `on_step` counts UNet evaluations.
"""

import hashlib
import json
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.images import MAX_PIXELS, flatten_alpha, load_image
from studio.jobs import Cancelled, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.prompts import encode_text, prompt_chunks
from studio.sampling import encode_image, seed_field, split_prediction
from studio.shapes.world import COLOURS, SHAPES

LOSSES = {"l2": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}
# (samples, classes kept) per stage. The paper's CIFAR-10 schedule is "paper"; "fast" is for a live demo.
SCHEDULES = {
    "fast": [(10, 3), (50, 1)],
    "paper": [(50, 5), (500, 1)],
    "exhaustive": [(100, 1)],
}
PRESETS = Path(__file__).resolve().parents[1] / "presets" / "classify.yaml"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def stages_from_text(text: str) -> list[tuple[int, int]]:
    """A schedule's name ("fast", "paper", "exhaustive"), or its stages as samples:kept pairs, e.g. "10:5, 50:1"."""
    if text in SCHEDULES:
        return SCHEDULES[text]
    try:
        return [(int(a), int(b)) for a, b in (pair.split(":") for pair in text.replace(" ", "").split(",") if pair)]
    except ValueError:
        raise ValueError(f"Write the custom schedule as samples:kept pairs, e.g. 10:5, 50:1 (got {text!r}).") \
            from None


@dataclass
class ClassifyParams(Params):
    """`stages` is the paper's adaptive schedule as (n_samples, to_keep) pairs; `templates` are averaged."""

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}"])
    stages: list[tuple[int, int]] = field(default_factory=lambda: list(SCHEDULES["fast"]))
    loss: str = choice("l2", tuple(LOSSES), "How the noise prediction error is measured (the paper: l2).")
    seed: int = seed_field(0, "Seed of the shared noise: the same seed gives the same ranking.", random=False)
    batch: int = ranged(64, 1, 1024, 1, "UNet evaluations per forward pass (more fills a GPU better).")

    def check(self) -> None:
        # Blank template lines are dropped; none at all means the bare class name.
        self.templates = [t.strip() for t in self.templates if t.strip()] or ["{}"]
        wrong = [t for t in self.templates if t.count("{}") != 1 or t.replace("{}", "").count("{") + t.replace(
            "{}", "").count("}")]
        if wrong:
            raise ValueError(f"Each template needs a single {{}} where the class name goes, and no other braces: "
                             f"{wrong[0]!r}.")
        try:
            self.stages = [(int(s), int(k)) for s, k in self.stages]
        except (TypeError, ValueError):
            raise ValueError(f"Stages are (samples, kept) pairs of whole numbers, got {self.stages!r}.") from None
        if not self.stages or any(s < 1 or k < 1 for s, k in self.stages):
            raise ValueError("Each stage needs at least one sample and keeps at least one class.")
        if any(b[0] < a[0] for a, b in zip(self.stages, self.stages[1:])):
            raise ValueError("Later stages must use at least as many samples as earlier ones.")


@dataclass
class Stage:
    samples: int  # timesteps (noise samples) each remaining class was measured at, in total
    evaluated: list[str]  # the classes measured in this stage
    kept: list[str]  # the best of them, which go on


@dataclass
class ClassifyResult:
    ranking: list[tuple[str, float]]  # best first: survivors of the last stage, then the ones pruned earlier
    errors: dict[str, dict[int, float]]  # class -> timestep -> error (averaged over templates)
    history: list[Stage]
    unet_calls: int

    @property
    def label(self) -> str:
        return self.ranking[0][0]


def check_classes(names: list[str]) -> list[str]:
    """Class names as typed, one per line: blank lines dropped; fewer than two or duplicates are refused."""
    classes = [n.strip() for n in names if n.strip()]
    counts = Counter(n.lower() for n in classes)
    duplicates = sorted({n for n in classes if counts[n.lower()] > 1})
    if duplicates:
        raise ValueError(f"Each class must appear once; repeated: {', '.join(duplicates)}.")
    if len(classes) < 2:
        raise ValueError("Give at least two class names, one per line.")
    return classes


def timesteps(stages: list[tuple[int, int]], T: int = 1000) -> tuple[list[int], list[list[int]]]:
    """All timesteps, evenly spaced over [0, T), and the ones each stage uses (a stage's set contains the earlier
    stages' sets whenever the sample counts divide each other, as in the paper's schedules)."""
    n_max = max(s for s, _ in stages)
    every = list(range(T // n_max // 2, T, max(1, T // n_max)))[:n_max]
    return every, [every[:: max(1, n_max // s)][:s] for s, _ in stages]


def plan(n_classes: int, params: ClassifyParams, T: int = 1000) -> tuple[int, list[int]]:
    """UNet evaluations the schedule will spend (the cost estimate shown before running), and classes per stage."""
    stages = params.stages
    _, per_stage = timesteps(stages, T)
    done: set[int] = set()
    remaining, calls, sizes = n_classes, 0, []
    for (_, keep), ts in zip(stages, per_stage):
        sizes.append(remaining)
        calls += remaining * len(set(ts) - done)
        done |= set(ts)
        remaining = min(remaining, keep)
    return calls * len(params.templates), sizes


def class_presets(path: Path = PRESETS) -> dict[str, tuple[list[str], list[str]]]:
    """Preset name -> (classes, templates). "Shapes" lists every colour x shape pair of the Shapes world."""
    presets = {}
    for name, entry in yaml.safe_load(path.read_text()).items():
        classes = entry["classes"]
        if classes == "from-world":
            classes = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
        presets[name] = (classes, entry["templates"])
    return presets


def opening_list(family: str, path: Path = PRESETS) -> str:
    """The class list the Classify tab opens with for a model family: the one whose `opens_for` names the family,
    else the one for `default`."""
    table = yaml.safe_load(path.read_text())
    fits = {f: name for name, entry in table.items() for f in entry.get("opens_for", [])}
    return fits.get(family, fits["default"])


def prepare_image(image: Image.Image, side: int) -> Image.Image:
    """RGB, shorter side scaled to the model's native size, centre-cropped to a square (the paper's preprocessing).
    Transparency is flattened onto white."""
    image, _ = flatten_alpha(image)
    if min(image.size) < 8:
        raise ValueError(f"The image is {image.width}×{image.height}; it is too small to classify.")
    scale = side / min(image.size)
    w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


@torch.no_grad()
def classify(pipe: StableDiffusionPipeline, image: Image.Image, classes: list[str], params: ClassifyParams, *,
             on_step: StepFn | None = None, should_stop: StopFn | None = None) -> ClassifyResult:
    """Rank `classes` for `image` with the adaptive schedule in `params.stages`."""
    classes = check_classes(classes)
    templates, stages = params.templates, params.stages
    device, dtype = pipe.unet.device, pipe.unet.dtype
    T = pipe.scheduler.config.num_train_timesteps
    total, _ = plan(len(classes), params, T)

    # 1. The image latent (the VAE posterior mean, as in the paper) and one embedding per (class, template)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    z = encode_image(pipe, prepare_image(image, side))
    prompts = [t.replace("{}", c) for c in classes for t in templates]
    # One chunk each: a long class prompt would otherwise give every other class empty chunks to be scored with
    for prompt in prompts:
        if len(prompt_chunks(pipe.tokenizer, prompt)) > 1:
            raise ValueError(f"The class prompt \"{prompt[:50]}…\" has more than {pipe.tokenizer.model_max_length - 2} "
                             "tokens or a BREAK: every class is scored on one chunk of the prompt, so shorten it.")
    embeddings = encode_text(pipe, prompts, chunks=False).view(len(classes), len(templates), -1,
                                                               pipe.text_encoder.config.hidden_size)

    # 2. One noise per timestep, shared by every class: x_t = sqrt(ᾱ_t) z + sqrt(1 - ᾱ_t) ε
    every, per_stage = timesteps(stages, T)
    generator = torch.Generator("cpu").manual_seed(params.seed)
    noise = {t: torch.randn(z.shape[1:], generator=generator).to(device, dtype) for t in every}
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    prediction = pipe.scheduler.config.prediction_type
    loss = LOSSES[params.loss]

    errors: dict[str, dict[int, float]] = {c: {} for c in classes}
    history: list[Stage] = []
    remaining, calls = list(range(len(classes))), 0
    for (_, keep), ts in zip(stages, per_stage):
        # 3. Measure the (class, template, t) triples this stage still lacks, `batch` UNet rows at a time
        todo = [(c, k, t) for c in remaining for t in ts if t not in errors[classes[c]] for k in range(len(templates))]
        sums: dict[tuple[int, int], float] = {}
        for start in range(0, len(todo), params.batch):
            if should_stop and should_stop():
                raise Cancelled("Classification cancelled")
            chunk = todo[start : start + params.batch]
            t = torch.tensor([t for _, _, t in chunk], device=device)
            eps = torch.stack([noise[t] for _, _, t in chunk])
            a = alphas[t].to(dtype).view(-1, 1, 1, 1)
            x_t = a.sqrt() * z + (1 - a).sqrt() * eps
            context = torch.stack([embeddings[c, k] for c, k, _ in chunk])
            pred = pipe.unet(x_t, t, encoder_hidden_states=context).sample
            eps_pred = split_prediction(pred.float(), x_t.float(), a.float(), prediction)[1]  # the paper's ε-error
            per_row = loss(eps_pred, eps.float(), reduction="none").mean((1, 2, 3)).tolist()  # one sync
            for (c, _, t_i), value in zip(chunk, per_row):
                sums[c, t_i] = sums.get((c, t_i), 0.0) + value / len(templates)
            calls += len(chunk)
            if on_step:
                on_step(calls, total)
        for (c, t_i), value in sums.items():
            errors[classes[c]][t_i] = value
        # 4. Keep the classes with the lowest mean error over this stage's timesteps
        mean = {c: float(np.mean([errors[classes[c]][t] for t in ts])) for c in remaining}
        order = sorted(remaining, key=mean.__getitem__)
        history.append(Stage(len(ts), [classes[c] for c in order], [classes[c] for c in order[:keep]]))
        remaining = order[:keep]

    # Survivors first, by their last-stage error; then each earlier stage's pruned classes, by that stage's error.
    ranking: list[tuple[str, float]] = []
    for stage, ts in zip(reversed(history), reversed(per_stage)):
        for name in stage.evaluated:
            if name not in dict(ranking):
                ranking.append((name, float(np.mean([errors[name][t] for t in ts]))))
    return ClassifyResult(ranking, errors, history, calls)


@dataclass
class BatchResult:
    classes: list[str]
    rows: list[dict]  # one per image: file, truth, predicted, unet_calls
    skipped: list[str]  # files that are not readable images
    pending: int = 0  # images not classified yet (the run stopped at `max_new`)

    @property
    def accuracy(self) -> float:
        return float(np.mean([r["truth"] == r["predicted"] for r in self.rows])) if self.rows else 0.0

    def confusion(self) -> np.ndarray:
        """Rows: true class, columns: predicted class, in `classes` order."""
        index = {c: i for i, c in enumerate(self.classes)}
        matrix = np.zeros((len(self.classes),) * 2, dtype=int)
        for r in self.rows:
            matrix[index[r["truth"]], index[r["predicted"]]] += 1
        return matrix


MAX_FILES = 10_000  # entries a batch folder or zip may hold
MAX_BYTES = 2 * 2**30  # what a zip may unpack to


def _folder_entries(source: Path, max_files: int) -> Iterator[tuple[str, Callable[[], bytes]]]:
    count = 0
    for path in sorted(source.rglob("*")):
        try:
            if not path.is_file() or path.is_symlink():  # a link could point anywhere on the server
                continue
        except OSError:  # unreadable: not ours to list
            continue
        count += 1
        if count > max_files:
            raise ValueError(f"{source} holds more than {max_files:,} files; give a folder with only the dataset.")
        yield str(path.relative_to(source)), path.read_bytes


def _zip_entries(source: Path, max_files: int, max_bytes: int) -> list[tuple[str, Callable[[], bytes]]]:
    """The members of a zip, checked before any is read: no absolute paths or `..`, at most `max_files` members
    and `max_bytes` unpacked (a small zip can unpack to gigabytes)."""
    try:
        archive = zipfile.ZipFile(source)
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{source.name} is not a readable zip file ({error}).") from None
    if len(members) > max_files:
        raise ValueError(f"{source.name} holds {len(members):,} files; a batch takes at most {max_files:,}.")
    if sum(m.file_size for m in members) > max_bytes:
        raise ValueError(f"{source.name} unpacks to more than {max_bytes / 2**30:.1f} GB; a batch takes less.")
    for m in members:
        if m.filename.startswith(("/", "\\")) or ".." in Path(m.filename).parts or ":" in m.filename:
            raise ValueError(f"{source.name} holds a member outside its own folder ({m.filename!r}); refused.")
    return [(m.filename, (lambda m=m: archive.read(m))) for m in sorted(members, key=lambda m: m.filename)]


def labelled_images(source: Path, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES
                    ) -> tuple[list[str], list[tuple[str, str, Callable[[], bytes]]], list[str]]:
    """A folder or a .zip with one sub-folder per class → (classes, [(file, class, read)], skipped files); each
    image is read only when `read()` is called. Sub-folder names are the class names (underscores read as spaces)."""
    if source.is_dir():
        entries = list(_folder_entries(source, max_files))
    elif zipfile.is_zipfile(source):
        entries = _zip_entries(source, max_files, max_bytes)
    else:
        raise ValueError(f"{source.name} is neither a folder nor a .zip file.")
    items, skipped = [], []
    for name, read in entries:
        parts = Path(name).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if len(parts) < 2 or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(name)
            continue
        items.append((name, parts[-2].replace("_", " "), read))
    classes = sorted({c for _, c, _ in items})
    if not items:
        raise ValueError("No images found: put each class's images in a sub-folder named after the class.")
    return check_classes(classes), items, skipped


def batch_log(source: Path, classes: list[str], names: list[str], params: ClassifyParams, results_dir: Path) -> Path:
    """The JSON-lines file a batch's per-image results go to, named after the dataset and settings: the same batch
    run again (here, or on a cluster: studio/batch) finds its results and resumes."""
    key = json.dumps([source.name, classes, names, asdict(params)], sort_keys=True, default=list)
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir / f"{source.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.jsonl"


def read_log(log: Path) -> dict[str, dict]:
    """The results a batch has written so far, by file name."""
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["file"]] = row
    return done


def classify_item(pipe: StableDiffusionPipeline, name: str, truth: str, data: bytes, classes: list[str],
                  params: ClassifyParams, *, max_pixels: int = MAX_PIXELS,
                  should_stop: StopFn | None = None) -> dict | None:
    """One image of a batch → its result row (file, truth, predicted, the winner's error, UNet calls), or None when
    the file is not a readable image."""
    try:
        image = load_image(data, name=name, max_pixels=max_pixels)
    except (ValueError, zipfile.BadZipFile, OSError):  # not an image, or a damaged zip member
        return None
    result = classify(pipe, image, classes, params, should_stop=should_stop)
    return {"file": name, "truth": truth, "predicted": result.label, "error": result.ranking[0][1],
            "unet_calls": result.unet_calls}


def classify_batch(pipe: StableDiffusionPipeline, source: Path, params: ClassifyParams, results_dir: Path, *,
                   max_new: int | None = None, max_pixels: int = MAX_PIXELS, on_image: StepFn | None = None,
                   should_stop: StopFn | None = None) -> BatchResult:
    """Classify every image of a labelled folder or zip. Each image's result is appended to a JSON-lines file named
    after the dataset and settings, so running the same batch again resumes where it stopped. With `max_new`, at
    most that many images are classified in this call (one ZeroGPU call's share); the result says how many are
    still pending."""
    classes, items, skipped = labelled_images(source)
    log = batch_log(source, classes, [n for n, _, _ in items], params, results_dir)
    done = read_log(log)
    new = pending = 0
    with log.open("a") as out:
        for i, (name, truth, read) in enumerate(items):
            if name not in done and max_new is not None and new >= max_new:
                pending += 1
                continue
            if name not in done:
                try:
                    data = read()
                except (zipfile.BadZipFile, OSError):  # a damaged zip member
                    skipped.append(name)
                    continue
                row = classify_item(pipe, name, truth, data, classes, params, max_pixels=max_pixels,
                                    should_stop=should_stop)
                if row is None:
                    skipped.append(name)
                    continue
                done[name] = row
                out.write(json.dumps(row) + "\n")
                out.flush()
                new += 1
            if on_image:
                on_image(i + 1, len(items))
    rows = [done[n] for n, _, _ in items if n in done]
    return BatchResult(classes, rows, skipped, pending)
