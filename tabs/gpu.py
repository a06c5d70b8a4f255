"""Where GPU work runs: in this process, or on a Hugging Face ZeroGPU Space.

On ZeroGPU (the `spaces` package reports it), CUDA work must run inside functions decorated with `@spaces.GPU`: each
call is given a GPU for a bounded duration, in a worker process forked from this one (so the models loaded at
start-up are there, and what the call changes in memory is not seen here afterwards). Every GPU event of the studio
goes through `GpuPolicy.task`, which decorates its handler with a duration computed from the request; elsewhere the
decorator is a no-op and nothing changes. Work longer than one call (training, a classification batch) is split into
calls that resume from what the previous one wrote to disk.
"""

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import spaces
from spaces.config import Config

# Estimates for an H200 slice of ZeroGPU, with a margin: one denoising step of SD1.5 at 512x512 with classifier-free
# guidance (two UNet rows), one LoRA training step at 512, one classifier UNet evaluation (batched).
SECONDS_PER_STEP = 0.12
SECONDS_PER_TRAIN_STEP = 0.25
SECONDS_PER_EVALUATION = 0.004
OVERHEAD_SECONDS = 10  # attaching the GPU and moving the weights onto it, per call


def _as_function(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return call


def denoising(steps: float, images: float = 1, width: float = 512, height: float = 512) -> float:
    """Seconds of `steps` denoising steps for `images` images of width x height (cost grows with the pixels)."""
    return SECONDS_PER_STEP * steps * images * (width * height) / 512**2


@dataclass
class GpuPolicy:
    """How GPU events run. `zero`: on a ZeroGPU Space; `max_seconds`: the longest call it allows (120 s unless the
    Space's settings say otherwise), `min_seconds`: the shortest worth asking for."""

    zero: bool = False
    max_seconds: int = 120
    min_seconds: int = 15

    @classmethod
    def detect(cls, max_seconds: int = 120) -> "GpuPolicy":
        return cls(zero=Config.zero_gpu, max_seconds=max_seconds)

    def seconds(self, work: float) -> int:
        """The duration to ask for: the estimated work plus the per-call overhead, within [min, max]."""
        return int(min(self.max_seconds, max(self.min_seconds, math.ceil(OVERHEAD_SECONDS + work))))

    def task(self, handler: Callable, cost: Callable[..., float]) -> Callable:
        """`handler` (as Gradio calls it) inside `@spaces.GPU`, asking for `seconds(cost(*args))`; on ZeroGPU a
        request that cannot finish within one call is refused before a GPU is asked for. The duration function is
        kept as `handler.gpu_seconds`, so it can be checked off ZeroGPU too."""
        def duration(*args: Any) -> int:
            try:
                work = cost(*args)
            except (TypeError, ValueError, KeyError, AttributeError, OSError):
                return self.max_seconds  # an input the handler will refuse with its own message
            if self.zero and OVERHEAD_SECONDS + work > self.max_seconds:
                raise gr.Error(f"This request needs about {OVERHEAD_SECONDS + work:.0f} s of GPU time, and this "
                               f"Space gives a call at most {self.max_seconds} s: use fewer steps or images, or a "
                               "smaller size.", title="Too long for one GPU call")
            return self.seconds(work)

        if inspect.ismethod(handler):  # a bound method takes no attributes: call it from a function that does
            handler = _as_function(handler)
        handler.gpu_seconds = duration  # type: ignore[attr-defined]
        return spaces.GPU(handler, duration=duration)

    def chunk_steps(self, seconds_per_step: float, fixed: float = 0.0) -> int:
        """How many steps of a long job fit in one call, after `fixed` seconds of other work in it."""
        return max(1, int((self.max_seconds - OVERHEAD_SECONDS - fixed) / seconds_per_step))
