"""SDEdit tab: paint strokes (and a mask) on an image or a blank canvas, pick t0, denoise; sweep t0; composite."""

from dataclasses import replace

import gradio as gr
import pandas as pd
from PIL import Image

from studio.prompts import SYNTAX
from studio.sdedit import MAX_SIDE, CompositeParams, SDEditParams, composite, guide_from_layers, run_sdedit, sweep
from tabs import GPU, Form, SendSource, SendTarget, StudioContext, seed_box, send_buttons, slider, user_errors
from tabs.inputs import EditorInput, ImageInput
from tabs.gpu import denoising

PALETTE = ["#dc1e1e", "#ebcd14", "#1eaa32", "#1e46e1", "#9628c8", "#ffffff", "#808080", "#000000", "#8b5a2b"]
SWEEP_T0 = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95]
T0_HINT = ("**t0 is the trade-off.** Around 0.3 the result keeps your strokes' layout and colours but stays "
           "rough; around 0.5–0.6 the model redraws them as a realistic picture; near 1 it forgets the guide and "
           "follows only the prompt.")


class SDEditTab:
    TAB_ID, LABEL = "sdedit", "SDEdit"  # also the "Send to SDEdit" buttons of the other tabs

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.size = ctx.size
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown("Meng et al., *SDEdit* (ICLR 2022): noise a guide to level t0, then denoise it with the "
                        "model. Paint colour strokes on the **Strokes** layer; to change only part of the picture "
                        "paint that part on the **Mask** layer (any colour), everything else stays pixel-exact.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.editor = EditorInput(
                        label="Guide", type="filepath", image_mode="RGBA", canvas_size=(self.size, self.size),
                        layers=gr.LayerOptions(allow_additional_layers=False, layers=["Strokes", "Mask"]),
                        brush=gr.Brush(colors=PALETTE, default_size=max(2, self.size // 12), color_mode="defaults"),
                        height=420, elem_id="sdedit-editor")
                    with gr.Row():
                        self.blank = gr.Button("Blank white canvas", size="sm")
                        self.use_mask = gr.Checkbox(True, label="Use the Mask layer when painted")
                    self.prompt = gr.Textbox(label="Prompt", placeholder="a red circle on the left", info=SYNTAX,
                                             elem_id="sdedit-prompt")
                    self.negative_prompt = gr.Textbox(label="Negative prompt")
                    self.t0 = slider(SDEditParams, "t0", "t0 (noise level)")
                    gr.Markdown(T0_HINT)
                    with gr.Accordion("More settings", open=False):
                        self.steps = slider(SDEditParams, "steps", "Steps (full schedule)")
                        self.cfg = slider(SDEditParams, "cfg", "Guidance (CFG)")
                        self.eta = slider(SDEditParams, "eta", "η (stochasticity)")
                        self.repeats = slider(SDEditParams, "repeats", "K passes")
                        self.feather = slider(SDEditParams, "feather", "Mask feather (px)")
                        self.seed = seed_box(SDEditParams)
                    with gr.Row():
                        self.run = gr.Button("Run SDEdit", variant="primary", elem_id="sdedit-run")
                        self.sweep_button = gr.Button("Sweep t0")
                        self.stop = gr.Button("Cancel", variant="stop")
                with gr.Column(scale=1):
                    self.output = gr.Image(label="Result", format="png", interactive=False, height=320,
                                           type="filepath", elem_id="sdedit-output", elem_classes="studio-image")
                    self.info = gr.Markdown(elem_id="sdedit-info")
                    ctx.send_sources.append(SendSource(self.output, send_buttons(ctx, self.TAB_ID)))
                    self.views = gr.Gallery(label="Guide noised to t0, then the model's predicted x0 along the way",
                                            columns=5, height=180, format="png", object_fit="contain")
                    self.strip = gr.Gallery(label="t0 sweep (same seed)", columns=6, height=180, format="png",
                                            object_fit="contain")
                    self.plot = gr.LinePlot(x="t0", y="value", color="measure", height=240,
                                            title="Faithfulness (distance to guide) and realism (denoising error)")
                    with gr.Accordion("Composite: paste a second image and harmonise it", open=False):
                        self.patch = ImageInput(label="Image to paste", type="filepath")
                        with gr.Row():
                            self.px = slider(CompositeParams, "x", "Centre x")
                            self.py = slider(CompositeParams, "y", "Centre y")
                            self.pscale = slider(CompositeParams, "scale", "Width")
                        self.paste = gr.Button("Paste into the guide (the pasted region becomes the mask)")
        ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, self.editor, self.prompt, self.seed))
        self._wire()

    def _wire(self) -> None:
        # The API's argument order of `sdedit` and `sdedit_sweep`.
        self.form = Form(editor=self.editor, use_mask=self.use_mask, prompt=self.prompt,
                         negative_prompt=self.negative_prompt, t0=self.t0, steps=self.steps, cfg=self.cfg,
                         eta=self.eta, repeats=self.repeats, seed=self.seed, feather=self.feather)
        self.ctx.restorable[self.TAB_ID] = self.form
        gpu = self.ctx.gpu
        event = self.run.click(self.form.task(gpu, self.sdedit, self.cost), self.form.components,
                               [self.output, self.views, self.info], api_name="sdedit", concurrency_id=GPU)
        sweeping = self.sweep_button.click(
            self.form.task(gpu, self.sweep, lambda v: sum(self.cost({**v, "t0": t0}) for t0 in SWEEP_T0)),
            self.form.components, [self.strip, self.plot], api_name="sdedit_sweep", concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event, sweeping], api_name="cancel_sdedit", queue=False)
        self.blank.click(lambda: Image.new("RGB", (self.size, self.size), "white"), None, self.editor,
                         api_name=False, queue=False)
        self.paste.click(self.paste_patch, [self.editor, self.patch, self.px, self.py, self.pscale], self.editor,
                         api_name="sdedit_composite")

    @staticmethod
    def cost(values: dict) -> float:
        """GPU seconds of one run: the last t0 of the steps, K times, at the guide's size (at most MAX_SIDE)."""
        background = (values["editor"] or {}).get("background")
        width, height = Image.open(background).size if background else (512, 512)  # reads the header only
        scale = min(1.0, MAX_SIDE / max(width, height))
        return denoising(values["steps"] * values["t0"] * values["repeats"], 1, width * scale, height * scale)

    def _inputs(self, values: dict) -> tuple:
        editor = values["editor"]
        if not editor or not (editor.get("background") or editor.get("layers")):
            raise ValueError("Upload an image or press “Blank white canvas”, then paint on it.")
        layers = [self.ctx.image(path, what) for path, what in zip(editor.get("layers") or [], ("The Strokes layer",
                                                                                             "The Mask layer"))]
        guide, mask = guide_from_layers(self.ctx.image(editor.get("background"), "The guide"),
                                        layers[0] if layers else None,
                                        layers[1] if values["use_mask"] and len(layers) > 1 else None)
        return guide, mask, self.ctx.params(SDEditParams, values)

    @user_errors
    def sdedit(self, values: dict, request: gr.Request, progress: gr.Progress):
        guide, mask, params = self._inputs(values)
        for previews, result in self.ctx.stream(request, progress,
                                                lambda job: job.run(run_sdedit, guide, params, mask=mask)):
            if previews:
                yield previews[0], gr.skip(), gr.skip()
        views = [(result.noised, f"x(t0), t = {result.t0_timestep}")]
        views += [(image, f"predicted x0 after step {step}") for step, image in result.previews]
        masked = "inside the mask only" if mask is not None else "whole image"
        info = (f"t0 = {params.t0:.2f} → timestep {result.t0_timestep} of 1000 · seed {result.seed} · "
                f"K = {params.repeats} · {masked}")
        recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values, seed=result.seed)
        yield self.ctx.keep(request, recipe, result.image, result.seed), views, info

    @user_errors
    def sweep(self, values: dict, request: gr.Request, progress: gr.Progress):
        guide, mask, params = self._inputs(values)
        if params.seed < 0:
            params = replace(params, seed=0)  # the sweep compares t0 values, so they must share one seed
        with self.ctx.job(request, progress) as job:
            points = sweep(job.pipe, guide, params, SWEEP_T0, mask=mask, should_stop=job.should_stop,
                           on_step=job.on_step("Sweeping t0", "runs"))
            job.warnings += [w for p in points for w in p.result.warnings]
        strip = [(p.result.image, f"t0 {p.t0:.2f}") for p in points]
        rows = [{"t0": p.t0, "value": v, "measure": m} for p in points
                for v, m in ((p.faithfulness, "distance to guide"), (p.realism, "denoising error"))]
        return strip, pd.DataFrame(rows)

    @user_errors
    def paste_patch(self, editor, patch, x, y, scale):
        if patch is None:
            raise ValueError("Choose an image to paste first.")
        background = (editor or {}).get("background")
        base = self.ctx.image(background, "The guide") if background else Image.new("RGB", (self.size,) * 2, "white")
        collage, mask = composite(base, self.ctx.image(patch, "The image to paste"), x, y, scale)
        mask_layer = Image.new("RGBA", collage.size)
        mask_layer.putalpha(Image.fromarray(mask))
        return {"background": collage, "layers": [Image.new("RGBA", collage.size), mask_layer], "composite": collage}
