"""One thin module per tab: components, layout and the wiring to `studio/`. Shared pieces live here.

- `StudioContext`: what every tab receives (the model manager, the model, per-session state) and `job`, the one
  path every GPU handler takes (lend the model with the session's LoRAs, a stop flag, progress for loading and
  steps, warnings as toasts).
- `Form`: an event's inputs by name, so handlers read `values["cfg"]` and build params by keyword.
- `slider`, `choices`, `checkbox`, `seed_box`: widgets whose ranges, choices and help come from a params dataclass.
"""

import contextvars
import functools
import hashlib
import inspect
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from studio.images import load_image
from studio.inversion import InversionCache
from studio.jobs import Busy, Cancelled, CancelFlags, FairQueue, PreviewFn, StepFn, blocks, interruptible
from studio.limits import Limits
from studio.lora import embedding_library, library, weights_file
from studio.models import ModelManager, ModelUnavailable
from studio.pnginfo import IMAGE_REF, PROMPTS, Recipe, embed_image, file_hash, read_png, save_png
from studio.sampling import Preview
from studio.storage import LOCAL, Storage
from tabs.gpu import GpuPolicy

GPU = "gpu"  # every event that runs a model shares this concurrency id: one job on the GPU at a time
PRESETS = Path(__file__).parent.parent / "presets"
SHARED = "shared/"  # how a published LoRA is named in the pickers


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
    after: Callable[[Any], None] | None = None  # wires what follows the image's arrival (Control detects its map)


@dataclass
class SendSource:
    """An output with "Send to" buttons: `image` holds the path of a PNG the studio wrote (with `selected`, a
    gallery of them and the index of the one picked)."""

    image: gr.components.Component
    buttons: dict[str, gr.Button]
    selected: gr.State | None = None
    pick: Callable[[Any], str | None] | None = None  # the path in the component's value (an ImageSlider's "after")


def send_buttons(ctx: "StudioContext", tab_id: str) -> dict[str, gr.Button]:
    """A row of "Send to …" buttons, one per tab that takes an image, this one aside (wired by `wire_send_to` once
    every tab is built)."""
    with gr.Row():
        return {target: gr.Button(f"Send to {label} ➜", size="sm", elem_id=f"{tab_id}-send-{target}")
                for target, label in ctx.send_to.items() if target != tab_id}


def wire_send_to(ctx: "StudioContext", tabs: gr.Tabs) -> None:
    """Each "Send to" button hands its output, with the prompt and seed its PNG records, to its target tab."""
    targets = {target.tab_id: target for target in ctx.send_targets}
    for source in ctx.send_sources:
        inputs = [source.image] + ([source.selected] if source.selected is not None else [])
        for tab_id, button in source.buttons.items():
            target = targets[tab_id]
            outputs = [c for c in (target.image, target.prompt, target.seed) if c is not None]
            sent = button.click(functools.partial(send, source, target), inputs, [*outputs, tabs], api_name=False,
                                queue=False)
            if target.after:
                target.after(sent)


def send(source: SendSource, target: SendTarget, value: Any, index: int = 0) -> list[Any]:
    if source.pick:
        path = source.pick(value)
    else:  # a gallery's picked image, or an image's own path
        path = value[min(index, len(value) - 1)][0] if source.selected is not None and value else value
    if not path:
        raise gr.Error("Make an image first.")
    try:
        settings = read_png(path).settings
    except ValueError:  # not one of ours after all: the picture alone
        settings = {}
    prompt = next((settings[k] for k in PROMPTS if isinstance(settings.get(k), str)), None)
    values = [path]
    values += [gr.skip() if prompt is None else prompt] if target.prompt is not None else []
    values += [settings.get("seed", gr.skip())] if target.seed is not None else []
    return [*values, gr.Tabs(selected=target.tab_id)]


