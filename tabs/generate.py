"""Generate tab: text to image, with reproducible seeds, PNGs that carry their parameters, and "Send to" buttons."""

import time
from dataclasses import asdict, fields

import gradio as gr

from studio.generate import GenerateParams, read_png_params, run_generate, save_png
from tabs import GPU, Form, SendTarget, StudioContext, choices, model_examples, seed_box, slider, user_errors
from tabs.gpu import denoising

FIELDS = [f.name for f in fields(GenerateParams)]  # the API's argument order of `generate` and `restore_params`


class GenerateTab:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        size = ctx.size
        with gr.Tab("Generate", id="generate"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a watercolor fox in the snow",
                                             info="What to draw. CLIP reads the first 75 word pieces.",
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
                        self.scheduler = choices(GenerateParams, "scheduler", "Scheduler")
                        self.n_images = slider(GenerateParams, "n_images", "Images")
                with gr.Column(scale=1):
                    self.gallery = gr.Gallery(label="Images", format="png", columns=2, height=520,
                                              object_fit="contain", buttons=["download", "fullscreen"],
                                              interactive=False, elem_id="gen-gallery")
                    self.info = gr.Markdown()
                    with gr.Row():
                        # Buttons now, wiring later: the target tabs are built after this one.
                        self.send_buttons = {tab_id: gr.Button(f"Send to {label} ➜", size="sm")
                                             for tab_id, label in ctx.send_to.items()}
                    with gr.Accordion("Restore parameters from a studio PNG", open=False):
                        self.restore = gr.File(label="Drop a PNG made here", file_types=[".png"])
            gr.Examples(model_examples("generate", ctx.family), inputs=[self.prompt, self.negative_prompt],
                        label="Examples")
            # Inside the Tab: a component left directly in gr.Tabs makes Gradio draw the next tab's header twice.
            self.last = gr.State([])  # metadata of the images in the gallery
            self.selected = gr.State(0)
        self.form = Form(**{name: getattr(self, name) for name in FIELDS})
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
        self.restore.upload(self.restore_params, self.restore, self.form.components, api_name="restore_params")

    @user_errors
    def generate(self, values: dict, request: gr.Request, progress: gr.Progress):
        params = self.ctx.params(GenerateParams, values)
        started = time.perf_counter()
        result = self.ctx.run_job(request, progress, run_generate, params, model_name=self.ctx.model)
        owner = self.ctx.owner(request)
        saved = [save_png(image, meta, self.ctx.storage.png(owner, meta["image_seed"]))
                 for image, meta in zip(result.images, result.metadata)]
        seeds = f"{result.seed}" if len(saved) == 1 else f"{result.seed}–{result.seed + len(saved) - 1}"
        where = "kept with your session" if self.ctx.deployment.shared else f"saved to `{saved[0].parent}`"
        info = (f"**Seed {seeds}** · {time.perf_counter() - started:.1f} s · {params.steps} steps "
                f"{params.scheduler} · {result.metadata[0]['width']}×{result.metadata[0]['height']} · {where}")
        return [self.ctx.served(path) for path in saved], info, result.metadata

    @staticmethod
    def select(event: gr.SelectData) -> int:
        return event.index

    @user_errors
    def restore_params(self, path: str | None):
        if path is None:
            raise ValueError("Drop a PNG made by the studio here.")
        params = asdict(read_png_params(path))
        return [params[name] for name in FIELDS]

    def wire_send_to(self, targets: list[SendTarget], tabs: gr.Tabs) -> None:
        """Each "Send to" button hands the selected image, with its prompt and seed, to its target tab."""
        for target in targets:
            outputs = [c for c in (target.image, target.prompt, target.seed) if c is not None]

            def send(gallery, last, index, target=target):
                if not gallery:
                    raise gr.Error("Generate an image first.")
                index = min(index, len(gallery) - 1)
                values = [gallery[index][0]]
                values += [last[index]["prompt"]] if target.prompt is not None else []
                values += [last[index]["image_seed"]] if target.seed is not None else []
                return [*values, gr.Tabs(selected=target.tab_id)]

            self.send_buttons[target.tab_id].click(send, [self.gallery, self.last, self.selected], [*outputs, tabs],
                                                   api_name=False)
