"""Shards of work on a Ray cluster: its settings, the workers, and a scheduler that survives a lost worker.

A worker is a Ray actor (`Station`) with one `ModelManager` and the model loaded once; it runs any task of the shape
`task(station, payload, context) -> result`. A `Pool` holds the workers of one model and runs shards on them: each
idle worker is handed the next shard (a worker pulls work, so a fast one does more), each result goes to the caller
as soon as it arrives (who writes it down), and:

- a worker that dies (killed, out of memory, its node gone) has its shard put back at the front of the queue for
  another worker, and a replacement is started while `restarts` last; what was written is never redone;
- `should_stop()` (a Cancel) kills every worker at once, as does an error raised by a task (a model that cannot be
  loaded, a bad input), which the run then raises;
- after a run the workers wait, the model loaded, for the next run, and are stopped after `keep` idle seconds.

Ray is imported by `Cluster.connect`, only when a cluster is used.
"""

import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch

from studio.jobs import Cancelled, StopFn
from studio.models import ModelManager
from studio.params import Params, flag, ranged

ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.5  # how often the scheduler looks at a Cancel and reports progress
# What `ship_code` leaves out of the upload: history, results, work folders, tests and pictures.
NOT_SHIPPED = [".git", "outputs", "models/shapes-*", "tests", "docs", "**/__pycache__"]


@dataclass
class Cluster(Params):
    """Where batch work runs. `address` is what `ray.init` takes: "auto" (the cluster `ray start --head` started on
    this machine), "HOST:6379", "ray://HOST:10001" (Ray Client, e.g. KubeRay's head service), or "local" (start a
    cluster of `workers` on this machine). Resources are reserved per worker, so Ray places them where they fit."""

    address: str = "auto"
    workers: int = ranged(2, 1, 1024, 1, "Ray actors to start, each with its own copy of the model.")
    cpus: float = ranged(1.0, 0.1, 256, 0.1, "CPUs reserved per worker (also its torch threads).")
    gpus: float = ranged(0.0, 0, 16, 0.05, "GPUs reserved per worker: 1 a GPU each, 0.5 two workers per GPU.")
    restarts: int = ranged(2, 0, 1000, 1, "Workers started in a run to replace ones that died.")
    keep: float = ranged(600.0, 0, 86400, 10, "Seconds the workers stay up after a run, the model loaded, for the "
                                              "next one (0: stopped at once).")
    device: str = ""  # the workers' device ("cuda", "cpu"); empty: the best one on their node
    cache_dir: str = ""  # where workers build or find the built-in models; empty: their default
    ship_code: bool = flag(False, "Upload this checkout to the cluster with the job (Ray's working_dir), for nodes "
                                  "that have the studio's requirements but not its code.")

    def check(self) -> None:
        if not self.address.strip():
            raise ValueError("Give the Ray cluster's address (auto, HOST:6379, ray://HOST:10001 or local).")

    @classmethod
    def configured(cls, address: str | None = None, **settings: Any) -> "Cluster | None":
        """The cluster named by `address`, else by $RAY_ADDRESS; None when neither is set (the local path)."""
        address = (address or os.environ.get("RAY_ADDRESS", "")).strip()
        return cls(address=address, **{k: v for k, v in settings.items() if v is not None}) if address else None

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def connect(self) -> Any:
        """The `ray` module, connected to this cluster (once per process)."""
        try:
            import ray
        except ImportError:
            raise ValueError("Running on a Ray cluster needs Ray: pip install ray (see README, \"Beyond one "
                             "machine\").") from None
        if ray.is_initialized():
            return ray
        options: dict[str, Any] = dict(namespace="diffusion-studio", log_to_driver=False)
        if self.ship_code:
            options["runtime_env"] = {"working_dir": str(ROOT), "excludes": NOT_SHIPPED}
        if self.address == "local":
            options.update(num_cpus=max(1, round(self.workers * self.cpus)), include_dashboard=False)
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError) as error:
            raise ValueError(f"Cannot reach the Ray cluster at {self.address} ({error}). Start one with `ray start "
                             "--head`, or give the address of a running one.") from None
        return ray