@dataclass
class Job:
    """One request's turn on the shared model: the lent pipeline, the stop flag its Cancel sets, its progress bar
    and the warnings shown when it ends."""

    pipe: Any
    should_stop: Callable[[], bool]
    progress: gr.Progress
    warnings: list[str] = field(default_factory=list)
    on_preview: PreviewFn | None = None  # set by `StudioContext.stream`: live previews of what is denoised

    def on_step(self, desc: str = "Denoising", unit: str = "steps") -> StepFn:
        return lambda i, n: self.progress((i, n), desc=desc, unit=unit)

    def run(self, technique: Callable, *args: Any, unit: str = "steps", **kwargs: Any) -> Any:
        """`technique(pipe, *args, should_stop=..., on_step=..., [on_preview=...,] **kwargs)` in this job; its
        warnings join the job's."""
        if self.on_preview is not None:
            kwargs["on_preview"] = self.on_preview
        result = technique(self.pipe, *args, should_stop=self.should_stop, on_step=self.on_step(unit=unit), **kwargs)
        self.warnings += getattr(result, "warnings", [])
        return result

    def show_previews(self, show: Callable[[list[Any]], None], every: int) -> None:
        """From now on the techniques this job runs hand their predicted x0 to `show` as pictures, every `every`
        steps (not at the last: the result follows)."""
        def on_preview(i: int, n: int, x0: Any) -> None:
            if i % every == 0 and i < n:
                show(Preview.of(self.pipe)(self.pipe, x0))

        self.on_preview = on_preview


@dataclass(frozen=True)
class Deployment:
    """Who uses this studio. "private": one person's desktop (one owner, the parameters' own ranges); "public": a
    Space anyone can reach (each browser session, or logged-in user, owns its work; public limits; the safety
    checker on); "classroom": logged-in students own theirs, and `admins` (the teacher) see and steer everyone's."""

    mode: str = "private"
    limits: Limits = field(default_factory=Limits)
    admins: frozenset[str] = frozenset()
    session_ttl: float = 24 * 3600  # seconds an abandoned anonymous session's files are kept
    data_roots: tuple[Path, ...] = (Path("/"),)  # server folders a visitor may name: all of one's own machine
    safety_checker: bool = False  # run the model's safety checker on every decoded image

    @property
    def shared(self) -> bool:
        return self.mode != "private"


