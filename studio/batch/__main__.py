"""`python -m studio.batch classify|sweep|paper ...`: the Classify batch, DreamBooth sweeps and the classifier paper's
evaluation without the UI, here or on a Ray cluster (`--ray ADDRESS`, else $RAY_ADDRESS; neither: this machine).

    python -m studio.batch shapes data/shapes-24          # 24 Shapes renders in CIFAR-10's folder layout
    python -m studio.batch classify data/shapes-24 --model shapes --schedule fast
    python -m studio.batch classify data/pets --model sd15 --ray auto --workers 4 --gpus 1
    python -m studio.batch sweep --concept "green cross" --set steps=300 --axis seed=0,1,2 --axis lr=1e-3,2e-3
    python -m studio.batch paper data/cifar10-test --model sd15 --ray ray://head:10001 --workers 8 --gpus 1

Results go where the studio keeps them (`--outputs`, as the app's flag): a batch's rows under classify/, a sweep's
points in loras/ (so the Train tab's "Try it" lists them) and its rows in loras/.sweeps/. Running a command again
resumes it.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from studio.batch.cluster import Cluster, Pool, Progress
from studio.batch.dataset import classify_here, classify_on_cluster, shapes_folder, written
from studio.batch.paper import LOSS, TEMPLATE, evaluate, paper_params, table
from studio.batch.sweep import NO_JUDGE, SweepParams, SweepRun, parse_setting
from studio.classify import LOSSES, ClassifyParams, stages_from_text
from studio.models import ModelManager
from studio.shapes.concepts import CONCEPTS, concept_images
from studio.storage import LOCAL, Storage
from studio.train_data import check_images
from studio.trainer import TrainParams, presets


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes", help="catalog name, Hub id or folder, as the app's --model")
    p.add_argument("--device", help="this machine's device for a local run (default: the best one present)")
    p.add_argument("--threads", type=int, help="torch threads of a local run (match --cpus for identical results)")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="the studio's outputs folder")
    ray = p.add_argument_group("Ray cluster")
    ray.add_argument("--ray", metavar="ADDRESS", help="auto, HOST:6379, ray://HOST:10001 or local ($RAY_ADDRESS)")
    ray.add_argument("--workers", type=int, help="workers, each loading the model once (default 2)")
    ray.add_argument("--cpus", type=float, help="CPUs per worker, also its torch threads (default 1)")
    ray.add_argument("--gpus", type=float, help="GPUs per worker, e.g. 1 or 0.5 (default 0)")
    ray.add_argument("--restarts", type=int, help="replacements for workers that die (default 2)")
    ray.add_argument("--worker-device", help="the workers' device (default: the best one on their node)")
    ray.add_argument("--ship-code", action="store_true", help="upload this checkout to the cluster with the job")


def classify_settings(p: argparse.ArgumentParser, template: str, loss: str, schedule: str) -> None:
    p.add_argument("source", type=Path, help="a folder or .zip with one sub-folder of images per class")
    p.add_argument("--template", action="append", help=f"prompt template, repeatable (default {template!r})")
    p.add_argument("--schedule", default=schedule, help="fast, paper, exhaustive or samples:kept pairs, e.g. 10:3,50:1")
    p.add_argument("--loss", default=loss, choices=list(LOSSES))
    p.add_argument("--seed", type=int, default=0, help="seed of the shared noise")
    p.add_argument("--batch", type=int, default=64, help="UNet rows per forward pass")
    p.add_argument("--shard", type=int, default=4, help="images per task sent to a worker")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio.batch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    one = sub.add_parser("classify", help="a Classify batch: accuracy and confusion over a labelled folder")
    classify_settings(one, "a {}", "l2", "fast")
    paper = sub.add_parser("paper", help="the classifier paper's CIFAR-10 evaluation: top-1 and cost")
    classify_settings(paper, TEMPLATE, LOSS, "paper")
    paper.add_argument("--table", type=Path, help="write the table here too (default: beside the results file)")
    sweep = sub.add_parser("sweep", help="DreamBooth over a grid of settings: each point's success")
    sweep.add_argument("--concept", choices=list(CONCEPTS), help="train on a Shapes concept's 5 renders")
    sweep.add_argument("--images", type=Path, nargs="+", help="or: 3-20 images (or one folder) of the subject")
    sweep.add_argument("--instance-prompt", help="default for a concept: 'a sks <noun>'")
    sweep.add_argument("--class-prompt", help="default for a concept: 'a <noun>'")
    sweep.add_argument("--identifier", default="sks")
    sweep.add_argument("--preset", help="presets/train.yaml entry (default: shapes-concept for a concept, else quick)")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change the recipe")
    sweep.add_argument("--axis", action="append", required=True, metavar="FIELD=V1,V2", help="a swept setting")
    sweep.add_argument("--judge", choices=[*CONCEPTS, NO_JUDGE], help="the concept a success draws (default "
                                                                     "--concept, else none)")
    sweep.add_argument("--eval-prompt", default="", help="default: the instance prompt")
    sweep.add_argument("--eval-seeds", type=int, default=20)
    sweep.add_argument("--eval-steps", type=int, default=20)
    sweep.add_argument("--name", default="sweep", help="the points' LoRA names start with this")
    for sub_parser in (one, paper, sweep):
        common(sub_parser)
    shapes = sub.add_parser("shapes", help="write a labelled folder of Shapes renders (4 classes)")
    shapes.add_argument("folder", type=Path)
    shapes.add_argument("--per-class", type=int, default=6)
    return p


class Printer:
    """Progress lines: when something finished, else every 10 s."""

    def __init__(self) -> None:
        self.last, self.when = -1, 0.0

    def __call__(self, progress: Progress, *_: object) -> None:
        if progress.done != self.last or time.monotonic() - self.when > 10:
            print(f"  {progress.describe()}", flush=True)
            self.last, self.when = progress.done, time.monotonic()


def run_classify(args: argparse.Namespace, cluster: Cluster | None, manager: ModelManager) -> None:
    templates = args.template or [TEMPLATE if args.command == "paper" else "a {}"]
    params = ClassifyParams(templates=templates, stages=stages_from_text(args.schedule), loss=args.loss,
                            seed=args.seed, batch=args.batch)
    results = Storage(args.outputs).home(LOCAL) / "classify"
    before, started, printer = written(args.source, params, results), time.perf_counter(), Printer()
    if cluster:
        with Pool(cluster, args.model) as pool:
            result = classify_on_cluster(pool, args.source, params, results, shard_images=args.shard,
                                         on_progress=printer)
    else:
        result = classify_here(manager, args.model, args.source, params, results, on_progress=printer)
    print(f"\nAccuracy {100 * result.accuracy:.1f}% on {len(result.rows)} images, {len(result.classes)} classes"
          + (f" ({len(result.skipped)} files skipped)" if result.skipped else ""))
    if args.command == "classify":
        width = max(map(len, result.classes))
        print(f"{'truth / predicted':>{width}}  " + " ".join(f"{c[:8]:>8}" for c in result.classes))
        for name, line in zip(result.classes, result.confusion()):
            print(f"{name:>{width}}  " + " ".join(f"{v:>8}" for v in line))
        return
    run = evaluate(args.model, result, started, len(result.rows) - before, cluster.workers if cluster else 1)
    text = table(run, paper_params(templates[0], args.loss, params.stages, args.seed, args.batch),
                 len(result.classes))
    target = args.table or results / f"{args.source.stem}-paper.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")
    print(f"\n{text}\n\n(written to {target})")


def run_sweep(args: argparse.Namespace, cluster: Cluster | None, manager: ModelManager) -> None:
    if bool(args.concept) == bool(args.images):
        raise ValueError("Give either --concept or --images.")
    noun = CONCEPTS[args.concept][2] if args.concept else None
    images = concept_images(args.concept, side=manager.resolve(args.model).size) if args.concept else check_images(
        [f for i in args.images for f in (sorted(i.iterdir()) if i.is_dir() else [i])])
    recipe = presets()[args.preset or ("shapes-concept" if args.concept else "quick")]
    settings = dict(recipe, resolution=manager.resolve(args.model).size, identifier=args.identifier,
                    instance_prompt=args.instance_prompt or f"a {args.identifier} {noun or 'subject'}",
                    class_prompt=args.class_prompt or f"a {noun or 'subject'}")
    settings.update({name: values[0] for name, values in map(parse_setting, args.set)})
    sweep = SweepParams(axes=[parse_setting(a) for a in args.axis], concept=args.judge or args.concept or NO_JUDGE,
                        eval_prompt=args.eval_prompt, eval_seeds=args.eval_seeds, eval_steps=args.eval_steps)
    run = SweepRun(args.model, Storage(args.outputs).loras(LOCAL), args.name, TrainParams(**settings), sweep, images)
    print(f"{len(run.points)} points, {len(run.pending())} to run; rows in {run.log}")
    if cluster:
        with Pool(cluster, args.model) as pool:
            run.run_on(pool, on_progress=Printer())
    else:
        run.run_here(manager, on_progress=Printer())
    header, body = run.table()
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for line in body:
        print("| " + " | ".join(line) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "shapes":
        print(f"wrote {shapes_folder(args.folder, args.per_class)}")
        return 0
    cluster = Cluster.configured(args.ray, workers=args.workers, cpus=args.cpus, gpus=args.gpus,
                                 restarts=args.restarts, device=args.worker_device, ship_code=args.ship_code or None)
    if args.threads:
        torch.set_num_threads(args.threads)
    manager = ModelManager(args.device)
    try:
        (run_sweep if args.command == "sweep" else run_classify)(args, cluster, manager)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
