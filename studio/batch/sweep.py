"""DreamBooth sweeps: how often a recipe teaches the concept, over a grid of its settings, here or on Ray.

A sweep varies one or two `TrainParams` fields of a base recipe (seeds × learning rates, say). Each point is a
training job of its own, a LoRA library folder `<sweep>-<field><value>-...` as the Train tab makes it, judged the
way `tests/test_trainer_shapes.py` judges the shapes-concept preset: `eval_seeds` images of the instance prompt
(seeds 100, 101, ...) with the LoRA at scale 1, a success each time the Shapes detector sees the concept's shape as
the largest region. On Shapes one recipe already gives 8 to 15 crosses of 20 over training seeds, which is what a
sweep shows at a glance.

A point's row goes to the sweep's JSON-lines file (`loras/.sweeps/`) after its folder is complete, so a run that
stops resumes with the points that have no row. On a cluster a worker trains in its own scratch folder and sends
the folder's files back, written here exactly as a local point writes them.
"""

import hashlib
import io
import itertools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image

from studio.batch.cluster import Pool, Progress, Shard, Station, WorkerStats
from studio.generate import GenerateParams, run_generate
from studio.jobs import StopFn
from studio.lora import check_name
from studio.models import ModelManager
from studio.params import Params, choice, ranged
from studio.shapes.concepts import CONCEPTS, shown_shape
from studio.trainer import TrainParams, TrainState, train

NO_JUDGE = "none"  # no detector for the concept: points are compared by their final loss
MAX_POINTS = 16
EVAL_FIRST_SEED = 100
EVAL_BATCH = 5  # images drawn per model call while judging
MARKER = ".sweep"  # in a point's folder: the sweep it belongs to (only such folders are ever replaced)
SKIPPED = {"checkpoints"}  # not sent back from a worker: the finished folder does not need them


def sweepable() -> list[str]:
    """The TrainParams fields a sweep may vary: those with a range or a set of choices."""
    return [f.name for f in fields(TrainParams) if "min" in f.metadata or "choices" in f.metadata]


def parse_setting(text: str) -> tuple[str, list]:
    """"lr=1e-3, 2e-3" → ("lr", [0.001, 0.002]): a TrainParams field and its values, each of the field's type
    (whole numbers stay whole for whole-number fields; 1.5 steps stays 1.5, for TrainParams to refuse)."""
    name, sep, values = text.partition("=")
    name, texts = name.strip(), [v.strip() for v in values.split(",") if v.strip()]
    known = {f.name for f in fields(TrainParams)}
    if not sep or name not in known or not texts:
        raise ValueError(f"Write a setting as field=value[, value ...] with a field of TrainParams (got {text!r}).")
    default = TrainParams.default(name)
    if isinstance(default, bool):
        return name, [t.lower() in ("1", "true", "yes", "on") for t in texts]
    if not isinstance(default, (int, float)):
        return name, texts
    try:
        numbers = [float(t) for t in texts]
    except ValueError:
        raise ValueError(f"{name} takes numbers: {values!r}") from None
    return name, [int(v) if isinstance(default, int) and v.is_integer() else v for v in numbers]


@dataclass
class SweepParams(Params):
    """The swept `axes` (one or two fields, each with its values), and how each point is judged."""

    axes: list[tuple[str, list]] = field(default_factory=lambda: [("seed", [0, 1]), ("lr", [1e-3, 2e-3])])
    concept: str = choice(next(iter(CONCEPTS)), (*CONCEPTS, NO_JUDGE),
                          "The Shapes concept a success draws (none: compare final losses).")
    eval_prompt: str = ""  # empty: the instance prompt
    eval_seeds: int = ranged(20, 1, 200, 1, "Images drawn with each point's LoRA to count its successes.")
    eval_steps: int = ranged(20, 1, 100, 1, "Denoising steps of each of those images.")

    def check(self) -> None:
        self.axes = [(str(name), list(values)) for name, values in self.axes]
        names = [name for name, _ in self.axes]
        if not 1 <= len(names) <= 2 or len(set(names)) != len(names):
            raise ValueError("A sweep varies one or two different settings.")
        if bad := [n for n in names if n not in sweepable()]:
            raise ValueError(f"{bad[0]} cannot be swept; choose from {', '.join(sweepable())}.")
        if any(not values or len(set(values)) != len(values) for _, values in self.axes):
            raise ValueError("Each swept setting needs one or more different values.")
        count = len(list(itertools.product(*(values for _, values in self.axes))))
        if count > MAX_POINTS:
            raise ValueError(f"{count} points is more than a sweep takes ({MAX_POINTS}); give fewer values.")


