"""Classify tab: zero-shot classification with the diffusion model's own denoising error (Li et al., ICCV 2023)."""

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.classify import (MAX_FILES, SCHEDULES, BatchResult, ClassifyParams, class_presets, classify,
                             classify_batch, labelled_images, opening_list, plan, stages_from_text)
from tabs import GPU, Form, SendTarget, StudioContext, build, choices, seed_box, session, slider, user_errors
from tabs.gpu import SECONDS_PER_EVALUATION
from tabs.inputs import ImageInput

CUSTOM = "custom"
SHOWN = 10  # bars in the ranking chart; more would make the labels unreadable
EXPLAIN = ("Li et al., *Your Diffusion Model is Secretly a Zero-Shot Classifier* (ICCV 2023). For each class "
           "prompt the model denoises the same noisy copies of your image; the class whose prompt lets it predict "
           "the noise best (lowest error) wins. An adaptive schedule measures every class on a few noise levels, "
           "keeps the best ones and spends more samples on those.")


def parse_stages(schedule: str, custom: str) -> list[tuple[int, int]]:
    """A preset name, or `custom` as "samples:kept" pairs, e.g. "10:5, 50:1"."""
    return SCHEDULES[schedule] if schedule != CUSTOM else stages_from_text(custom)


class ClassifyTab:
    TAB_ID, LABEL = "classify", "Classify"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.presets = class_presets()
        preset = opening_list(ctx.family)
        classes, templates = self.presets[preset]
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown(EXPLAIN)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.image = ImageInput(label="Image", type="filepath", height=260, elem_id="classify-image",
                                          elem_classes="studio-image")
                    self.preset = gr.Dropdown(list(self.presets), value=preset, label="Class list preset")
                    self.classes = gr.Textbox("\n".join(classes), label="Classes (one per line)", lines=6,
                                              max_lines=12, elem_id="classify-classes")
                    self.templates = gr.Textbox("\n".join(templates), label="Prompt templates (one per line)",
                                                lines=1, info="{} is replaced by the class name; several "
                                                "templates are averaged (and cost more).")
                    with gr.Row():
                        self.schedule = gr.Radio([*SCHEDULES, CUSTOM], value="fast", label="Schedule",
                                                 info="fast: 10 samples keep 3, then 50 keep 1 · paper: 50 keep 5, "
                                                 "then 500 keep 1 · exhaustive: 100 samples for every class")
                        self.custom = gr.Textbox("10:5, 50:1", label="Custom stages (samples:kept)", visible=False)
                    with gr.Accordion("More settings", open=False):
                        self.loss = choices(ClassifyParams, "loss", "Error", radio=True)
                        self.seed = seed_box(ClassifyParams)
                        self.batch = slider(ClassifyParams, "batch", "Batch")
                    self.cost = gr.Markdown(self.estimate("\n".join(classes), "\n".join(templates), "fast", "",
                                                          ClassifyParams.default("loss"), 0,
                                                          ClassifyParams.default("batch")),
                                            elem_id="classify-cost")
                    with gr.Row():
                        self.run = gr.Button("Classify", variant="primary", elem_id="classify-run")
                        self.stop = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=1):
                    self.info = gr.Markdown(elem_id="classify-info")
                    self.ranking = gr.BarPlot(x="class", y="error", sort="y", height=300, x_label_angle=-30,
                                              title=f"Mean noise-prediction error, best {SHOWN} classes "
                                                    "(lower wins)",
                                              elem_id="classify-ranking")
                    self.curves = gr.LinePlot(x="timestep", y="error", color="class", height=240,
                                              title="Error per timestep, best five classes")
                    self.stages = gr.Dataframe(label="Elimination stages", interactive=False, wrap=True)
                    self.report = gr.File(label="Report: the image as a PNG holding these settings and the "
                                                "prediction (drop it on Restore to classify it again)",
                                          elem_id="classify-report")
            with gr.Accordion("Batch: accuracy over a labelled folder or zip (one sub-folder per class)",
                              open=False):
                with gr.Row():
                    self.archive = gr.File(label="Zip of class folders", file_types=[".zip"])
                    roots = ctx.storage.data_roots
                    self.folder = gr.Textbox(label="…or a folder on this machine", visible=bool(roots),
                                             placeholder=str(roots[0] / "pets") if roots else "",
                                             info=f"Inside {', '.join(map(str, roots))}" if roots else None)
                self.run_batch = gr.Button("Run batch", variant="primary")
                self.accuracy = gr.Markdown()
                self.confusion = gr.Dataframe(label="Confusion matrix (rows: truth, columns: predicted)",
                                              interactive=False)
                self.per_image = gr.Dataframe(label="Per image", interactive=False, max_height=300)
        ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, self.image))
        self._wire()

    def _wire(self) -> None:
        settings = [self.classes, self.templates, self.schedule, self.custom, self.loss, self.seed, self.batch]
        self.preset.change(self.use_preset, self.preset, [self.classes, self.templates], api_name=False,
                           queue=False)
        self.schedule.change(lambda s: gr.update(visible=s == CUSTOM), self.schedule, self.custom, api_name=False,
                             queue=False)
        for component in (self.classes, self.templates, self.schedule, self.custom):
            component.change(self.estimate, settings, self.cost, api_name=False, queue=False)
        # The API's argument order of `classify` and `classify_batch`: the image(s), then the settings.
        named = dict(classes=self.classes, templates=self.templates, schedule=self.schedule, custom=self.custom,
                     loss=self.loss, seed=self.seed, batch=self.batch)
        one, many = Form(image=self.image, **named), Form(archive=self.archive, folder=self.folder, **named)
        self.form = self.ctx.restorable[self.TAB_ID] = one
        event = self.run.click(one.task(self.ctx.gpu, self.classify, self.cost), one.components,
                               [self.info, self.ranking, self.curves, self.stages, self.report], api_name="classify",
                               concurrency_id=GPU)
        # The batch handler only plans; each share of images is one GPU task (all of them, except on ZeroGPU).
        self.chunk = self.ctx.gpu.task(self.classify_some, lambda source, params, n, *_: n * self.image_seconds(
            params, len(labelled_images(Path(source))[0])))
        batch = self.run_batch.click(many.bind(self.batch_run), many.components,
                                     [self.accuracy, self.confusion, self.per_image], api_name="classify_batch",
                                     concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event, batch], api_name="cancel_classify", queue=False)

    def use_preset(self, name: str):
        classes, templates = self.presets[name]
        return "\n".join(classes), "\n".join(templates)

    @staticmethod
    def _params(values: dict) -> ClassifyParams:
        return build(ClassifyParams, values, templates=(values["templates"] or "").splitlines(),
                     stages=parse_stages(values["schedule"], values["custom"] or ""))

    def estimate(self, classes, templates, schedule, custom, loss, seed, batch) -> str:
        try:
            params = self._params(dict(templates=templates, schedule=schedule, custom=custom, loss=loss, seed=seed,
                                       batch=batch))
            n = len([c for c in (classes or "").splitlines() if c.strip()])
            calls, sizes = plan(n, params)
        except ValueError as error:
            return f"⚠️ {error}"
        stages = " → ".join(f"{k} classes × {s} samples" for k, (s, _) in zip(sizes, params.stages))
        return f"**Cost:** {calls:,} UNet evaluations ({stages})."

    def image_seconds(self, params: ClassifyParams, n_classes: int) -> float:
        """GPU seconds of one image: the schedule's UNet evaluations at the model's size."""
        return plan(n_classes, params)[0] * SECONDS_PER_EVALUATION * (self.ctx.size / 512) ** 2

    def cost(self, values: dict) -> float:
        return self.image_seconds(self._params(values), len([c for c in values["classes"].splitlines() if c.strip()]))

    @user_errors
    def classify(self, values: dict, request: gr.Request, progress: gr.Progress):
        image = self.ctx.image(values["image"])
        if image is None:
            raise ValueError("Upload an image to classify.")
        params = self._params(values)
        started = time.perf_counter()
        result = self.ctx.run_job(request, progress, classify, image, (values["classes"] or "").splitlines(),
                                  params, unit="UNet calls")
        seconds = time.perf_counter() - started
        info = (f"### Prediction: **{result.label}**\n{result.unet_calls:,} UNet evaluations in {seconds:.1f} s "
                f"({result.unet_calls / seconds:,.0f}/s). Errors of classes pruned early are over fewer samples.")
        bars = pd.DataFrame(result.ranking[:SHOWN], columns=["class", "error"])
        best = [name for name, _ in result.ranking[:5]]
        curves = pd.DataFrame([{"class": name, "timestep": t, "error": e} for name in best
                               for t, e in sorted(result.errors[name].items())])
        stages = pd.DataFrame([{"stage": i + 1, "samples": s.samples, "classes measured": len(s.evaluated),
                                "kept": ", ".join(s.kept)} for i, s in enumerate(result.history)])
        recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values)
        recipe.extra = {"prediction": result.label, "ranking": result.ranking[:SHOWN]}
        return info, bars, curves, stages, self.ctx.keep(request, recipe, image, params.seed)

    @user_errors
    def classify_some(self, source: str, params: ClassifyParams, n: int | None, request: gr.Request,
                      progress: gr.Progress) -> BatchResult:
        """One GPU task of a batch: up to `n` more images (all with None), their results appended to the batch's
        file, so the next task resumes after them."""
        with self.ctx.job(request, progress) as job:
            return classify_batch(job.pipe, Path(source), params,
                                  self.ctx.storage.home(self.ctx.owner(request)) / "classify", max_new=n,
                                  max_pixels=self.ctx.limits.max_pixels, should_stop=job.should_stop,
                                  on_image=job.on_step("Classifying", "images"))

    @user_errors
    def batch_run(self, values: dict, request: gr.Request, progress: gr.Progress):
        archive, folder = values["archive"], (values["folder"] or "").strip()
        source = Path(archive) if archive else self.ctx.storage.data_path(folder) if folder else None
        if source is None or not source.exists():
            raise ValueError("Upload a zip of class folders, or type the path of such a folder on this machine.")
        params = self._params(values)
        classes = labelled_images(source, max_files=self.ctx.limits.max_batch_images or MAX_FILES)[0]
        if self.ctx.cluster:  # the Ray cluster's workers classify (tabs/batch.py); nothing runs on this model
            result = yield from self.ctx.cluster.classify(self.ctx, request, progress, source, params,
                                                          self._batch_tables)
        else:
            per_task = self.ctx.gpu.chunk_steps(self.image_seconds(params, len(classes))) if self.ctx.gpu.zero \
                else None
            while True:
                result = self.chunk(str(source), params, per_task, request, progress)
                yield self._batch_tables(result)
                if not result.pending or self.ctx.cancel.flag(session(request)).is_set():
                    break
        if result.skipped:
            gr.Warning(f"Skipped {len(result.skipped)} file(s) that are not images: "
                       f"{', '.join(result.skipped[:5])}{' …' if len(result.skipped) > 5 else ''}")

    @staticmethod
    def _batch_tables(result: BatchResult) -> tuple:
        confusion = pd.DataFrame(result.confusion(), index=result.classes, columns=result.classes)
        confusion.insert(0, "truth", result.classes)
        accuracy = (f"**Accuracy: {100 * result.accuracy:.1f}%** on {len(result.rows)} images · "
                    f"{len(result.classes)} classes (from the sub-folder names; the class list above is not used)")
        if result.pending:
            accuracy += f" · {result.pending} more to go"
        return accuracy, confusion, pd.DataFrame(result.rows)
