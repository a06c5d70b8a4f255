"""A Classify batch over a labelled dataset, here (today's `classify_batch`) or on a Ray cluster.

On the cluster the images are read here (so the workers need no access to the dataset, and the operator's folder
rules apply here) and sent a shard at a time; each worker classifies them with `classify_item`, the function the
local batch uses, and the rows come back to be appended to the batch's own results file (`batch_log`). The
classifier's shared noise depends only on the seed, so a row is the same whichever worker made it.
"""

import hashlib
import json
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from studio.batch.cluster import Pool, Progress, Shard, Station, WorkerStats
from studio.classify import (MAX_FILES, BatchResult, ClassifyParams, batch_log, classify_batch, classify_item,
                             labelled_images, read_log)
from studio.images import MAX_PIXELS
from studio.jobs import StopFn
from studio.lora import weights_file
from studio.models import ModelManager
from studio.shapes.world import BACKGROUNDS, POSITIONS, SIZES, ShapeSpec, render

SHARD_IMAGES = 4  # images per task: small enough that a lost worker costs little, large enough to keep it busy
SHAPES_CLASSES = ["red circle", "blue square", "green triangle", "yellow star"]


@dataclass
class BatchContext:
    """What every shard of a batch shares: the class list, the settings, and the LoRAs applied (as file bytes, since
    a worker's node may not see this one's files)."""

    classes: list[str]
    params: ClassifyParams
    max_pixels: int
    loras: list[tuple[bytes, float]]


def shipped_loras(loras: list[tuple[str | Path, float]]) -> list[tuple[bytes, float]]:
    return [(weights_file(source).read_bytes(), float(scale)) for source, scale in loras]


def lora_files(station: Station, loras: list[tuple[bytes, float]]) -> list[tuple[Path, float]]:
    """The shipped LoRAs as files in the worker's scratch folder (written once each, named by their content)."""
    paths = []
    for data, scale in loras:
        path = station.scratch / "loras" / f"{hashlib.sha1(data).hexdigest()[:16]}.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        paths.append((path, scale))
    return paths


def classify_shard(station: Station, payload: list[tuple[str, str, bytes | None]],
                   context: BatchContext) -> list[tuple[str, dict | None]]:
    """On a worker: each image's row, or None for a file that is not an image."""
    with station.manager.lend(station.spec, loras=lora_files(station, context.loras)) as pipe:
        return [(name, None if data is None else classify_item(pipe, name, truth, data, context.classes,
                                                                context.params, max_pixels=context.max_pixels))
                for name, truth, data in payload]


def _read(read: Callable[[], bytes]) -> bytes | None:
    try:
        return read()
    except (zipfile.BadZipFile, OSError):  # a damaged zip member: skipped, as the local batch does
        return None


def classify_on_cluster(pool: Pool, source: Path, params: ClassifyParams, results_dir: Path, *,
                        loras: list[tuple[str | Path, float]] | None = None, shard_images: int = SHARD_IMAGES,
                        max_files: int = MAX_FILES, max_pixels: int = MAX_PIXELS,
                        on_progress: Callable[[Progress, BatchResult], None] | None = None,
                        should_stop: StopFn | None = None) -> BatchResult:
    """`classify_batch` on a cluster's workers (`pool`, of the model to use): the same results file, resumed the same
    way (only images without a row are sent), the same rows."""
    # 1. The dataset, its results file and what is still missing, in shards
    classes, items, skipped = labelled_images(source, max_files=max_files)
    log = batch_log(source, classes, [n for n, _, _ in items], params, results_dir)
    done = read_log(log)
    todo = [item for item in items if item[0] not in done]
    shards = [Shard(i, len(chunk), lambda chunk=chunk: [(n, truth, _read(read)) for n, truth, read in chunk])
              for i, chunk in enumerate(todo[k : k + shard_images] for k in range(0, len(todo), shard_images))]

    def result() -> BatchResult:
        return BatchResult(classes, [done[n] for n, _, _ in items if n in done], list(skipped),
                           pending=sum(n not in done and n not in skipped for n, _, _ in items))

    # 2. Each shard's rows are written here the moment they arrive, once each
    with log.open("a") as out:
        def write(shard: Shard, rows: list[tuple[str, dict | None]]) -> None:
            for name, row in rows:
                if row is None:
                    skipped.append(name)
                elif name not in done:
                    done[name] = row
                    out.write(json.dumps(row) + "\n")
            out.flush()

        if shards:
            pool.run(classify_shard, BatchContext(classes, params, max_pixels, shipped_loras(loras or [])), shards,
                     on_result=write, should_stop=should_stop, unit="images",
                     on_progress=(lambda progress: on_progress(progress, result())) if on_progress else None)
    return result()


def shapes_folder(root: Path, per_class: int = 6, classes: list[str] = SHAPES_CLASSES, seed: int = 0) -> Path:
    """A labelled dataset of Shapes renders, one sub-folder per class ("red_circle/0.png"), at random cells, sizes and
    backgrounds: what the tests and the throughput benchmark classify, and a stand-in for CIFAR-10's layout."""
    rng = random.Random(seed)
    for name in classes:
        colour, shape = name.split()
        (root / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            spec = ShapeSpec(shape, colour, rng.choice(list(POSITIONS)), rng.choice(list(SIZES)))
            render([spec], (rng.choice(list(BACKGROUNDS)),))[0].save(root / name.replace(" ", "_") / f"{i}.png")
    return root


def written(source: Path, params: ClassifyParams, results_dir: Path) -> int:
    """How many of the dataset's images have a result already (a run of these settings that stopped)."""
    classes, items, _ = labelled_images(source)
    names = [n for n, _, _ in items]
    return len(read_log(batch_log(source, classes, names, params, results_dir)).keys() & set(names))


def classify_here(manager: ModelManager, spec: str, source: Path, params: ClassifyParams, results_dir: Path, *,
                  loras: list[tuple[str | Path, float]] | None = None,
                  on_progress: Callable[[Progress, BatchResult], None] | None = None,
                  should_stop: StopFn | None = None) -> BatchResult:
    """The local path, as the Classify tab runs it: `classify_batch` on this process's model."""
    progress = Progress(0, "images", workers=[WorkerStats("here", 0.0)])

    def on_image(i: int, n: int) -> None:
        progress.total, progress.done = n, i
        progress.workers[0].done = i
        if on_progress:
            on_progress(progress, BatchResult([], [], []))

    with manager.lend(spec, loras=loras or []) as pipe:
        progress.workers[0].since = progress.started
        return classify_batch(pipe, source, params, results_dir, on_image=on_image, should_stop=should_stop)
