"""Classify-batch throughput on a Ray cluster: the same dataset on 1 worker and on 2 (or `--workers`), interleaved.

    python -m bench.batch --model shapes --images 24 --rounds 5        # a local Ray cluster on this machine
    python -m bench.batch --model sd15 --ray auto --workers 1,2,4 --gpus 1

Needs Ray (`pip install ray`). Each variant is a pool of workers that stays up for the whole run (the warm-up loads
the model into each), so a round times classification and the cluster's own overhead, not start-up: every round
classifies the whole dataset of Shapes renders again, into a fresh results folder. Rows give seconds per batch and
images per second; the ratios are per round, to the first variant (bench/common.py).
"""

import tempfile
from pathlib import Path

from bench.common import interleave, parser, report
from studio.batch.cluster import Cluster, Pool
from studio.batch.dataset import classify_on_cluster, shapes_folder
from studio.classify import ClassifyParams, stages_from_text
from studio.device import pick_device


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__, default="shapes", help="the model the workers load (default shapes)")
    p.add_argument("--ray", default="local", help="cluster address (default: start one on this machine)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs per worker (also its torch threads)")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker")
    p.add_argument("--images", type=int, default=24, help="dataset size (4 Shapes classes, as many of each)")
    p.add_argument("--schedule", default="fast", help="classifier schedule, as the CLI takes it")
    p.add_argument("--shard", type=int, default=2, help="images per task")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    # One logical cluster holds every variant's pool at once, so they can alternate without restarting.
    cluster = Cluster(address=args.ray, workers=sum(counts), cpus=args.cpus, gpus=args.gpus, cache_dir=str(
        args.workdir / "models"))
    cluster.connect()
    data = shapes_folder(args.workdir / f"shapes-{args.images}", per_class=max(1, args.images // 4))
    params = ClassifyParams(templates=["a {}"], stages=stages_from_text(args.schedule))
    pools = {n: Pool(Cluster(**{**vars(cluster), "workers": n}), args.model) for n in counts}

    def batch(pool: Pool) -> None:
        with tempfile.TemporaryDirectory(dir=args.workdir) as results:
            classify_on_cluster(pool, data, params, Path(results), shard_images=args.shard)

    try:
        timings = interleave({f"{n} worker{'s' * (n != 1)}": (lambda pool=pool: batch(pool))
                              for n, pool in pools.items()}, pick_device("cpu"), rounds=args.rounds,
                             warmup=args.warmup)
    finally:
        for pool in pools.values():
            pool.close()
    images = len(list(data.rglob("*.png")))
    return report(f"Classify batch on Ray: {images} images, {args.model}, schedule {args.schedule}, "
                  f"{args.cpus:g} CPU / {args.gpus:g} GPU per worker", pick_device("cpu"), timings, args,
                  columns={"images/s": lambda t: f"{images / t.median:.2f}"})


if __name__ == "__main__":
    main()