@dataclass
class Point:
    name: str  # its LoRA folder
    settings: dict[str, Any]
    params: TrainParams


def grid(name: str, base: TrainParams, sweep: SweepParams) -> list[Point]:
    """Every combination of the swept values, in order (the first axis slowest); each point checked as built."""
    points = []
    for values in itertools.product(*(v for _, v in sweep.axes)):
        settings = dict(zip([n for n, _ in sweep.axes], values))
        label = "-".join(f"{n.replace('_', '')}{v:g}" if isinstance(v, float) else f"{n.replace('_', '')}{v}"
                         for n, v in settings.items())
        points.append(Point(check_name(f"{name}-{label}"), settings, replace(base, **settings)))
    return points


def judge(manager: ModelManager, spec: str, folder: Path, params: TrainParams, sweep: SweepParams,
          should_stop: StopFn | None = None) -> int | None:
    """How many of the evaluation images show the concept's shape; None without a concept to look for."""
    if sweep.concept == NO_JUDGE:
        return None
    shape = CONCEPTS[sweep.concept][0]
    found = 0
    with manager.lend(spec, loras=[(folder, 1.0)]) as pipe:
        pipe.set_progress_bar_config(disable=True)
        for first in range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + sweep.eval_seeds, EVAL_BATCH):
            n = min(EVAL_BATCH, EVAL_FIRST_SEED + sweep.eval_seeds - first)
            drawn = run_generate(pipe, GenerateParams(sweep.eval_prompt or params.instance_prompt, seed=first,
                                                      steps=sweep.eval_steps, width=params.resolution,
                                                      height=params.resolution, n_images=n),
                                 should_stop=should_stop).images
            found += sum(shown_shape(image) == shape for image in drawn)
    return found


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class SweepContext:
    """What every point of a cluster sweep shares: the subject's images (PNG, lossless) and how to judge."""

    images: list[bytes]
    sweep: SweepParams
    key: str


def sweep_shard(station: Station, points: list[Point], context: SweepContext) -> list[tuple[dict, dict[str, bytes]]]:
    """On a worker: train and judge each point in the scratch folder, and send back its row and its files."""
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in context.images]
    out = []
    for point in points:
        folder = station.scratch / "loras" / point.name
        shutil.rmtree(folder, ignore_errors=True)
        row = train_point(station.manager, station.spec, folder, point, images, context.sweep, context.key)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                 if p.is_file() and not SKIPPED & set(p.relative_to(folder).parts)}
        shutil.rmtree(folder)
        out.append((row, files))
    return out


def train_point(manager: ModelManager, spec: str, folder: Path, point: Point, images: list[Image.Image],
              sweep: SweepParams, key: str, *, state: TrainState | None = None,
              should_stop: StopFn | None = None) -> dict:
    """Train one point into `folder` and judge it: its row."""
    started = time.perf_counter()
    state = state or TrainState()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(key)
    train(manager, spec, folder, point.params, images, state=state, should_stop=should_stop)
    success = judge(manager, spec, folder, point.params, sweep, should_stop)
    return {"point": point.name, "settings": point.settings, "success": success, "of": sweep.eval_seeds,
            "final_loss": state.losses[-1][1] if state.losses else None,
            "seconds": round(time.perf_counter() - started, 2)}


