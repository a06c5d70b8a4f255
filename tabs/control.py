"""ControlNet / T2I-Adapter tab: up to three conditions (image → preprocessor → editable map → model), compare."""

import functools
import time
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr
from PIL import Image

from studio.control import MAX_UNITS, ControlParams, ControlUnit, run_control
from studio.models import ModelUnavailable
from studio.preprocess import PREPROCESSORS, Knobs, run_preprocessor
from studio.prompts import SYNTAX
from tabs import (GPU, PRESETS, Form, SendSource, SendTarget, StudioContext, build, checkbox, choices, model_examples,
                  seed_box, send_buttons, slider, user_errors)
from tabs.gpu import denoising
from tabs.inputs import EditorInput, ImageInput

KNOB_FIELDS = [f.name for f in fields(Knobs) if f.name != "detect_resolution"]
UNIT_FIELDS = ("enabled", "model", "map", "scale", "start", "end")  # each condition's inputs, in the API's order
PREVIEW_SECONDS = 5  # one preprocessor on one image, its network included
LABELS = {p.label: p.name for p in PREPROCESSORS.values()}
EXPLAIN = ("Zhang & Agrawala, *ControlNet* (2023): a trainable copy of the UNet's encoder reads a condition map at "
           "every step. Mou et al., *T2I-Adapter* (2023): a small network reads it **once**; its features are "
           "added to the UNet at every step. Pick an image and a preprocessor to get a map (edit it, or upload or "
           "draw your own), pick the model trained on that kind of map, and generate. Up to three conditions "
           "combine; each has its own strength and its own part of the schedule.")


@dataclass
class UnitUI:
    """One condition's components."""

    enabled: gr.Checkbox
    image: gr.Image
    preprocessor: gr.Dropdown
    pixel_perfect: gr.Checkbox
    detect_resolution: gr.Slider
    knobs: list[gr.components.Component]
    map: gr.ImageEditor
    model: gr.Dropdown
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider
    preview: gr.Button


def editor_value(image: Image.Image | None) -> dict:
    return {"background": image, "layers": [], "composite": image}


def map_from_editor(composite: Image.Image | None) -> Image.Image | None:
    """The edited map (the editor's composite: strokes over the detected map); where nothing is drawn on a blank
    canvas, black (no edge)."""
    if composite is None:
        return None
    composite = composite.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", composite.size, "black"), composite).convert("RGB")