@dataclass
class StudioContext:
    """What every tab's `build` receives: the shared model manager and per-app (never per-module) state."""

    manager: ModelManager
    model: str
    outputs: Path
    send_to: dict[str, str] = field(default_factory=dict)  # tab id -> label of tabs that take a "Send to"
    cancel: CancelFlags = field(default_factory=CancelFlags)
    send_targets: list[SendTarget] = field(default_factory=list)  # filled in by those tabs as they are built
    send_sources: list["SendSource"] = field(default_factory=list)  # outputs with "Send to" buttons, likewise
    restorable: dict[str, "Form"] = field(default_factory=dict)  # tab id -> the form a PNG's recipe restores
    loras: dict[str, list[tuple[Path, float]]] = field(default_factory=dict)  # session -> LoRAs picked in the header
    # session -> embeddings picked in the header, as (file, token); a session that picked none has all of its owner's
    embeddings: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    gpu: GpuPolicy = field(default_factory=GpuPolicy)  # where GPU events run (ZeroGPU or here)
    inversions: InversionCache = field(default_factory=InversionCache)  # real images, shared by tabs
    deployment: Deployment = field(default_factory=Deployment)
    queue: FairQueue = field(default_factory=FairQueue)  # the GPU's turns, one job per session
    sessions: dict[str, str] = field(default_factory=dict)  # session -> owner, of the sessions seen so far
    training: dict[tuple[str, str], Any] = field(default_factory=dict)  # (owner, LoRA name) -> its TrainJob
    notes: str = ""  # what a classroom's teacher shows at the top of every page
    preview_every: int = 5  # live previews every this many steps, unless a session picks its own (0: off)
    previews: dict[str, int] = field(default_factory=dict)  # session -> its own preview interval
    cluster: Any = None  # tabs.batch.ClusterRuns with --ray: batches and sweeps run on that Ray cluster

    @functools.cached_property
    def storage(self) -> Storage:
        return Storage(self.outputs, shared=self.deployment.shared, data_roots=list(self.deployment.data_roots))

    @property
    def limits(self) -> Limits:
        return self.deployment.limits

    def owner(self, request: gr.Request | None) -> str:
        """Whose work a request makes: on a private desktop always the one owner; elsewhere the logged-in user, else
        the browser session."""
        if not self.deployment.shared:
            return LOCAL
        user = getattr(request, "username", None)
        owner = f"user:{user}" if user else f"session:{session(request)}"
        self.sessions[session(request)] = owner
        return owner

    def is_admin(self, request: gr.Request | None) -> bool:
        return not self.deployment.shared or getattr(request, "username", None) in self.deployment.admins

    def lora_root(self, request: gr.Request | None) -> Path:
        """This owner's LoRA library and training jobs."""
        return self.storage.loras(self.owner(request))

    def embedding_root(self, request: gr.Request | None) -> Path:
        """This owner's textual-inversion embeddings, one `<token>.safetensors` each."""
        return self.storage.home(self.owner(request)) / "embeddings"

    def session_embeddings(self, request: gr.Request | None) -> list[tuple[Path, str]]:
        """The embeddings this session's jobs load: those picked in the header, else all of the owner's (as A1111
        does: an embedding does something only where its token is typed)."""
        if session(request) in self.embeddings:
            return self.embeddings[session(request)]
        root = self.embedding_root(request)
        return [(root / f"{token}.safetensors", token) for token in embedding_library(root)]

    def params(self, cls: type, values: dict[str, Any], **given: Any) -> Any:
        """`build(cls, values, **given)`, refused if above this studio's limits."""
        return self.limits.check(build(cls, values, **given))

    def image(self, path: str | None, what: str = "The image") -> Any:
        """An uploaded image through the one loader (None stays None): any mode, a clear message otherwise."""
        return None if path is None else load_image(path, name=what if what != "The image" else Path(path).name,
                                                    max_pixels=self.limits.max_pixels)

    def served(self, path: Path) -> str:
        """A copy of one of this owner's files for Gradio to serve to the session that asked (the outputs folder
        itself is never served). A file polled again (a training job's images) is copied once."""
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:20]
        copy = Path(tempfile.gettempdir()) / "studio-served" / key / path.name
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        return str(copy)

    def lora_names(self, request: gr.Request | None) -> list[str]:
        """The finished LoRAs this owner may apply: their own, then those published to everyone ("shared/…")."""
        return library(self.lora_root(request)) + [f"{SHARED}{n}" for n in library(self.storage.library)]

    def lora_path(self, request: gr.Request | None, name: str) -> Path:
        """The folder of a LoRA named as `lora_names` lists it; nobody else's."""
        if name not in self.lora_names(request):
            raise ValueError(f"No finished LoRA named {name!r} in your library.")
        return self.storage.library / name.removeprefix(SHARED) if name.startswith(SHARED) else \
            self.lora_root(request) / name

    def model_id(self, request: gr.Request | None) -> str:
        """What a job of this session runs on, for caches: the model and the LoRAs picked in the header."""
        return repr((self.model, [(str(path), scale) for path, scale in self.loras.get(session(request), [])],
                     [str(path) for path, _ in self.session_embeddings(request)]))


    @functools.cached_property
    def sampler(self) -> str | None:
        """The sampler Generate and ControlNet open with for this model (None: their own default)."""
        return self.manager.default_sampler(self.model)

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
            loras: list[tuple[Path, float]] | None = None,
            embeddings: list[tuple[Path, str]] | None = None, lend: dict[str, Any] | None = None) -> Iterator[Job]:
        """The one path of every GPU handler: this session's turn on the GPU (one job per session, first come first
        served, its place in the line on the progress bar), its stop flag (armed afresh, also checked inside each
        denoising step, and set by the studio's time limit), the model lent with `loras` or else the LoRAs this
        session picked in the header, and with its embeddings (`session_embeddings`) unless `embeddings` is given,
        loading shown on the progress bar; the job's warnings become toasts. `lend`: what else `ModelManager.lend`
        takes (another pipeline class and its components: InstructPix2Pix's UNet)."""
        key = session(request)
        stop = self.cancel.arm(key)
        loras = self.loras.get(key, []) if loras is None else loras
        embeddings = self.session_embeddings(request) if embeddings is None else embeddings
        waiting = (lambda ahead: progress(0, desc=f"Waiting for the GPU: {ahead} job{'s' * (ahead != 1)} ahead of "
                                                   "yours"))
        with self.queue.turn(key, on_wait=waiting, should_stop=stop.is_set):
            limit = self.limits.timeout
            deadline = time.monotonic() + limit if limit else None

            def should_stop() -> bool:
                return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

            with self.manager.lend(self.model, loras=loras, embeddings=embeddings,
                                   on_progress=lambda f, what: progress(f, desc=what), **(lend or {})) as pipe:
                job = Job(pipe, should_stop, progress)
                try:
                    with interruptible(blocks(pipe), should_stop):
                        yield job
                    if pipe.withheld:
                        job.warnings.append(f"{pipe.withheld} image{'s were' if pipe.withheld > 1 else ' was'} "
                                            "withheld by the model's safety checker (shown grey).")
                except Cancelled:
                    if deadline is not None and time.monotonic() > deadline and not stop.is_set():
                        raise Cancelled(f"Stopped after {limit:g} s, this studio's limit for one job (set with "
                                        "--timeout)") from None
                    raise
        for warning in dict.fromkeys(job.warnings):
            gr.Warning(warning)

    def run_job(self, request: gr.Request | None, progress: gr.Progress, technique: Callable, *args: Any,
                unit: str = "steps", loras: list[tuple[Path, float]] | None = None, **kwargs: Any) -> Any:
        """`technique(pipe, *args, should_stop=..., on_step=..., **kwargs)` as one job; its warnings are shown."""
        with self.job(request, progress, loras=loras) as job:
            return job.run(technique, *args, unit=unit, **kwargs)

    def preview_interval(self, request: gr.Request | None) -> int:
        return self.previews.get(session(request), self.preview_every)

    def stream(self, request: gr.Request | None, progress: gr.Progress, work: Callable[[Job], Any], *,
               loras: list[tuple[Path, float]] | None = None,
               lend: dict[str, Any] | None = None) -> Iterator[tuple[list[Any] | None, Any]]:
        """`work(job)` as one job with live previews, for handlers that yield: (pictures, None) every few steps of
        the session's preview interval, then (None, what `work` returned). `work` runs in a worker thread (with this
        request's context, so its progress and warnings still reach this page) while this generator hands each
        preview to Gradio as it comes. With previews off, just the result."""
        every = self.preview_interval(request)
        if not every:
            with self.job(request, progress, loras=loras, lend=lend) as job:
                result = work(job)
            yield None, result
            return
        shown: queue.SimpleQueue = queue.SimpleQueue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with self.job(request, progress, loras=loras, lend=lend) as job:
                    job.show_previews(shown.put, every)
                    outcome["result"] = work(job)
            except BaseException as error:  # re-raised in the handler's thread, where Gradio shows it
                outcome["error"] = error
            finally:
                shown.put(None)

        worker = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        worker.start()
        try:
            while (pictures := shown.get()) is not None:
                yield pictures, None
        finally:
            if worker.is_alive():  # the page went away mid-job: stop the job too, at its next step
                self.cancel.cancel(session(request))
                worker.join()
        if "error" in outcome:
            raise outcome["error"]
        yield None, outcome["result"]

    def recipe(self, request: gr.Request | None, tab: str, form: "Form | None", values: dict[str, Any], *,
               loras: list[tuple[Path, float]] | None = None, **used: Any) -> Recipe:
        """How an output of `tab` was made, to write into its PNG: the form's values by name, with `used` (what the
        technique really used: the seed it drew) over them and the image inputs' files embedded; the model and the
        LoRAs (`loras`, else this session's) with their hashes."""
        recipe = Recipe(tab, {}, model=self.model, model_hash=self.manager.model_hash(self.model))
        for path, scale in self.loras.get(session(request), []) if loras is None else loras:
            name = f"{SHARED}{path.name}" if path.parent == self.storage.library else path.name
            recipe.loras.append({"name": name, "weight": scale, "hash": file_hash(weights_file(path))})
        for name, value in {**values, **used}.items():
            component = form.inputs.get(name) if form else None
            if isinstance(component, (gr.State, gr.File)):
                continue  # what a job keeps between runs (Imagic's tuned stages), and uploads (a Train tab's photos)
            if isinstance(component, gr.ImageEditor) and value:
                value = {"background": value.get("background") and embed_image(recipe, name, value["background"]),
                         "layers": [embed_image(recipe, f"{name}-layer", p) for p in value.get("layers") or []],
                         "composite": value.get("composite") and embed_image(recipe, f"{name}-composite",
                                                                             value["composite"])}
            elif isinstance(component, gr.Image) and value:
                value = embed_image(recipe, name, value)
            recipe.settings[name] = value
        return recipe

    def keep(self, request: gr.Request | None, recipe: Recipe, image: Any, seed: int) -> str:
        """`image` saved in this owner's outputs with `recipe` in it; the copy Gradio serves to this session."""
        return self.served(save_png(image, recipe, self.storage.png(self.owner(request), seed)))

    def restore(self, request: gr.Request | None, recipe: Recipe, form: "Form") -> dict[Any, Any]:
        """The values `form`'s components take from `recipe` (settings it does not name keep their values), its
        image inputs written out as files for this session."""
        folder = restored_inputs(request)
        folder.mkdir(parents=True, exist_ok=True)

        def image(ref: Any) -> str | None:
            if not (isinstance(ref, dict) and ref.get(IMAGE_REF) in recipe.images):
                return None
            path = folder / f"{ref[IMAGE_REF]}.png"
            path.write_bytes(recipe.images[ref[IMAGE_REF]])
            return str(path)

        updates: dict[Any, Any] = {}
        for name, value in recipe.settings.items():
            component = form.inputs.get(name)
            if isinstance(component, list):
                updates |= dict(zip(component, value if isinstance(value, list) else []))
            elif isinstance(component, gr.ImageEditor):
                layers = [image(layer) for layer in (value or {}).get("layers", [])]
                updates[component] = {"background": image((value or {}).get("background")),
                                      "layers": [layer for layer in layers if layer],
                                      "composite": image((value or {}).get("composite"))}
            elif isinstance(component, gr.Image):
                updates[component] = image(value)
            elif component is not None:
                updates[component] = value
        return updates

    def stop_job(self, request: gr.Request) -> None:
        """Every tab's Cancel: the running job of this session stops at its next step."""
        self.cancel.cancel(session(request))

    def end_session(self, request: gr.Request) -> None:
        """The browser tab closed (Gradio's unload): stop its job and forget what the session left here; on a shared
        studio an anonymous session's files go too (a logged-in user's stay theirs)."""
        key = session(request)
        self.cancel.cancel(key)
        self.loras.pop(key, None)
        self.previews.pop(key, None)
        self.embeddings.pop(key, None)
        shutil.rmtree(restored_inputs(request), ignore_errors=True)
        owner = self.sessions.pop(key, None)
        if owner and owner.startswith("session:"):
            for (whose, _), job in list(self.training.items()):
                if whose == owner:
                    job.cancel()
                    job.wait(60)  # its folder goes next: let it stop writing there first
            self.storage.forget(owner)


