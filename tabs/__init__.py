"""One thin module per tab: components, layout and the wiring to `studio/`. Shared pieces live here.

- `StudioContext`: what every tab receives (the model manager, the model, per-session state) and `job`, the one
  path every GPU handler takes (lend the model with the session's LoRAs, a stop flag, progress for loading and
  steps, warnings as toasts).
- `Form`: an event's inputs by name, so handlers read `values["cfg"]` and build params by keyword.
- `slider`, `choices`, `checkbox`, `seed_box`: widgets whose ranges, choices and help come from a params dataclass.
"""

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from studio.jobs import Cancelled, CancelFlags, StepFn
from studio.models import ModelManager, ModelUnavailable

GPU = "gpu"  # every event that runs a model shares this concurrency id: one job on the GPU at a time
PRESETS = Path(__file__).parent.parent / "presets"


def model_examples(tab: str, family: str) -> Any:
    """A tab's per-model presets from presets/<tab>.yaml: the rows of this model family, else the `default` ones."""
    examples = yaml.safe_load((PRESETS / f"{tab}.yaml").read_text())
    return examples.get(family, examples["default"])


@dataclass
class SendTarget:
    """A tab that accepts an image (and optionally its prompt and seed) from another tab's "Send to" button."""

    label: str
    tab_id: str
    image: gr.components.Component
    prompt: gr.components.Component | None = None
    seed: gr.components.Component | None = None


@dataclass
class Job:
    """One request's turn on the shared model: the lent pipeline, the stop flag its Cancel sets, its progress bar
    and the warnings shown when it ends."""

    pipe: Any
    should_stop: Callable[[], bool]
    progress: gr.Progress
    warnings: list[str] = field(default_factory=list)

    def on_step(self, desc: str = "Denoising", unit: str = "steps") -> StepFn:
        return lambda i, n: self.progress((i, n), desc=desc, unit=unit)


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

    @functools.cached_property
    def family(self) -> str:
        """The model family ("sd15", "shapes", "tiny"): which presets, examples and control models fit."""
        return self.manager.family(self.model)

    @functools.cached_property
    def size(self) -> int:
        """The model's native image side: the default width and height of every tab."""
        return self.manager.resolve(self.model).size

    @contextmanager
    def job(self, request: gr.Request | None, progress: gr.Progress, *,
            loras: list[tuple[Path, float]] | None = None) -> Iterator[Job]:
        """The one path of every GPU handler: this session's stop flag (armed afresh), the model lent with `loras`
        or else the LoRAs this session picked in the header, loading shown on the progress bar; the job's warnings
        become toasts when it ends."""
        stop = self.cancel.arm(session(request))
        loras = self.loras.get(session(request), []) if loras is None else loras
        with self.manager.lend(self.model, loras=loras, on_progress=lambda f, what: progress(f, desc=what)) as pipe:
            job = Job(pipe, stop.is_set, progress)
            yield job
        for warning in dict.fromkeys(job.warnings):
            gr.Warning(warning)

    def run_job(self, request: gr.Request | None, progress: gr.Progress, technique: Callable, *args: Any,
                unit: str = "steps", loras: list[tuple[Path, float]] | None = None, **kwargs: Any) -> Any:
        """`technique(pipe, *args, should_stop=..., on_step=..., **kwargs)` as one job; its warnings are shown."""
        with self.job(request, progress, loras=loras) as job:
            result = technique(job.pipe, *args, should_stop=job.should_stop, on_step=job.on_step(unit=unit),
                               **kwargs)
            job.warnings += getattr(result, "warnings", [])
        return result

    def stop_job(self, request: gr.Request) -> None:
        """Every tab's Cancel: the running job of this session stops at its next step."""
        self.cancel.cancel(session(request))

    def end_session(self, request: gr.Request) -> None:
        """The browser tab closed (Gradio's unload): stop its job and forget what the session left here."""
        key = session(request)
        self.cancel.cancel(key)
        self.cancel.forget(key)
        self.loras.pop(key, None)


