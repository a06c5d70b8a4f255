"""Generate tab: text to image, with reproducible seeds, PNGs that carry their parameters, and "Send to" buttons."""

import time
from dataclasses import fields

import gradio as gr

from studio.generate import GenerateParams, run_generate
from studio.prompts import SYNTAX
from tabs import (GPU, Form, SendSource, StudioContext, choices, model_examples, seed_box, send_buttons, slider,
                  user_errors)
from tabs.gpu import denoising

FIELDS = [f.name for f in fields(GenerateParams)]  # the API's argument order of `generate`


class GenerateTab:
    TAB_ID = "generate"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        size = ctx.size
        with gr.Tab("Generate", id=self.TAB_ID):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a watercolor fox in the snow",
                                             info=f"What to draw. {SYNTAX}",
                                             elem_id="gen-prompt")
                    self.negative_prompt = gr.Textbox(label="Negative prompt", lines=1,
                                                      placeholder="blurry, low quality",
                                                      info="What to steer away from (used with guidance > 1).")
                    with gr.Row():
                        self.run = gr.Button("Generate", variant="primary", scale=3, elem_id="gen-run")
                        self.stop = gr.Button("Cancel", variant="stop", scale=1)
                    with gr.Row(equal_height=True):
                        self.seed = seed_box(GenerateParams, scale=3, elem_id="gen-seed")
                        with gr.Column(scale=1, min_width=120):
                            self.random_seed = gr.Button("Random seed", size="sm")
                            self.reuse_seed = gr.Button("Reuse last seed", size="sm")
                    self.steps = slider(GenerateParams, "steps", "Steps")
                    self.cfg = slider(GenerateParams, "cfg", "Guidance (CFG)")
                    with gr.Row():
                        self.width = slider(GenerateParams, "width", "Width", value=size)
                        self.height = slider(GenerateParams, "height", "Height", value=size)
                    with gr.Row():
                        self.scheduler = choices(GenerateParams, "scheduler", "Scheduler", value=ctx.sampler)
                        self.n_images = slider(GenerateParams, "n_images", "Images")
                with gr.Column(scale=1):
                    self.gallery = gr.Gallery(label="Images", format="png", columns=2, height=520,
                                              object_fit="contain", buttons=["download", "fullscreen"],
                                              interactive=False, elem_id="gen-gallery")
                    self.info = gr.Markdown(elem_id="gen-info")
                    self.send = send_buttons(ctx, self.TAB_ID)
            gr.Examples(model_examples("generate", ctx.family), inputs=[self.prompt, self.negative_prompt],
                        label="Examples")
            # Inside the Tab: a component left directly in gr.Tabs makes Gradio draw the next tab's header twice.
            self.last = gr.State([])  # metadata of the images in the gallery
            self.selected = gr.State(0)
        self.form = Form(**{name: getattr(self, name) for name in FIELDS})
        ctx.restorable[self.TAB_ID] = self.form
        ctx.send_sources.append(SendSource(self.gallery, self.send, self.selected))
        self._wire()

    def _wire(self) -> None:
        work = self.form.task(self.ctx.gpu, self.generate, lambda v: denoising(v["steps"], v["n_images"], v["width"],
                                                                               v["height"]), track_tqdm=True)
        event = self.run.click(work, self.form.components, [self.gallery, self.info, self.last], api_name="generate",
                               concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event], api_name="cancel_generate", queue=False)
        self.random_seed.click(lambda: -1, None, self.seed, api_name=False, queue=False)
        self.reuse_seed.click(lambda last: last[0]["seed"] if last else -1, self.last, self.seed, api_name=False,
                              queue=False)
        self.gallery.select(self.select, None, self.selected, api_name=False, queue=False)

    @user_errors
    def generate(self, values: dict, request: gr.Request, progress: gr.Progress):
        params = self.ctx.params(GenerateParams, values)
        started = time.perf_counter()
        for previews, result in self.ctx.stream(request, progress,
                                                lambda job: job.run(run_generate, params, model_name=self.ctx.model)):
            if previews:
                yield previews, gr.skip(), gr.skip()
        served = []
        for image, meta in zip(result.images, result.metadata):
            # Each image's own recipe: its seed, one image, so the file makes exactly that picture again.
            recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values, seed=meta["image_seed"], n_images=1,
                                     width=meta["width"], height=meta["height"])
            recipe.extra = {k: meta[k] for k in ("index", "device", "versions")}
            served.append(self.ctx.keep(request, recipe, image, meta["image_seed"]))
        seeds = f"{result.seed}" if len(served) == 1 else f"{result.seed}–{result.seed + len(served) - 1}"
        where = "kept with your session" if self.ctx.deployment.shared else f"saved to `{self.ctx.outputs}`"
        info = (f"**Seed {seeds}** · {time.perf_counter() - started:.1f} s · {params.steps} steps "
                f"{params.scheduler} · {result.metadata[0]['width']}×{result.metadata[0]['height']} · {where}")
        yield served, info, result.metadata

    @staticmethod
    def select(event: gr.SelectData) -> int:
        return event.index
