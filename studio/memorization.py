"""The memorization probe of Carlini et al. (2023), *Extracting Training Data from Diffusion Models*: draw many
samples of one prompt and ask, for each, how far it is from its nearest training image. A sample closer than a
threshold δ is a copy (their Definition 1, an image "extracted" from the model).

The paper compares 512-px photographs with a *tiled* ℓ2 (the largest ℓ2 over 16 tiles, Sec. 4), so that a large
matching background cannot hide a differing region, and on CIFAR-10 an ℓ2 divided by the mean distance to the
nearest other training images (Sec. 5). Here both images are scaled to 64×64 RGB in [0, 1] and compared by their
per-pixel RMS distance, sqrt(mean((a − b)²)), in [0, 1]: 0 is the same picture, 1 white against black. On the
Shapes scenes a max over 16×16 tiles is decided by the one tile that holds a shape's edge (0.25 for the closest two
of the five cross renders, against 0.107 RMS), while the plain RMS already separates a copy from its closest changed
scene (measured, below), and it is one number per pair that a student can check by hand.

The default threshold, measured on the Shapes world (`python -m pytest -q tests/test_memorization.py -k threshold`
checks these numbers):
- the Shapes model's VAE alone (encode, decode) moves the five green-cross renders by 0.018–0.028: a perfect copy
  drawn by the model is that far from its original;
- the same cross render with one attribute changed is at least 0.044 away (another shape at the same cell; the small
  cross 0.046; moved one cell 0.106); two of the five renders are at least 0.107 apart;
- in the whole world the closest changed scenes are shapes of similar outline (a small purple circle and square
  on gray: 0.021; a large green diamond and circle on black: 0.039), which no RMS at 64 px tells apart.
So THRESHOLD = 0.04: above what the VAE costs, below any change of the trained concept; against the world, a "copy"
may have one shape swapped for a look-alike, which is why the probe shows the held-out baseline beside it.

Reference sets: `WorldIndex`, the Shapes model's exact training set (the 20,000 scenes `sample_scene(i)`), searched
exactly; `ImageSet`, a list or folder of images (a LoRA job's `instance/` folder). Each also gives a *baseline*: how
close images that were *not* trained on come (fresh world scenes; each reference image to its nearest other one), so
a sample is judged against what chance alone gives.
"""

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio.images import flatten_alpha, load_image
from studio.jobs import Cancelled, StepFn, StopFn
from studio.params import Params, choice, ranged
from studio.sampling import SCHEDULERS, pick_seed, seed_field, txt2img
from studio.shapes.world import sample_scene

SIDE = 64  # both images are compared at this size
PREFILTER = 32  # the world index keeps each scene at this side, uint8, for the first pass
THRESHOLD = 0.04  # see the module's docstring for the measurements behind it
WORLD_SCENES = 20_000  # the shipped Shapes model was trained on sample_scene(i) for i in range(WORLD_SCENES)
HELD_OUT_FIRST, HELD_OUT_SCENES = 10_000_000, 200  # fresh scenes of the same world, never trained on
RENDERS = (16, 64)  # exact re-ranking renders at least, at most, this many candidates per query
BATCH = 8  # samples denoised together
BINS = 20
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class MemorizationParams(Params):
    """One probe: `n_samples` images of `prompt` (seeds seed, seed + 1, …), each compared with the reference set."""

    LIMITS = {"n_samples": "max_batch_images"}  # a public studio bounds the samples as it bounds a batch's images

    prompt: str = ""
    n_samples: int = ranged(20, 1, 200, 1, "Samples drawn; the paper draws 500 per prompt.")
    seed: int = seed_field(0, "Sample i uses seed + i; -1 picks a random seed.")
    steps: int = ranged(20, 1, 150, 1, "Denoising steps per sample.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance (1 = off).")
    scheduler: str = choice("DPM++ 2M", tuple(SCHEDULERS), "The sampler.")
    threshold: float = ranged(THRESHOLD, 0.001, 1, 0.001, "δ: a sample closer than this (RMS over 64×64 RGB in "
                              "[0, 1]) to a reference image counts as a copy.")


@dataclass
class Match:
    """A sample's nearest reference image: its name ("scene 1234", "03.png"), its key (seed or position), the RMS
    distance, and the image itself (at the reference's own size)."""

    name: str
    key: int
    distance: float
    image: Image.Image = field(repr=False)


@dataclass
class Baseline:
    """Nearest-neighbour distances of images that were *not* trained on, to compare the samples' with."""

    label: str
    distances: list[float]


class Reference(Protocol):
    label: str

    def nearest(self, images: list[Image.Image], *, should_stop: StopFn | None = None) -> list[Match]: ...

    def baseline(self) -> Baseline: ...


