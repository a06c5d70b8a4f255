"""The studio's Ray cluster as the tabs use it (`--ray ADDRESS`): Classify → Batch and the Train tab's Sweep run there
instead of on this process's model.

One run at a time, in a fair queue of its own (a second run from the same session is refused, others wait their
turn with their place shown); the run works in a thread while the handler streams its aggregated progress (done of
total, each worker's rate, the ETA) to the page; Cancel, the studio's time limit or a closed tab sets the session's
stop flag, and the scheduler then stops every worker. Nothing of a cluster run touches the model in this process, so
it needs no GPU turn here (nor a ZeroGPU call).
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from studio.batch.cluster import Cluster, Pool, Progress
from studio.batch.dataset import classify_on_cluster
from studio.classify import MAX_FILES, BatchResult, ClassifyParams
from studio.jobs import FairQueue, StopFn
from tabs import StudioContext, session

Work = Callable[[Callable[..., None], StopFn], Any]  # work(report, should_stop) -> its result


class ClusterRuns:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.turns = FairQueue()
        self.pools: dict[str, Pool] = {}  # the workers of each model, kept between runs with the model loaded

    def pool(self, spec: str) -> Pool:
        return self.pools.setdefault(spec, Pool(self.cluster, spec))

    def stream(self, ctx: StudioContext, request: gr.Request, progress: gr.Progress, work: Work,
               show: Callable[..., Any]) -> Iterator[Any]:
        """Run `work` in a thread; yield `show(*report)` for its newest progress report, as they come. Returns
        (its result, the last report)."""
        key = session(request)
        stop = ctx.cancel.arm(key)
        limit = ctx.limits.timeout
        deadline = time.monotonic() + limit if limit else None

        def should_stop() -> bool:
            return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

        def waiting(ahead: int) -> None:
            progress(0, desc=f"Waiting for the cluster: {ahead} run{'s' * (ahead != 1)} ahead of yours")

        reports: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = work(lambda *report: reports.put(report), should_stop)
            except BaseException as error:  # re-raised in the handler, which shows it
                outcome["error"] = error
            finally:
                reports.put(None)

        last = None
        with self.turns.turn(key, on_wait=waiting, should_stop=stop.is_set):
            thread = threading.Thread(target=run, daemon=True, name=f"cluster-{key[:8]}")
            thread.start()
            try:
                finished = False
                while not finished and (report := reports.get()) is not None:
                    while not reports.empty():  # only the newest report is worth showing
                        newer = reports.get()
                        if newer is None:
                            finished = True
                            break
                        report = newer
                    last = report
                    yield show(*report)
            finally:
                if thread.is_alive():  # the page went away (or Gradio cancelled the event): stop the workers
                    stop.set()
                    thread.join(60)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"], last

    def classify(self, ctx: StudioContext, request: gr.Request, progress: gr.Progress, source: Path,
                 params: ClassifyParams, tables: Callable[[BatchResult], tuple]) -> Iterator[tuple]:
        """Classify → Batch on the cluster: the owner's results file, the session's LoRAs, the studio's limits."""
        results = ctx.storage.home(ctx.owner(request)) / "classify"
        loras = ctx.loras.get(session(request), [])

        def work(report: Callable[..., None], should_stop: StopFn) -> BatchResult:
            return classify_on_cluster(self.pool(ctx.model), source, params, results, loras=loras,
                                       max_files=ctx.limits.max_batch_images or MAX_FILES,
                                       max_pixels=ctx.limits.max_pixels, on_progress=report, should_stop=should_stop)

        def show(state: Progress | None, result: BatchResult) -> tuple:
            accuracy, *rest = tables(result)
            return (accuracy + (f"\n\n**Cluster:** {state.describe()}" if state else ""), *rest)

        result, last = yield from self.stream(ctx, request, progress, work, show)
        yield show(last[0] if last else None, result)
        return result