def session(request: gr.Request | None) -> str:
    """Per-browser-session key; API calls without a request share "api"."""
    return request.session_hash if request and request.session_hash else "api"


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


class Form:
    """An event's inputs by name. `components` is the list Gradio sends, in the order given here (the API's
    argument order); a name given a list of components receives a list of values. `bind` wraps a handler
    `fn(values, request, progress)` so that Gradio calls it with the values and still injects the request and the
    progress tracker (it finds them by the signature, so the wrapper declares one parameter per input)."""

    def __init__(self, **inputs: gr.components.Component | list[gr.components.Component]):
        self.inputs = inputs
        self.components = [c for value in inputs.values() for c in (value if isinstance(value, list) else [value])]

    def values(self, flat: tuple) -> dict[str, Any]:
        out, rest = {}, list(flat)
        for name, value in self.inputs.items():
            n = len(value) if isinstance(value, list) else 1
            out[name] = rest[:n] if isinstance(value, list) else rest[0]
            rest = rest[n:]
        return out

    def bind(self, fn: Callable, *, track_tqdm: bool = False) -> Callable:
        def handler(*args: Any) -> Any:
            *flat, request, progress = args
            return fn(self.values(tuple(flat)), request, progress)

        params = [inspect.Parameter(f"input_{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for i in range(len(self.components))]
        params += [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
                   inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     default=gr.Progress(track_tqdm=track_tqdm))]
        handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        handler.__annotations__ = {"request": gr.Request}
        handler.__name__ = handler.__qualname__ = getattr(fn, "__name__", "handler")
        return handler


def build(cls: type, values: dict[str, Any], **given: Any) -> Any:
    """A params dataclass by keyword from widget values: the fields named in `values` (an empty widget, None, keeps
    the field's default; an empty seed box means a random seed), then `given`. The dataclass checks them as it is
    built."""
    texts = {f.name for f in fields(cls) if f.type in (str, "str")}
    names = {f.name for f in fields(cls)}
    kwargs = {name: "" if value is None and name in texts else value for name, value in values.items()
              if name in names and (value is not None or name in texts)}
    if "seed" in names and values.get("seed", 0) is None and cls.meta("seed")["min"] < 0:
        kwargs["seed"] = -1
    return cls(**{**kwargs, **given})


def slider(params_cls: Any, name: str, label: str, value: Any = None, **kwargs: Any) -> gr.Slider:
    """A slider whose range and help text come from the params dataclass, so they are defined once."""
    meta = params_cls.meta(name)
    return gr.Slider(meta["min"], meta["max"], step=meta["step"],
                     value=params_cls.default(name) if value is None else value, label=label, info=meta["help"],
                     **kwargs)


def choices(params_cls: Any, name: str, label: str, *, radio: bool = False, value: Any = None,
            **kwargs: Any) -> gr.Dropdown | gr.Radio:
    """A dropdown (or radio) of a `choice` field: its values, their labels and help from the params dataclass."""
    meta = params_cls.meta(name)
    options = [(text, option) for option, text in meta["labels"].items()]
    widget = gr.Radio if radio else gr.Dropdown
    return widget(options, value=params_cls.default(name) if value is None else value, label=label,
                  info=meta["help"] or None, **kwargs)


def checkbox(params_cls: Any, name: str, label: str, value: bool | None = None, **kwargs: Any) -> gr.Checkbox:
    """A checkbox of a `flag` field, with its help."""
    return gr.Checkbox(params_cls.default(name) if value is None else value, label=label,
                       info=params_cls.meta(name).get("help"), **kwargs)


def seed_box(params_cls: Any, label: str = "Seed", value: int | None = None, **kwargs: Any) -> gr.Number:
    """The seed of a params dataclass: its range (-1 = random where allowed) and help."""
    meta = params_cls.meta("seed")
    return gr.Number(params_cls.default("seed") if value is None else value, label=label, precision=0,
                     minimum=meta["min"], maximum=meta["max"], info=meta["help"], **kwargs)
