"""What every benchmark starts from (arguments, model manager) and times with (CUDA-aware clocks and memory)."""

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from studio.device import pick_device
from studio.models import ModelManager

MODEL_HELP = "a catalog name or folder instead of SD1.5's architecture with random weights"


def parser(doc: str, **model: object) -> argparse.ArgumentParser:
    """--model (help and choices overridable), --device and --workdir; the script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--model", **({"help": MODEL_HELP} | model))
    p.add_argument("--device", help="default: the best one present")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "diffusion-studio-bench")
    return p


def open_manager(args: argparse.Namespace) -> tuple[torch.device, ModelManager]:
    device = pick_device(args.device)
    return device, ModelManager(str(device), cache_dir=args.workdir)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures that work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory since `reset_peak`, in GiB; NaN off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Seconds per call and peak memory in GiB (CUDA only), after one warm-up call."""
    run()
    reset_peak(device)
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync(device)
    return (time.perf_counter() - started) / repeats, peak_gib(device)
