"""The Train tab's Sweep: the tab's recipe over a grid of one or two settings, each point a LoRA trained and judged
(studio/batch/sweep.py), shown as a grid of successes. Here, each point is one job on this process's model (a turn
on the GPU, Cancel, the time limit; a ZeroGPU call each); with --ray the points run on the cluster's workers."""

from typing import Any

import gradio as gr
import pandas as pd

from studio.batch.sweep import NO_JUDGE, Point, SweepParams, SweepRun, parse_setting
from studio.shapes.concepts import CONCEPTS
from studio.trainer import TrainState
from tabs import GPU, Form, StudioContext, build, choices, session, slider, user_errors
from tabs.gpu import denoising

EXPLAIN = ("The recipe above, trained at every combination of one or two settings (seeds × learning rates, say). "
           "Each point draws its instance prompt from fixed seeds (100, 101, …) and counts the images in which the "
           "Shapes detector sees the concept: on Shapes the preset recipe teaches the cross in 8 to 15 of 20 images "
           "depending on the training seed alone. Each point becomes a LoRA of your library, "
           "`<name>-<setting><value>…`; running the same sweep again resumes it.")


class SweepSection:
    def __init__(self, ctx: StudioContext, train: Any, settings: dict[str, gr.components.Component]):
        """`train` is the Train tab, whose images, prompts and `settings` widgets are the recipe."""
        self.ctx, self.train = ctx, train
        with gr.Accordion("Sweep: the recipe over a grid of settings", open=False, elem_id="train-sweep"):
            gr.Markdown(EXPLAIN + (" **The points run on the Ray cluster.**" if ctx.cluster else ""))
            with gr.Row():
                self.first = gr.Textbox("seed=0, 1", label="Swept setting", info="field=value, value, … (any setting "
                                                                                 "above, e.g. lr=1e-3, 2e-3)")
                self.second = gr.Textbox("lr=1e-3, 2e-3", label="Second swept setting (may be empty)")
            with gr.Row():
                self.concept = choices(SweepParams, "concept", "A success draws",
                                       value=next(iter(CONCEPTS)) if ctx.family == "shapes" else NO_JUDGE)
                self.eval_seeds = slider(SweepParams, "eval_seeds", "Images per point")
                self.eval_steps = slider(SweepParams, "eval_steps", "Steps per image")
            with gr.Row():
                self.run = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
                self.stop = gr.Button("Cancel sweep", variant="stop")
            self.status = gr.Markdown(elem_id="sweep-status")
            self.grid = gr.Dataframe(label="Successes per point: the first setting down, the second across",
                                     interactive=False)
            self.points = gr.Dataframe(label="Points", interactive=False)
        # The API's argument order of `train_sweep`: the Train tab's (files, name, prompts, settings), then the grid.
        form = Form(files=train.files, name=train.name, instance_prompt=train.instance_prompt,
                    identifier=train.identifier, class_prompt=train.class_prompt,
                    validation_prompts=train.validation_prompts, **settings, first=self.first, second=self.second,
                    concept=self.concept, eval_seeds=self.eval_seeds, eval_steps=self.eval_steps)
        self.point = ctx.gpu.task(self._point, self._point_seconds)
        event = self.run.click(form.bind(self.sweep), form.components, [self.status, self.grid, self.points],
                               api_name="train_sweep", concurrency_id=GPU)
        self.stop.click(ctx.stop_job, None, None, cancels=[event], api_name="cancel_sweep", queue=False)

    @user_errors
    def sweep(self, values: dict, request: gr.Request, progress: gr.Progress):
        # 1. The Train tab's recipe and images, the grid of points, each within this studio's limits
        base, images, _ = self.train.recipe(values)  # a DreamBooth recipe: one concept
        axes = [parse_setting(text) for text in (values["first"], values["second"]) if (text or "").strip()]
        run = SweepRun(self.ctx.model, self.ctx.lora_root(request), values["name"] or "", base,
                       build(SweepParams, values, axes=axes), images)
        for point in run.points:
            self.ctx.limits.check(point.params)
        run.check_names()
        # 2. On the cluster: one run, its progress streamed, and the cluster's last word kept under the grid
        cluster = ""
        if self.ctx.cluster:
            final, _ = yield from self.ctx.cluster.stream(
                self.ctx, request, progress,
                lambda report, should_stop: run.run_on(self.ctx.cluster.pool(self.ctx.model), on_progress=report,
                                                       should_stop=should_stop),
                lambda state: self._tables(run, f"**Cluster:** {state.describe()}"))
            cluster = f"\n\n**Cluster:** {final.describe()}"
        # 3. Here: a point at a time, each one job on the shared model
        else:
            todo = run.pending()
            for k, point in enumerate(todo):
                yield self._tables(run, f"Point {k + 1} of {len(todo)}: training **{point.name}**")
                run.record(self.point(run, point, request, progress))
                if self.ctx.cancel.flag(session(request)).is_set():
                    break
        yield self._tables(run, f"{len(run.rows())} of {len(run.points)} points done.{cluster}")

    @user_errors
    def _point(self, run: SweepRun, point: Point, request: gr.Request, progress: gr.Progress) -> dict:
        with self.ctx.job(request, progress, loras=[]) as job:
            state = TrainState()

            def should_stop() -> bool:  # asked every training and denoising step: show the training step too
                job.progress((state.step, point.params.steps), desc=f"{point.name}: training", unit="steps")
                return job.should_stop()

            return run.train(self.ctx.manager, point, state=state, should_stop=should_stop)

    def _point_seconds(self, run: SweepRun, point: Point, request: gr.Request | None = None,
                       progress: gr.Progress | None = None) -> float:
        """GPU seconds of one point: its steps, its two validations, and the images that judge it."""
        step, validation = self.train._costs(point.params)
        side = point.params.resolution
        return point.params.steps * step + 2 * validation + denoising(run.sweep.eval_steps, run.sweep.eval_seeds,
                                                                      side, side)

    @staticmethod
    def _tables(run: SweepRun, status: str) -> tuple:
        header, body = run.table()
        points = pd.DataFrame([{"point": r["point"], **r["settings"], "success": r["success"], "of": r["of"],
                                "final loss": r["final_loss"], "seconds": r["seconds"]} for r in run.rows()])
        return status, pd.DataFrame(body, columns=header), points
