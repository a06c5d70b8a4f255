"""The harness every benchmark uses: arguments, the model manager, and interleaved timing with honest ratios.

On a shared machine, variants timed one after the other put whatever else the machine does on one side (measured
here: a 1.00x overhead printed as 1.54x). So variants run **interleaved**: after a warm-up, each round runs every
variant once, the order rotating from round to round (A B C, B C A, C A B), and the report gives each variant's
median with its spread, and each ratio as the median of the per-round ratios (a variant against the baseline of the
same round) with their range. The header names the device and the library versions; `--json` writes the rows.
"""

import argparse
import gc
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from studio.device import describe, pick_device
from studio.models import ModelManager

MODEL_HELP = "a catalog name or folder instead of SD1.5's architecture with random weights"


def parser(doc: str, **model: object) -> argparse.ArgumentParser:
    """--model (help and choices overridable), --device, --workdir, --rounds, --warmup and --json; the script adds
    its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--model", **({"help": MODEL_HELP} | model))
    p.add_argument("--device", help="default: the best one present")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "diffusion-studio-bench")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each runs every variant once)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first")
    p.add_argument("--json", type=Path, help="also write the table's rows here")
    return p


def open_manager(args: argparse.Namespace) -> tuple[torch.device, ModelManager]:
    device = pick_device(args.device)
    return device, ModelManager(str(device), cache_dir=args.workdir)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures that work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Timing:
    """One variant's seconds per call, one per round, and its peak GPU memory (NaN off CUDA, where none is
    measured)."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return max(self.peaks, default=float("nan"))

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.seconds), max(self.seconds)

    def ratio(self, baseline: "Timing") -> tuple[float, float, float]:
        """Median, min and max of this variant's time over the baseline's, round by round."""
        per_round = [a / b for a, b in zip(self.seconds, baseline.seconds)]
        return statistics.median(per_round), min(per_round), max(per_round)


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds of one call and its peak GPU memory in GiB (NaN off CUDA)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def interleave(variants: dict[str, Callable[[], object]], device: torch.device, *, rounds: int,
               warmup: int = 1) -> list[Timing]:
    """Time every variant `rounds` times, round-robin with a rotating order, after `warmup` untimed calls each."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    timings = {name: Timing(name) for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, peak = timed(variants[name], device)
            timings[name].seconds.append(seconds)
            if not math.isnan(peak):
                timings[name].peaks.append(peak)
    return [timings[name] for name in names]


def header(title: str, device: torch.device, how: str) -> str:
    """What was measured, where, with which versions, and how."""
    return (f"\n{title}\n{describe(device)} · torch {torch.__version__} · diffusers {diffusers.__version__} · "
            f"transformers {transformers.__version__} · Python {platform.python_version()} · "
            f"{torch.get_num_threads()} CPU threads · {time.strftime('%Y-%m-%d')}\n{how}")


def ratio_text(ratio: tuple[float, float, float]) -> str:
    return f"{ratio[0]:.2f}× ({ratio[1]:.2f}–{ratio[2]:.2f})"


def report(title: str, device: torch.device, timings: list[Timing], args: argparse.Namespace, *,
           baseline: str | None = None, columns: dict[str, Callable[[Timing], str]] | None = None,
           how: str | None = None) -> list[dict]:
    """Print the table and return its rows: every ratio is to `baseline` (default: the first timing); `columns` adds
    a derived column per name (it/s, ms/step, ...). With `args.json`, the rows are also written there."""
    base = next(t for t in timings if t.name == (baseline or timings[0].name))
    how = how or (f"variants interleaved round-robin, {len(base.seconds)} rounds after {args.warmup} warm-up; "
                  f"medians (min–max); ratios are per-round ratios to {base.name}")
    columns = columns or {}
    print(header(title, device, how))
    print("| variant | s (median, min–max) | × " + base.name + " | " + " | ".join(columns) +
          (" | " if columns else "") + "peak GPU memory |")
    print("|---" * (4 + len(columns)) + "|")
    rows = []
    for t in timings:
        ratio = t.ratio(base)
        peak = "n/a" if math.isnan(t.peak_gib) else f"{t.peak_gib:.2f} GiB"
        extra = [fmt(t) for fmt in columns.values()]
        print(f"| {t.name} | {t.median:.3f} ({t.spread[0]:.3f}–{t.spread[1]:.3f}) | {ratio_text(ratio)} | " +
              " | ".join(extra) + (" | " if extra else "") + f"{peak} |")
        rows.append({"path": t.name, "seconds": t.median, "seconds_all": t.seconds, "ratio": ratio[0],
                     "ratio_range": [ratio[1], ratio[2]],
                     "peak_gib": None if math.isnan(t.peak_gib) else t.peak_gib,
                     **{name: value for name, value in zip(columns, extra)}})
    if args.json:
        write_json(args.json, title, device, rows)
    return rows


def write_json(path: Path, title: str, device: torch.device, rows: list[dict], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"title": title, "device": describe(device), "torch": torch.__version__,
                                "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                                "rows": rows, **extra}, indent=1))
