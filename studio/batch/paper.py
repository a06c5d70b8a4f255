"""The classifier paper's CIFAR-10 evaluation, on any folder with one sub-folder per class: top-1 and cost.

Li et al. (ICCV 2023) report 88.5% zero-shot top-1 on CIFAR-10's 10,000 test images with Stable Diffusion 2.0 at
512 px (Table 1), using the adaptive schedule of 50 samples keeping 5 classes, then 500 keeping 1, the L1 error and
the template "a blurry photo of a {}." (their eval_prob_adaptive.py and prompts/cifar10_prompts.csv). That is 2,750
UNet evaluations an image, which is why the full test set wants a cluster. `evaluate` runs the same protocol through
the Classify batch (here or on Ray) and `table` puts the run beside the paper's figure.
"""

import time
from dataclasses import dataclass

from studio.classify import SCHEDULES, BatchResult, ClassifyParams, plan

PAPER_TOP1 = 88.5  # %, Table 1, Stable Diffusion 2.0, CIFAR-10 test set
PAPER_MODEL = "Stable Diffusion 2.0, 512 px"
PAPER_IMAGES = 10_000
TEMPLATE = "a blurry photo of a {}."
LOSS = "l1"


def paper_params(template: str = TEMPLATE, loss: str = LOSS, stages: list[tuple[int, int]] | None = None,
                 seed: int = 0, batch: int = 64) -> ClassifyParams:
    """The paper's CIFAR-10 settings (any of them can be changed for a dataset of your own)."""
    return ClassifyParams(templates=[template], stages=stages or SCHEDULES["paper"], loss=loss, seed=seed,
                          batch=batch)


@dataclass
class Evaluation:
    """What one run measured: accuracy over every image with a result, and the cost of the images it classified."""

    model: str
    images: int
    correct: int
    evaluations: float  # UNet evaluations per image, measured
    seconds: float  # wall-clock seconds of this run
    classified: int  # images this run classified (not resumed from an earlier run)
    workers: int

    @property
    def top1(self) -> float:
        return 100 * self.correct / self.images if self.images else 0.0

    @property
    def worker_seconds(self) -> float:
        """Seconds of one worker per image (wall time × workers / images classified)."""
        return self.seconds * self.workers / self.classified if self.classified else float("nan")


def evaluate(model: str, result: BatchResult, started: float, classified: int, workers: int) -> Evaluation:
    evaluations = sum(r["unet_calls"] for r in result.rows) / len(result.rows) if result.rows else 0.0
    return Evaluation(model, len(result.rows), sum(r["truth"] == r["predicted"] for r in result.rows), evaluations,
                      time.perf_counter() - started, classified, workers)


def table(run: Evaluation, params: ClassifyParams, n_classes: int) -> str:
    """Markdown: the paper's row, then this run's, with the cost of the whole 10,000-image test set at its rate."""
    paper_cost = plan(10, paper_params())[0]
    hours = run.worker_seconds * PAPER_IMAGES / 3600
    stages = ", ".join(f"{s}:{k}" for s, k in params.stages)
    return "\n".join([
        f"Protocol: {n_classes} classes, template {params.templates[0]!r}, loss {params.loss}, stages {stages}, "
        f"seed {params.seed}.",
        "",
        "| | model | images | top-1 | UNet evaluations / image | worker-seconds / image | worker-hours for 10,000 |",
        "|---|---|---|---|---|---|---|",
        f"| Li et al. 2023, Table 1 | {PAPER_MODEL} | {PAPER_IMAGES:,} | {PAPER_TOP1:.1f}% | {paper_cost:,} | – | – |",
        f"| this run | {run.model} | {run.images:,} | {run.top1:.1f}% | {run.evaluations:,.0f} | "
        f"{run.worker_seconds:.2f} | {hours:,.1f} |",
        "",
        f"{run.classified} images classified in {run.seconds:.1f} s on {run.workers} worker"
        f"{'s' * (run.workers != 1)}" + (f"; {run.images - run.classified} were in the results file already."
                                         if run.images > run.classified else "."),
    ])