class ControlTab:
    TAB_ID, LABEL = "control", "ControlNet / T2I-Adapter"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.size = ctx.size
        self.models = ctx.manager.controls_for(ctx.model)
        example, caption, example_map = self._example()
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown(EXPLAIN)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.prompt = gr.Textbox(caption, label="Prompt", info=SYNTAX, elem_id="control-prompt")
                    self.negative = gr.Textbox(label="Negative prompt")
                    self.units = [self._unit(k, example if k == 0 else None, example_map if k == 0 else None)
                                  for k in range(MAX_UNITS)]
                    with gr.Accordion("Settings", open=False):
                        self.steps = slider(ControlParams, "steps", "Steps")
                        self.cfg = slider(ControlParams, "cfg", "Guidance (CFG)")
                        self.seed = seed_box(ControlParams)
                        with gr.Row():
                            self.width = slider(ControlParams, "width", "Width", value=self.size)
                            self.height = slider(ControlParams, "height", "Height", value=self.size)
                        self.scheduler = choices(ControlParams, "scheduler", "Scheduler", value=ctx.sampler)
                        self.resize_mode = choices(ControlParams, "resize_mode", "Fit the maps to the output",
                                                   radio=True)
                        self.control_mode = choices(ControlParams, "control_mode", "Control mode", radio=True)
                        self.guess = checkbox(ControlParams, "guess_mode", "Guess mode (ControlNet only)")
                        with gr.Row():
                            self.init = ImageInput(label="img2img: start from this image (optional)", type="filepath",
                                                 height=160)
                            self.strength = slider(ControlParams, "strength", "img2img strength")
                    with gr.Row():
                        self.run = gr.Button("Generate", variant="primary", elem_id="control-run")
                        self.stop = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=1):
                    self.output = gr.Image(label="Result", format="png", interactive=False, height=320,
                                           type="filepath", elem_id="control-output", elem_classes="studio-image")
                    self.info = gr.Markdown(elem_id="control-info")
                    ctx.send_sources.append(SendSource(self.output, send_buttons(ctx, self.TAB_ID)))
                    # Opens on the first map: a thumbnail row this short would crop a lone map, which fills it.
                    self.fed = gr.Gallery(label="The maps as the models saw them", columns=3, height=160,
                                          format="png", object_fit="contain", selected_index=0)
                    with gr.Accordion("Compare ControlNet and T2I-Adapter on condition 1", open=False):
                        with gr.Row():
                            self.compare_cn = gr.Dropdown(self._kind("controlnet"), label="ControlNet",
                                                          value=(self._kind("controlnet") or [None])[0])
                            self.compare_ad = gr.Dropdown(self._kind("t2i_adapter"), label="T2I-Adapter",
                                                          value=(self._kind("t2i_adapter") or [None])[0])
                        self.compare_button = gr.Button("Compare (same map, prompt and seed)")
                        self.compared = gr.Gallery(columns=3, height=220, format="png", object_fit="contain",
                                                   elem_id="control-compare")
                        self.compare_info = gr.Markdown()
                    with gr.Accordion("All preprocessors on condition 1's image", open=False):
                        self.all_button = gr.Button("Run every preprocessor")
                        self.all_maps = gr.Gallery(columns=4, height=320, format="png", object_fit="contain",
                                                   elem_id="control-all")
                        self.all_info = gr.Markdown()
        self._wire()

    # Layout helpers
    def _unit(self, k: int, image: Image.Image | None, detected: Image.Image | None) -> UnitUI:
        default_model = self.models[0] if self.models else None
        with gr.Accordion(f"Condition {k + 1}", open=k == 0):
            enabled = gr.Checkbox(k == 0, label="Use this condition")
            with gr.Row():
                source = ImageInput(image, label="Image", type="filepath", height=200, elem_id=f"control-image-{k + 1}",
                                  elem_classes="studio-image")
                edited = EditorInput(editor_value(detected) if detected else None,
                                        label="Map (paint white to add, black to erase)",
                                        type="filepath", image_mode="RGBA", height=200, elem_id=f"control-map-{k + 1}",
                                        brush=gr.Brush(colors=["#ffffff", "#000000"], color_mode="fixed"),
                                        layers=False, canvas_size=(self.size, self.size), format="png")
            with gr.Row():
                preprocessor = gr.Dropdown(list(LABELS), value=PREPROCESSORS["canny"].label, label="Preprocessor",
                                           elem_id=f"control-pre-{k + 1}")
                model = gr.Dropdown(self.models, value=default_model, label="Control model",
                                    info="ControlNets and T2I-Adapters that fit this base model")
            with gr.Row():
                pixel_perfect = gr.Checkbox(True, label="Pixel perfect",
                                            info="Detect at the output's resolution")
                detect = slider(Knobs, "detect_resolution", "Detect resolution", value=max(64, self.size),
                                interactive=False)
            knobs = []
            with gr.Row():
                for name in KNOB_FIELDS:
                    label = name.replace("_", " ").capitalize()
                    visible = name in PREPROCESSORS["canny"].knobs
                    knobs.append(checkbox(Knobs, name, label, visible=visible) if "min" not in Knobs.meta(name)
                                 else slider(Knobs, name, label, visible=visible))
            with gr.Row():
                scale = slider(ControlUnit, "scale", "Strength")
                start = slider(ControlUnit, "start", "Control starts at")
                end = slider(ControlUnit, "end", "Control ends at")
            gr.Markdown("Start and end are fractions of the steps. Early steps set the layout, late ones the "
                        "detail: ending early keeps the map's layout but frees the details; starting late lets the "
                        "model choose the layout.")
            preview = gr.Button("Preview map", size="sm")
        return UnitUI(enabled, source, preprocessor, pixel_perfect, detect, knobs, edited, model, scale, start, end,
                      preview)

    def _kind(self, section: str) -> list[str]:
        return [m for m in self.models if self.ctx.manager.component_kind(m) == section]

    def _example(self) -> tuple[Image.Image | None, str, Image.Image | None]:
        """Condition 1's image, its map and the prompt the tab opens with (presets/control.yaml), so Generate works
        on the first click; models without an example start empty."""
        example = model_examples("control", self.ctx.family)
        if not example:
            return None, "", None
        image = Image.open(PRESETS / example["image"]).convert("RGB").resize((self.size, self.size))
        detected = run_preprocessor(example["preprocessor"], image, Knobs(detect_resolution=max(64, self.size)))
        return image, example["prompt"], detected

    # Wiring
    def _wire(self) -> None:
        for k, unit in enumerate(self.units):
            detect = Form(image=unit.image, preprocessor=unit.preprocessor, pixel_perfect=unit.pixel_perfect,
                          detect_resolution=unit.detect_resolution, width=self.width, height=self.height,
                          knobs=unit.knobs)
            unit.preprocessor.change(self.show_knobs, unit.preprocessor, unit.knobs, api_name=False, queue=False)
            unit.pixel_perfect.change(lambda on: gr.update(interactive=not on), unit.pixel_perfect,
                                      unit.detect_resolution, api_name=False, queue=False)
            unit.model.change(self.match_preprocessor, [unit.model, unit.preprocessor], unit.preprocessor,
                              api_name=False, queue=False)
            preview = detect.task(self.ctx.gpu, self.preview, lambda v: PREVIEW_SECONDS)
            # Previews have their own line: a map should not wait behind other people's images.
            unit.preview.click(preview, detect.components, unit.map, api_name="control_preview" if k == 0 else False,
                               concurrency_id="preview")
            for trigger in (unit.image.upload, unit.preprocessor.input):  # a new image or detector: a new map
                trigger(preview, detect.components, unit.map, api_name=False, concurrency_id="preview")
            if k == 0:  # another tab's picture arrives as condition 1's image, and its map is detected
                self.ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, unit.image, self.prompt, self.seed,
                                                        after=functools.partial(self.redetect, preview, detect, unit)))
        # The API's argument order of `control` and `control_compare`: the settings, then the units' or the compared
        # models' inputs.
        settings = dict(prompt=self.prompt, negative_prompt=self.negative, steps=self.steps, cfg=self.cfg,
                        seed=self.seed, width=self.width, height=self.height, scheduler=self.scheduler,
                        guess_mode=self.guess, control_mode=self.control_mode, resize_mode=self.resize_mode,
                        init=self.init, strength=self.strength)
        units = {f"{name}{k + 1}": getattr(u, name) for k, u in enumerate(self.units) for name in UNIT_FIELDS}
        form = Form(**settings, **units)
        self.form = self.ctx.restorable[self.TAB_ID] = form
        gpu = self.ctx.gpu
        units_on = lambda v: sum(bool(v[f"enabled{k + 1}"]) for k in range(MAX_UNITS))  # noqa: E731
        event = self.run.click(form.task(gpu, self.generate, lambda v: self.cost(v, 1 + units_on(v))),
                               form.components, [self.output, self.fed, self.info], api_name="control",
                               concurrency_id=GPU)
        compare = Form(**settings, map1=self.units[0].map, controlnet=self.compare_cn, adapter=self.compare_ad)
        comparing = self.compare_button.click(compare.task(gpu, self.compare, lambda v: self.cost(v, 1 + 2 + 1)),
                                              compare.components, [self.compared, self.compare_info],
                                              api_name="control_compare", concurrency_id=GPU)
        every = Form(image=self.units[0].image, width=self.width, height=self.height)
        self.all_button.click(every.task(gpu, self.preview_all, lambda v: PREVIEW_SECONDS * len(PREPROCESSORS)),
                              every.components, [self.all_maps, self.all_info], api_name="control_all_preprocessors",
                              concurrency_id="preview")
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event, comparing], api_name="cancel_control",
                        queue=False)

    @staticmethod
    def redetect(preview: Any, detect: Form, unit: UnitUI, sent: Any) -> None:
        sent.success(preview, detect.components, unit.map, api_name=False, concurrency_id="preview")

    @staticmethod
    def cost(values: dict, networks: float) -> float:
        """GPU seconds: the steps at the output size, each running the UNet and every enabled ControlNet (adapters
        run once and cost little; counted as a network anyway)."""
        return denoising(values["steps"] * networks / 2 + values["steps"], 1, values["width"], values["height"])

    @staticmethod
    def show_knobs(label: str) -> list:
        used = PREPROCESSORS[LABELS[label]].knobs
        return [gr.update(visible=name in used) for name in KNOB_FIELDS]

    def match_preprocessor(self, model: str, label: str):
        """Picking a model trained on another kind of map switches to a preprocessor that draws that kind."""
        found = self.ctx.manager.catalog.find(model or "")
        condition = found[1].get("condition") if found else None
        if not condition or PREPROCESSORS[LABELS[label]].condition == condition:
            return gr.update()
        matching = [p.label for p in PREPROCESSORS.values() if p.condition == condition]
        return gr.update(value=matching[0]) if matching else gr.update()

    @user_errors
    def preview(self, values: dict, request: gr.Request, progress: gr.Progress):
        image = self.ctx.image(values["image"])
        if image is None:
            raise ValueError("Upload an image for this condition first (or draw a map directly).")
        name = LABELS[values["preprocessor"]]
        resolution = (min(int(values["width"]), int(values["height"])) if values["pixel_perfect"]
                      else values["detect_resolution"])
        knobs = build(Knobs, dict(zip(KNOB_FIELDS, values["knobs"])), detect_resolution=resolution)
        detector = self.ctx.manager.annotator(name, on_progress=lambda f, what: progress(f, desc=what))
        return editor_value(run_preprocessor(name, image, knobs, detector))

    def _unit_from(self, k: int, model: str, edited: dict | None, scale: float, start: float,
                   end: float) -> ControlUnit:
        condition = map_from_editor(self.ctx.image((edited or {}).get("composite"), f"Condition {k + 1}'s map"))
        if condition is None:
            raise ValueError(f"Condition {k + 1} has no map: upload an image and press “Preview map”, or draw one.")
        if not model:
            raise ValueError(f"Choose a control model for condition {k + 1}.")
        return ControlUnit(self.ctx.manager.component(model), condition, scale=scale, start=start, end=end,
                           name=f"Condition {k + 1} ({model})")

    @user_errors
    def generate(self, values: dict, request: gr.Request, progress: gr.Progress):
        params = self.ctx.params(ControlParams, values)
        units = [self._unit_from(k, *(values[f"{name}{k + 1}"] for name in UNIT_FIELDS[1:]))
                 for k in range(MAX_UNITS) if values[f"enabled{k + 1}"]]
        if not units:
            gr.Warning("No condition is switched on: this is a plain text-to-image picture.")
        init = self.ctx.image(values["init"], "The img2img start image")
        for previews, result in self.ctx.stream(request, progress,
                                                lambda job: job.run(run_control, units, params, init_image=init)):
            if previews:
                yield previews[0], gr.skip(), gr.skip()
        names = ", ".join(f"{u.name} × {u.scale:g} over {u.start:g}–{u.end:g}" for u in units) or "no control"
        info = f"seed {result.seed} · {result.seconds:.2f} s · {names}"
        recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values, seed=result.seed)
        yield (self.ctx.keep(request, recipe, result.image, result.seed),
               [(m, u.name) for m, u in zip(result.conditions, units)], info)

    @user_errors
    def compare(self, values: dict, request: gr.Request, progress: gr.Progress):
        seed = values["seed"] if values["seed"] is not None and values["seed"] >= 0 else 0  # one seed for every run
        params = self.ctx.params(ControlParams, values, seed=seed)
        init = self.ctx.image(values["init"], "The img2img start image")
        runs = [("no control", [])] + [(f"{kind} {name}", [self._unit_from(0, name, values["map1"], 1.0, 0.0, 1.0)])
                                       for kind, name in (("ControlNet", values["controlnet"]),
                                                          ("T2I-Adapter", values["adapter"])) if name]
        shown, rows = [], []
        with self.ctx.job(request, progress) as job:
            for i, (label, units) in enumerate(runs):
                progress((i, len(runs)), desc=f"Generating: {label}", unit="images")
                result = run_control(job.pipe, units, params, init_image=init,
                                     should_stop=job.should_stop)
                job.warnings += result.warnings
                shown.append((result.image, f"{label} · {result.seconds:.2f} s"))
                rows.append((label, result.seconds))
        base = rows[0][1]
        table = "| run | seconds | × no control |\n|---|---|---|\n" + "\n".join(
            f"| {label} | {s:.2f} | {s / base:.2f} |" for label, s in rows)
        return shown, f"Same map, prompt and seed {params.seed}, {params.steps} steps:\n\n{table}"

    @user_errors
    def preview_all(self, values: dict, request: gr.Request, progress: gr.Progress):
        image, width, height = self.ctx.image(values["image"]), values["width"], values["height"]
        if image is None:
            raise ValueError("Upload an image for condition 1 first.")
        knobs = Knobs(detect_resolution=min(int(width), int(height)))
        maps, missing = [], []
        for i, pre in enumerate(PREPROCESSORS.values()):
            progress((i, len(PREPROCESSORS)), desc=pre.label, unit="preprocessors")
            try:
                detector = self.ctx.manager.annotator(pre.name, on_progress=lambda f, what: progress(f, desc=what))
            except ModelUnavailable:
                missing.append(pre.label)
                continue
            started = time.perf_counter()
            result = run_preprocessor(pre.name, image, knobs, detector)
            maps.append((result, f"{pre.label} · {time.perf_counter() - started:.2f} s"))
        note = (f"Not on this machine (their weights download on first use when online, or use --annotators): "
                f"{', '.join(missing)}." if missing else "")
        return maps, note