class SweepRun:
    """One sweep: its points, the file its rows go to, and what is done. The same for a local and a cluster run."""

    def __init__(self, spec: str, loras_root: Path, name: str, base: TrainParams, sweep: SweepParams,
                 images: list[Image.Image]):
        self.spec, self.root, self.sweep, self.images = spec, loras_root, sweep, images
        self.points = grid(check_name(name), base, sweep)
        content = [spec, asdict(base), asdict(sweep), [hashlib.sha1(i.tobytes()).hexdigest() for i in images]]
        self.key = hashlib.sha1(json.dumps(content, sort_keys=True, default=list).encode()).hexdigest()[:10]
        self.log = loras_root / ".sweeps" / f"{name}-{self.key}.jsonl"
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.done = {row["point"]: row for row in map(json.loads, filter(str.strip, lines))}

    def pending(self) -> list[Point]:
        return [p for p in self.points if p.name not in self.done]

    def _foreign(self, point: Point) -> bool:
        """A folder of that name that is not this sweep's (someone's LoRA, which a sweep never touches)."""
        folder, marker = self.root / point.name, self.root / point.name / MARKER
        return folder.exists() and not (marker.is_file() and marker.read_text() == self.key)

    def check_names(self) -> None:
        """Every pending point's folder is absent or this sweep's own (a point it left unfinished, redone from the
        start)."""
        for point in self.pending():
            if self._foreign(point):
                raise ValueError(f"A LoRA named {point.name!r} exists already and is not a point of this sweep: "
                                 "give the sweep another name.")

    def _clear(self, point: Point) -> None:
        self.check_names()
        shutil.rmtree(self.root / point.name, ignore_errors=True)

    def record(self, row: dict, files: dict[str, bytes] | None = None) -> None:
        """A finished point: its folder's files (from a worker), then its row."""
        point = next(p for p in self.points if p.name == row["point"])
        if point.name in self.done:
            return
        if files is not None:
            self._clear(point)
            for relative, data in files.items():
                path = self.root / point.name / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            out.write(json.dumps(row) + "\n")
        self.done[point.name] = row

    def train(self, manager: ModelManager, point: Point, *, state: TrainState | None = None,
              should_stop: StopFn | None = None) -> dict:
        """One point on this process's model, into the library: its row, for `record` (which the caller does, in
        the process that keeps this run: a ZeroGPU call runs in a worker process of its own)."""
        self._clear(point)
        return train_point(manager, self.spec, self.root / point.name, point, self.images, self.sweep, self.key,
                           state=state, should_stop=should_stop)

    def run_here(self, manager: ModelManager, *, on_progress: Callable[[Progress], None] | None = None,
                 should_stop: StopFn | None = None) -> Progress:
        self.check_names()
        todo = self.pending()
        progress = Progress(len(todo), "points", workers=[WorkerStats("here", time.monotonic())])
        for point in todo:
            self.record(self.train(manager, point, should_stop=should_stop))
            progress.done += 1
            progress.workers[0].done += 1
            if on_progress:
                on_progress(progress)
        return progress

    def run_on(self, pool: Pool, *, on_progress: Callable[[Progress], None] | None = None,
               should_stop: StopFn | None = None) -> Progress:
        """Each pending point is one shard; its worker trains it from the same images and settings."""
        if pool.spec != self.spec:
            raise ValueError(f"The workers hold {pool.spec}, the sweep trains {self.spec}.")
        self.check_names()
        shards = [Shard(i, 1, lambda p=p: [p]) for i, p in enumerate(self.pending())]
        if not shards:
            return Progress(0, "points")
        context = SweepContext([png(i) for i in self.images], self.sweep, self.key)
        return pool.run(sweep_shard, context, shards, unit="points", on_progress=on_progress, should_stop=should_stop,
                        on_result=lambda _, results: [self.record(row, files) for row, files in results])

    def rows(self) -> list[dict]:
        return [self.done[p.name] for p in self.points if p.name in self.done]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The grid: the first axis down, the second across; each cell "successes/of" (or the final loss, with no
        concept to judge), "…" while pending."""
        (first, down), *rest = self.sweep.axes
        across = rest[0][1] if rest else [None]
        header = [first] + ([f"{rest[0][0]} = {v:g}" if isinstance(v, float) else f"{rest[0][0]} = {v}"
                             for v in across] if rest else ["result"])
        cells = {tuple(p.settings.values()): self.done.get(p.name) for p in self.points}
        body = []
        for value in down:
            line = [f"{value:g}" if isinstance(value, float) else str(value)]
            for other in across:
                row = cells[(value, other) if rest else (value,)]
                line.append("…" if row is None else f"{row['success']}/{row['of']}" if row["success"] is not None
                            else f"loss {row['final_loss']:.4f}")
            body.append(line)
        return header, body
