"""One thin module per tab: components, layout and the wiring to `studio/`. Shared pieces live here."""

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from studio.jobs import Cancelled, CancelFlags
from studio.models import ModelManager, ModelUnavailable

GPU = "gpu"  # every event that runs a model shares this concurrency id: one job on the GPU at a time
PRESETS = Path(__file__).parent.parent / "presets"


def model_examples(tab: str, model: str) -> list[list]:
    """A tab's example rows for this model from presets/<tab>.yaml (its `default` rows for other models)."""
    examples = yaml.safe_load((PRESETS / f"{tab}.yaml").read_text())
    return examples.get(model, examples["default"])


@dataclass
class SendTarget:
    """A tab that accepts an image (and optionally its prompt and seed) from another tab's "Send to" button."""

    label: str
    tab_id: str
    image: gr.components.Component
    prompt: gr.components.Component | None = None
    seed: gr.components.Component | None = None


@dataclass
class StudioContext:
    """What every tab's `build` receives: the shared model manager and per-app (never per-module) state."""

    manager: ModelManager
    model: str
    outputs: Path
    send_to: dict[str, str] = field(default_factory=dict)  # tab id -> label of tabs that take a "Send to"
    cancel: CancelFlags = field(default_factory=CancelFlags)
    send_targets: list[SendTarget] = field(default_factory=list)  # filled in by those tabs as they are built
    loras: dict[str, list[tuple[Path, float]]] = field(default_factory=dict)  # session -> LoRAs picked in the header

    @property
    def lora_root(self) -> Path:
        return self.outputs / "loras"

    def lend(self, request: gr.Request | None, *args: Any, loras: list[tuple[Path, float]] | None = None,
             **kwargs: Any) -> Any:
        """The model for one job, with `loras` or else the library LoRAs this browser session picked in the header."""
        loras = self.loras.get(session(request), []) if loras is None else loras
        return self.manager.lend(self.model, *args, loras=loras, **kwargs)

    def arm(self, request: gr.Request | None) -> threading.Event:
        """A fresh stop flag for this session's new job; its tab's Cancel sets it."""
        return self.cancel.arm(session(request))

    def run_job(self, request: gr.Request | None, progress: gr.Progress, technique: Callable, *args: Any,
                unit: str = "steps", loras: list[tuple[Path, float]] | None = None, **kwargs: Any) -> Any:
        """`technique(pipe, *args, **kwargs)` on the lent model (with `loras`, else the header's) with this session's
        stop flag, a progress bar for loading and for its steps; its warnings are shown as toasts."""
        stop = self.arm(request)
        with self.lend(request, on_progress=lambda f, what: progress(f, desc=what), loras=loras) as pipe:
            result = technique(pipe, *args, should_stop=stop.is_set,
                               on_step=lambda i, n: progress((i, n), desc="Denoising", unit=unit), **kwargs)
        for warning in getattr(result, "warnings", []):
            gr.Warning(warning)
        return result

    def stop_job(self, request: gr.Request) -> None:
        """Every tab's Cancel: the running job of this session stops at its next step."""
        self.cancel.cancel(session(request))


def session(request: gr.Request | None) -> str:
    """Per-browser-session key; API calls without a request share "api"."""
    return request.session_hash if request else "api"


def user_errors(fn: Callable) -> Callable:
    """Turn the studio's exceptions into messages in the UI; the app stays up."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Cancelled as stop:
            raise gr.Error(f"{stop}.", title="Cancelled") from None
        except ModelUnavailable as error:
            raise gr.Error(str(error), title="Model not available", duration=None) from None
        except ValueError as error:
            raise gr.Error(str(error), title="Please check the input") from None

    return wrapper


def slider(params_cls: Any, name: str, label: str, value: Any = None, **kwargs: Any) -> gr.Slider:
    """A slider whose range and help text come from the params dataclass, so they are defined once."""
    meta = params_cls.meta(name)
    default = params_cls.__dataclass_fields__[name].default
    return gr.Slider(meta["min"], meta["max"], step=meta["step"], value=default if value is None else value,
                     label=label, info=meta["help"], **kwargs)