def restored_inputs(request: gr.Request | None) -> Path:
    """Where the input images of PNGs this session restored are written for its components (gone with it)."""
    return Path(tempfile.gettempdir()) / "studio-restored" / hashlib.sha1(session(request).encode()).hexdigest()


def session(request: gr.Request | None) -> str:
    """Per-browser-session key; API calls without a request share "api"."""
    return request.session_hash if request and request.session_hash else "api"


@contextmanager
def _as_messages() -> Iterator[None]:
    try:
        yield
    except Cancelled as stop:
        raise gr.Error(f"{stop}.", title="Cancelled") from None
    except Busy as busy:
        raise gr.Error(str(busy), title="One job at a time") from None
    except ModelUnavailable as error:
        raise gr.Error(str(error), title="Model not available", duration=None) from None
    except ValueError as error:
        raise gr.Error(str(error), title="Please check the input") from None


def user_errors(fn: Callable) -> Callable:
    """Turn the studio's exceptions into messages in the UI; the app stays up. Works on handlers that return and on
    handlers that yield (Gradio streams what they yield)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with _as_messages():
                yield from fn(*args, **kwargs)

        return streaming

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _as_messages():
            return fn(*args, **kwargs)

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
        def call(*args: Any) -> Any:
            *flat, request, progress = args
            return fn(self.values(tuple(flat)), request, progress)

        def stream(*args: Any) -> Iterator[Any]:
            yield from call(*args)

        # Gradio streams a handler's outputs only if the handler itself is a generator function.
        handler = stream if inspect.isgeneratorfunction(fn) else call

        # Named after the inputs, so the API's documentation reads like the form (`weights_0`, … for a list).
        names = [f"{name}_{i}" if isinstance(value, list) else name for name, value in self.inputs.items()
                 for i in range(len(value) if isinstance(value, list) else 1)]
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
        params += [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
                   inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     default=gr.Progress(track_tqdm=track_tqdm))]
        handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        handler.__annotations__ = {"request": gr.Request}
        handler.__name__ = handler.__qualname__ = getattr(fn, "__name__", "handler")
        return handler

    def task(self, gpu: GpuPolicy, fn: Callable, cost: Callable[[dict], float], *,
             track_tqdm: bool = False) -> Callable:
        """`bind(fn)` as a GPU task: on ZeroGPU it runs inside `@spaces.GPU`, for `cost(values)` seconds of work."""
        n = len(self.components)
        return gpu.task(self.bind(fn, track_tqdm=track_tqdm), lambda *args: cost(self.values(args[:n])))


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