def pixels(image: Image.Image, side: int = SIDE) -> np.ndarray:
    """side × side × 3 floats in [0, 1]; transparency goes on white. Shrinking averages (box filter), so a 64-px
    image seen at 32 px is its 2×2 means."""
    rgb = flatten_alpha(image)[0]
    if rgb.size != (side, side):
        shrink = rgb.width >= side and rgb.height >= side
        rgb = rgb.resize((side, side), Image.BOX if shrink else Image.BICUBIC)
    return np.asarray(rgb, np.float32) / 255


def distance(a: Image.Image, b: Image.Image) -> float:
    """The probe's distance: per-pixel RMS over 64×64 RGB in [0, 1]."""
    return float(np.sqrt(np.mean((pixels(a) - pixels(b)) ** 2)))


def rms(query: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """The RMS distance of one flattened image to each row of `refs`, computed directly (0 for the same pixels)."""
    return np.sqrt(np.mean((refs - query) ** 2, axis=1))


def pairwise(queries: np.ndarray, refs: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """RMS distances between rows (n × d floats in [0, 1], m × d floats or uint8) as an n × m array, by
    |a|² + |b|² − 2a·b in chunks of the references (a uint8 index is converted a chunk at a time). Fast, and off by
    up to about 1e-3 near 0 (float32 cancellation): for bounds, not for reporting. torch does the products, so they
    use the threads the caller gave torch."""
    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    q_norms = (q * q).sum(1, keepdim=True)
    out = []
    for start in range(0, len(refs), chunk):
        r = torch.from_numpy(np.ascontiguousarray(refs[start:start + chunk])).float()
        if refs.dtype == np.uint8:
            r /= 255
        squared = q_norms + (r * r).sum(1) - 2 * q @ r.T
        out.append((squared.clamp(min=0) / q.shape[1]).sqrt())
    return torch.cat(out, 1).numpy()


class WorldIndex:
    """The Shapes model's training set, searched exactly: scenes `sample_scene(first + i)` for i < n_scenes.

    Built once (rendering 20,000 scenes takes about 30 s on one core) and then shared read-only: each scene is kept
    at 32 px as uint8 (61 MB). A query's 32-px distance to every scene is a lower bound of its 64-px distance (a
    2×2 mean of the differences is never larger than their RMS; uint8 rounding costs at most 1/255), so the
    candidates are re-rendered at 64 px in order of that bound until the bound passes the best exact distance found
    (at least 16, at most 64 renders): the nearest scene is exact whenever the search stops before the cap. Several
    seeds draw the same scene (a single red circle on white comes up again and again); ties go to the lowest seed."""

    def __init__(self, n_scenes: int = WORLD_SCENES, *, first: int = 0, split: str = "train"):
        if n_scenes < 1:
            raise ValueError(f"The index needs at least one scene, got {n_scenes}.")
        self.n_scenes, self.first, self.split = n_scenes, first, split
        self.label = f"the Shapes world's training set ({n_scenes:,} scenes)"
        self._small: np.ndarray | None = None
        self._baseline: Baseline | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._small is not None

    def scene(self, seed: int) -> Image.Image:
        return sample_scene(seed, side=SIDE, split=self.split).image

    def build(self, *, on_step: StepFn | None = None, should_stop: StopFn | None = None) -> "WorldIndex":
        """Render every scene once (a second call returns at once). Raises `Cancelled` and keeps nothing."""
        with self._lock:
            if self._small is None:
                small = np.empty((self.n_scenes, PREFILTER * PREFILTER * 3), np.uint8)
                for i in range(self.n_scenes):
                    if i % 500 == 0:
                        if should_stop and should_stop():
                            raise Cancelled("Building the world index cancelled")
                        if on_step:
                            on_step(i, self.n_scenes)
                    image = self.scene(self.first + i).resize((PREFILTER, PREFILTER), Image.BOX)
                    small[i] = np.asarray(image).reshape(-1)
                self._small = small
        if on_step:
            on_step(self.n_scenes, self.n_scenes)
        return self

    def nearest(self, images: list[Image.Image], *, should_stop: StopFn | None = None) -> list[Match]:
        self.build(should_stop=should_stop)
        queries = np.stack([pixels(image) for image in images])
        small = queries.reshape(len(images), PREFILTER, 2, PREFILTER, 2, 3).mean((2, 4)).reshape(len(images), -1)
        # 1/255 covers the index's uint8 rounding (at most 0.5/255) and pairwise's float error (about 1e-3)
        bounds = pairwise(small, self._small) - 1 / 255
        matches = []
        for query, bound in zip(queries, bounds):
            if should_stop and should_stop():
                raise Cancelled("Search cancelled")
            order = np.argsort(bound, kind="stable")  # stable: among equal bounds the lower seed first
            best: tuple[float, int, Image.Image] | None = None
            for rank, i in enumerate(order[:RENDERS[1]]):
                if rank >= RENDERS[0] and best is not None and bound[i] > best[0]:
                    break
                image = self.scene(self.first + int(i))
                d = float(np.sqrt(np.mean((query - pixels(image)) ** 2)))
                if best is None or d < best[0] or (d == best[0] and i < best[1]):
                    best = (d, int(i), image)
            d, i, image = best
            matches.append(Match(f"scene {self.first + i}", self.first + i, d, image))
        return matches

    def baseline(self) -> Baseline:
        """`held_out_distances` of this index, computed once."""
        if self._baseline is None:
            self._baseline = held_out_distances(self)
        return self._baseline


def held_out_distances(index: WorldIndex, n: int = HELD_OUT_SCENES, first: int = HELD_OUT_FIRST) -> Baseline:
    """How close fresh draws of the same world come to the training set: the scenes `sample_scene(first + i)`, never
    trained on, searched in `index`. Many are at 0 (the world repeats its simple scenes), so a model that draws
    plausible scenes finds "copies" this often by chance alone; a memorising model finds them more often."""
    scenes = [sample_scene(first + i, side=SIDE, split=index.split).image for i in range(n)]
    return Baseline(f"held-out world scenes (seeds {first:,} to {first + n - 1:,})",
                    [m.distance for m in index.nearest(scenes)])


class ImageSet:
    """A few reference images (a LoRA's training images), searched exhaustively at 64 px."""

    def __init__(self, images: list[Image.Image], names: list[str] | None = None, label: str = "the images"):
        if not images:
            raise ValueError("The reference set is empty: give at least one image.")
        self.images, self.label = images, label
        self.names = names or [f"image {i}" for i in range(len(images))]
        self._pixels = np.stack([pixels(image).reshape(-1) for image in images])

    @classmethod
    def from_folder(cls, folder: Path, label: str | None = None) -> "ImageSet":
        """Every image file directly in `folder` (png, jpg, webp, bmp), by name."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder.")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)
        if not paths:
            raise ValueError(f"No images ({', '.join(IMAGE_TYPES)}) in {folder}.")
        return cls([load_image(p) for p in paths], [p.name for p in paths], label or f"the images in {folder.name}/")

    def nearest(self, images: list[Image.Image], *, should_stop: StopFn | None = None) -> list[Match]:
        matches = []
        for image in images:
            row = rms(pixels(image).reshape(-1), self._pixels)
            i = int(row.argmin())
            matches.append(Match(self.names[i], i, float(row[i]), self.images[i]))
        return matches

    def baseline(self) -> Baseline:
        """Each reference image's distance to its nearest *other* one: how alike the set itself is."""
        if len(self.images) < 2:
            return Baseline("(one reference image: no baseline)", [])
        table = np.stack([rms(row, self._pixels) for row in self._pixels])
        np.fill_diagonal(table, np.inf)
        return Baseline("each reference image to its nearest other one", [float(d) for d in table.min(1)])


@dataclass
class Histogram:
    """Counts per bin over `edges` (len(edges) = bins + 1), for the samples and the baseline."""

    edges: list[float]
    samples: list[int]
    baseline: list[int]


@dataclass
class MemorizationResult:
    samples: list[Image.Image]
    seed: int
    matches: list[Match]  # aligned with samples
    threshold: float
    baseline: Baseline
    reference: str  # the reference set's label
    warnings: list[str] = field(default_factory=list)

    @property
    def distances(self) -> list[float]:
        return [m.distance for m in self.matches]

    @property
    def pairs(self) -> list[int]:
        """Sample indices, closest to their nearest reference image first."""
        return sorted(range(len(self.matches)), key=lambda i: self.matches[i].distance)

    @property
    def fraction_copied(self) -> float:
        return float(np.mean([d < self.threshold for d in self.distances]))

    @property
    def median(self) -> float:
        return float(np.median(self.distances))

    def histogram(self, bins: int = BINS) -> Histogram:
        """Both distributions over one set of bins, from 0 to past the largest distance and twice the threshold."""
        top = max([*self.distances, *self.baseline.distances, 2 * self.threshold])
        edges = np.linspace(0, top * 1.0001, bins + 1)
        counts = [np.histogram(values, edges)[0].tolist() for values in (self.distances, self.baseline.distances)]
        return Histogram(edges.tolist(), *counts)


def run_memorization(pipe: DiffusionPipeline, reference: Reference, params: MemorizationParams, *,
                     on_step: StepFn | None = None, should_stop: StopFn | None = None) -> MemorizationResult:
    """Draw `params.n_samples` samples of `params.prompt` at the model's native size and find each one's nearest
    image in `reference` (Carlini et al. 2023, Sec. 4: generate many, flag those within δ of a training image).
    `on_step` counts denoising steps over all batches of samples. Raises `Cancelled` when `should_stop()` turns true."""
    # 1. Inputs (ranges were checked when `params` was built)
    seed = pick_seed(params.seed, params.n_samples)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    warnings = [] if params.prompt.strip() else ["The prompt is empty: these are unconditional samples."]
    total = -(-params.n_samples // BATCH) * params.steps

    # 2. Samples, a batch at a time, with the progress counted over all the batches' steps
    samples: list[Image.Image] = []
    while len(samples) < params.n_samples:
        n, done = min(BATCH, params.n_samples - len(samples)), len(samples) // BATCH * params.steps
        samples += txt2img(pipe, params.prompt, seed=seed + len(samples), n=n, steps=params.steps, cfg=params.cfg,
                           width=side, height=side, scheduler=params.scheduler,
                           on_step=on_step and (lambda i, _, done=done: on_step(done + i, total)),
                           should_stop=should_stop)

    # 3. Nearest reference images, and what chance alone gives
    matches = reference.nearest(samples, should_stop=should_stop)
    return MemorizationResult(samples, seed, matches, params.threshold, reference.baseline(), reference.label,
                              warnings)


def draw_result(result: MemorizationResult, n_pairs: int = 6, scale: int = 2) -> Image.Image:
    """One picture of the probe: the `n_pairs` closest samples over their nearest reference images (a red frame:
    under the threshold, a copy), and below them the histogram of the samples' distances against the baseline's, as
    fractions of each, with the threshold drawn in."""
    from PIL import ImageDraw, ImageFont  # drawing only

    font, tile, pad = ImageFont.load_default(), SIDE * scale, 10
    shown = result.pairs[:n_pairs]
    width = max(len(shown), 5) * (tile + pad) + pad
    labels = 16 + 2 * (tile + pad)  # the y of the pairs' captions
    plot_top, plot_h = labels + 80, 180
    canvas = Image.new("RGB", (width, plot_top + plot_h + 50), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), "closest samples (top) and their nearest reference image (bottom)", fill="black", font=font)
    for k, i in enumerate(shown):
        x, match = pad + k * (tile + pad), result.matches[i]
        for row, image in enumerate((result.samples[i], match.image)):
            y = 16 + row * (tile + pad)
            canvas.paste(flatten_alpha(image)[0].resize((tile, tile), Image.NEAREST), (x, y))
            copied = match.distance < result.threshold
            draw.rectangle([x - 2, y - 2, x + tile + 1, y + tile + 1], outline="red" if copied else "#bbb", width=2)
        draw.text((x, labels), f"seed {result.seed + i}: {match.distance:.3f}", fill="black", font=font)
        draw.text((x, labels + 12), match.name[:22], fill="#555", font=font)

    # The histogram: fractions, since the two sets have different sizes
    hist = result.histogram()
    left, right, base_y = pad + 30, width - pad, plot_top + plot_h
    span = hist.edges[-1] - hist.edges[0]
    to_x = (lambda d: left + (right - left) * (d - hist.edges[0]) / span)
    fractions = [[c / max(sum(counts), 1) for c in counts] for counts in (hist.samples, hist.baseline)]
    top = max(max(f) for f in fractions) or 1
    for b in range(len(hist.samples)):
        x0, x1 = to_x(hist.edges[b]), to_x(hist.edges[b + 1])
        for j, (colour, values) in enumerate(zip(("#3b6fd8", "#aaaaaa"), fractions)):
            half = (x1 - x0) / 2
            h = plot_h * values[b] / top
            draw.rectangle([x0 + j * half + 1, base_y - h, x0 + (j + 1) * half - 1, base_y], fill=colour)
    draw.line([left, base_y, right, base_y], fill="black")
    tick = next(t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if span / t <= 8)  # a few round ticks
    for d in np.arange(0, hist.edges[-1], tick):
        draw.line([to_x(d), base_y, to_x(d), base_y + 4], fill="black")
        draw.text((to_x(d) - 12, base_y + 6), f"{d:.2f}", fill="black", font=font)
    xt = to_x(result.threshold)
    draw.line([xt, plot_top - 10, xt, base_y], fill="red", width=2)
    draw.text((xt + 4, plot_top - 12), f"threshold {result.threshold:.3f}", fill="red", font=font)
    baseline = result.baseline.label  # the default bitmap font has ASCII only: keep labels ASCII
    draw.text((left, base_y + 20), "distance to the nearest reference image (RMS at 64x64), as a fraction of each "
              "set", fill="black", font=font)
    draw.text((left, base_y + 32), f"blue = samples ({len(result.samples)}), grey = {baseline} "
              f"({len(result.baseline.distances)})", fill="black", font=font)
    draw.text((pad, labels + 36), f"{result.fraction_copied:.0%} of samples under the threshold; "
              f"reference: {result.reference}", fill="black", font=font)
    return canvas