class Station:
    """One worker: a model manager with the model loaded once (`ready`), and a scratch folder of its own. Ray runs
    it as an actor; a local run can use one directly."""

    def __init__(self, spec: str, device: str | None = None, threads: int | None = None,
                 cache_dir: str | None = None, offline: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.manager = ModelManager(device or None, cache_dir=Path(cache_dir) if cache_dir else None,
                                    offline=offline)
        self.scratch = Path(tempfile.mkdtemp(prefix="studio-worker-"))

    def ready(self) -> dict:
        """Load the model (an error here is the model's, not a lost worker's) and say who this worker is."""
        self.manager.base(self.spec)
        return {"pid": os.getpid(), "node": socket.gethostname(), "device": str(self.manager.device)}

    def run(self, task: Callable, payload: Any, context: Any) -> Any:
        return task(self, payload, context)


@dataclass
class Shard:
    """Part of a run: `size` items (for progress), and `payload()`, what the worker gets (read when it is sent)."""

    index: int
    size: int
    payload: Callable[[], Any]


@dataclass
class WorkerStats:
    name: str
    since: float  # when it became ready (time.monotonic)
    done: int = 0
    alive: bool = True
    pid: int | None = None

    def rate(self, now: float) -> float:
        return self.done / max(now - self.since, 1e-9)


@dataclass
class Progress:
    """A run's progress, aggregated over its workers: done of total items, each worker's rate, the ETA."""

    total: int
    unit: str = "items"
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    workers: list[WorkerStats] = field(default_factory=list)
    retried: int = 0  # shards put back because their worker died
    starting: int = 0  # workers asked for and not ready yet (loading the model, or waiting for room on the cluster)

    def rate(self) -> float:
        now = time.monotonic()
        return sum(w.rate(now) for w in self.workers if w.alive)

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def describe(self) -> str:
        now = time.monotonic()
        line = f"{self.done} of {self.total} {self.unit}"
        rates = [f"{w.name} {w.rate(now) * 60:.1f}/min" if w.alive else f"{w.name} lost" for w in self.workers]
        if rates:
            line += " · " + ", ".join(rates)
        if self.starting:
            line += f" · {self.starting} worker{'s' * (self.starting != 1)} starting"
        eta = self.eta()
        if eta is not None and self.done < self.total:
            line += f" · ETA {eta:.0f} s"
        if self.retried:
            line += f" · {self.retried} shard{'s' * (self.retried != 1)} retried after a worker was lost"
        return line


class Pool:
    """The workers of one model on a cluster. They stay up between runs, the model loaded, for `cluster.keep`
    seconds after the last run ends; a Cancel, a task's error or `close()` stops them at once."""

    def __init__(self, cluster: Cluster, spec: str):
        self.cluster, self.spec = cluster, spec
        self._ready: list[tuple[Any, str, int]] = []  # (actor, name, pid) of workers with the model loaded
        self._named = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._timer:
                self._timer.cancel()
            workers, self._ready = self._ready, []
        if workers:
            ray = self.cluster.connect()
            for worker, _, _ in workers:
                ray.kill(worker)

    def _take(self) -> list[tuple[Any, str, int]]:
        with self._lock:
            if self._timer:
                self._timer.cancel()
            workers, self._ready = self._ready, []
        return workers

    def _keep(self, workers: list[tuple[Any, str, int]]) -> None:
        with self._lock:
            self._ready = workers
            if self.cluster.keep:
                self._timer = threading.Timer(self.cluster.keep, self.close)
                self._timer.daemon = True
                self._timer.start()
        if not self.cluster.keep:
            self.close()

    def run(self, task: Callable, context: Any, shards: list[Shard], *, on_result: Callable[[Shard, Any], None],
            on_progress: Callable[[Progress], None] | None = None, should_stop: StopFn | None = None,
            unit: str = "items") -> Progress:
        """Run `task(station, shard.payload(), context)` for every shard on the workers; `on_result(shard, result)`
        is called here, as each result arrives."""
        # 1. Workers: those kept from the last run, then new actors that load the model once; `context` goes to the
        # object store once for all shards
        ray = self.cluster.connect()
        from ray.exceptions import RayActorError, RayTaskError

        cluster = self.cluster
        actor = ray.remote(num_cpus=cluster.cpus, num_gpus=cluster.gpus, max_restarts=0)(Station)
        offline = huggingface_hub.constants.HF_HUB_OFFLINE
        shared = ray.put(context)
        progress = Progress(sum(s.size for s in shards), unit)
        queue, spares = deque(shards), cluster.restarts
        starting: dict[Any, Any] = {}  # ready() ref -> actor
        idle: list[tuple[Any, WorkerStats]] = []
        running: dict[Any, tuple[Any, WorkerStats, Shard]] = {}
        kept = self._take()
        everyone = [worker for worker, _, _ in kept]
        names: dict[Any, tuple[str, int]] = {}

        def join(worker: Any, name: str, pid: int) -> None:
            stats = WorkerStats(name, time.monotonic(), pid=pid)
            progress.workers.append(stats)
            names[worker] = name, pid
            idle.append((worker, stats))

        def start() -> None:
            worker = actor.remote(self.spec, cluster.device or None, cluster.threads, cluster.cache_dir or None,
                                  offline)
            everyone.append(worker)
            starting[worker.ready.remote()] = worker

        def unwrap(error: Any) -> BaseException:
            return error.cause if isinstance(getattr(error, "cause", None), BaseException) else error

        for worker, name, pid in kept:
            join(worker, name, pid)
        try:
            for _ in range(min(cluster.workers, len(shards)) - len(everyone)):
                start()
            # 2. Hand out shards to idle workers; collect results, ready workers and lost ones as they come
            while queue or running:
                if should_stop and should_stop():
                    raise Cancelled("Stopped: every worker of the cluster was told to stop")
                while idle and queue:
                    worker, stats = idle.pop()
                    shard = queue.popleft()
                    running[worker.run.remote(task, shard.payload(), shared)] = (worker, stats, shard)
                waiting = [*running, *starting]
                if not waiting:
                    raise RuntimeError(f"Every worker was lost and {cluster.restarts} replacements are used up; "
                                       f"{progress.done} of {progress.total} {unit} are written: run again to "
                                       "resume.")
                ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    if ref in starting:
                        worker = starting.pop(ref)
                        try:
                            info = ray.get(ref)
                        except RayTaskError as error:
                            raise unwrap(error) from None
                        except RayActorError:  # lost while loading the model
                            if spares:
                                spares -= 1
                                start()
                            continue
                        self._named += 1
                        join(worker, f"worker {self._named} (pid {info['pid']} on {info['node']})", info["pid"])
                        continue
                    worker, stats, shard = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as error:
                        raise unwrap(error) from None
                    except RayActorError:
                        # 3. A lost worker: its shard goes back to the front of the queue, a replacement starts
                        stats.alive = False
                        progress.retried += 1
                        queue.appendleft(shard)
                        if spares:
                            spares -= 1
                            start()
                        continue
                    on_result(shard, result)
                    stats.done += shard.size
                    progress.done += shard.size
                    idle.append((worker, stats))
                progress.starting = len(starting)
                if on_progress:
                    on_progress(progress)
        except BaseException:
            for worker in everyone:
                ray.kill(worker)
            raise
        # 4. The ready workers wait for the next run; any still starting are not needed
        for worker in starting.values():
            ray.kill(worker)
        self._keep([(worker, *names[worker]) for worker, _ in idle])
        return progress
