"""InstructPix2Pix tab: an input image and a written instruction; two guidance scales; the s_T × s_I grid."""

import gradio as gr
from diffusers import StableDiffusionInstructPix2PixPipeline

from studio.ip2p import IP2PParams, guidance_grid, run_ip2p
from tabs import (GPU, PRESETS, Form, SendSource, SendTarget, StudioContext, choices, model_examples, seed_box,
                  send_buttons, slider, user_errors)
from tabs.gpu import denoising
from tabs.inputs import ImageInput

# The grid's scales: the paper's guidance figure spans about these, with its defaults (7.5, 1.5) inside.
GRID_TEXT = [3.0, 5.0, 7.5, 10.0]
GRID_IMAGE = [1.0, 1.2, 1.5, 2.0]
HINT = ("**Two dials.** *Text guidance* s_T pushes the edit further; *image guidance* s_I keeps more of the input. "
        "If nothing changes, raise s_T or lower s_I; if the picture falls apart, do the opposite. "
        "**Guidance grid** shows every pair at once, with the same seed.")


class IP2PTab:
    TAB_ID, LABEL = "ip2p", "InstructPix2Pix"  # also the "Send to InstructPix2Pix" buttons of the other tabs

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        models = ctx.manager.instruct_models_for(ctx.model)
        presets = model_examples("ip2p", ctx.family)
        settings = presets.get("settings", {})
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown("Brooks et al., *InstructPix2Pix* (CVPR 2023): edit a picture by saying what to change "
                        "(\"make the star green\"). The model's UNet reads the input image beside the noise, and "
                        "the edit mixes three of its predictions (the paper's Eq. 3): with neither condition, with "
                        "the image only, and with image and instruction.")
            if not models:
                gr.Markdown("⚠️ No InstructPix2Pix model in the catalog fits this base model; choose one by name or "
                            "folder below.", elem_id="ip2p-none")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    examples = presets.get("examples", [])
                    first = examples[0] if examples else (None, None, "")  # the tab opens with its first example
                    self.image = ImageInput(value=first[1] and str(PRESETS / "examples" / first[1]),
                                            label="Input image", type="filepath", height=320, elem_id="ip2p-image",
                                            elem_classes="studio-image")
                    self.instruction = gr.Textbox(first[2], label="Instruction", elem_id="ip2p-instruction",
                                                  placeholder=settings.get("placeholder", ""))
                    self.model = gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                                             label="InstructPix2Pix model", elem_id="ip2p-model",
                                             info="Its VAE and text encoder are this studio's base model's.")
                    with gr.Row():
                        self.text_guidance = slider(IP2PParams, "text_guidance", "Text guidance s_T",
                                                    value=settings.get("text_guidance"))
                        self.image_guidance = slider(IP2PParams, "image_guidance", "Image guidance s_I",
                                                     value=settings.get("image_guidance"))
                    gr.Markdown(HINT)
                    with gr.Accordion("More settings", open=False):
                        self.steps = slider(IP2PParams, "steps", "Steps", value=settings.get("steps"))
                        self.resolution = slider(IP2PParams, "resolution", "Output size (longer side)",
                                                 value=ctx.size)
                        self.scheduler = choices(IP2PParams, "scheduler", "Sampler",
                                                 value=settings.get("scheduler"))
                        self.seed = seed_box(IP2PParams, value=settings.get("seed"))
                    with gr.Row():
                        self.run = gr.Button("Edit", variant="primary", elem_id="ip2p-run")
                        self.grid_button = gr.Button("Guidance grid", elem_id="ip2p-grid-run")
                        self.stop = gr.Button("Cancel", variant="stop")
                    if examples:
                        gr.Examples([[str(PRESETS / "examples" / image), text] for _, image, text in examples],
                                    [self.image, self.instruction], example_labels=[row[0] for row in examples],
                                    label="Examples (click one, then Edit)")
                with gr.Column(scale=1):
                    self.result = gr.ImageSlider(label="Before / after (drag the handle)", type="filepath",
                                                 format="png", height=320, elem_id="ip2p-result",
                                                 elem_classes="studio-image")
                    self.info = gr.Markdown(elem_id="ip2p-info")
                    ctx.send_sources.append(SendSource(self.result, send_buttons(ctx, self.TAB_ID),
                                                       pick=lambda pair: pair and pair[1]))
                    # A heading, not the gallery's label: Gradio lays that over the first row's pictures.
                    gr.Markdown(f"**Guidance grid**: image guidance s_I down the rows ({GRID_IMAGE[0]:g} → "
                                f"{GRID_IMAGE[-1]:g}), text guidance s_T across ({GRID_TEXT[0]:g} → {GRID_TEXT[-1]:g})")
                    self.grid = gr.Gallery(label="Guidance grid", show_label=False,
                                           columns=len(GRID_TEXT), height="auto", format="png", object_fit="contain",
                                           elem_id="ip2p-grid", elem_classes="studio-whole-gallery")
        ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, self.image, seed=self.seed))
        self._wire()

    def _wire(self) -> None:
        # The API's argument order of `ip2p` and `ip2p_grid`.
        self.form = Form(image=self.image, instruction=self.instruction, model=self.model,
                         text_guidance=self.text_guidance, image_guidance=self.image_guidance, steps=self.steps,
                         resolution=self.resolution, scheduler=self.scheduler, seed=self.seed)
        self.ctx.restorable[self.TAB_ID] = self.form
        gpu = self.ctx.gpu
        event = self.run.click(self.form.task(gpu, self.edit, self.cost), self.form.components,
                               [self.result, self.info], api_name="ip2p", concurrency_id=GPU)
        gridding = self.grid_button.click(
            self.form.task(gpu, self.grid_run, lambda v: self.cost(v) * len(GRID_TEXT) * len(GRID_IMAGE)),
            self.form.components, [self.grid, self.info], api_name="ip2p_grid", concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event, gridding], api_name="cancel_ip2p",
                        queue=False)

    @staticmethod
    def cost(values: dict) -> float:
        """GPU seconds of one edit: three UNet passes a step at the output size."""
        side = values["resolution"] or 512
        return denoising(3 * (values["steps"] or 20), 1, side, side)

    def _inputs(self, values: dict) -> tuple:
        image = self.ctx.image(values["image"], "The input image")
        if image is None:
            raise ValueError("Upload an image to edit (or send one here from another tab).")
        if not values["model"]:
            raise ValueError("Choose an InstructPix2Pix model.")
        lend = {"cls": StableDiffusionInstructPix2PixPipeline, "unet": self.ctx.manager.instruct_unet(values["model"])}
        return image, self.ctx.params(IP2PParams, values), lend

    @user_errors
    def edit(self, values: dict, request: gr.Request, progress: gr.Progress):
        image, params, lend = self._inputs(values)
        for previews, result in self.ctx.stream(request, progress, lambda job: job.run(run_ip2p, image, params),
                                                lend=lend):
            if previews:
                yield (image, previews[0]), "Editing…"
        info = (f"“{params.instruction}” · s_T {params.text_guidance:g} · s_I {params.image_guidance:g} · "
                f"seed {result.seed} · {result.seconds:.2f} s")
        recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values, seed=result.seed)
        yield (self.ctx.keep(request, recipe, result.input, result.seed),
               self.ctx.keep(request, recipe, result.image, result.seed)), info

    @user_errors
    def grid_run(self, values: dict, request: gr.Request, progress: gr.Progress):
        image, params, lend = self._inputs(values)
        with self.ctx.job(request, progress, lend=lend) as job:
            grid = guidance_grid(job.pipe, image, params, GRID_TEXT, GRID_IMAGE, should_stop=job.should_stop,
                                 on_step=job.on_step("Guidance grid", "edits"))
            job.warnings += grid.warnings
        cells = [(picture, f"s_T {s_text:g} · s_I {s_image:g}") for s_image, row in zip(grid.image_scales, grid.images)
                 for s_text, picture in zip(grid.text_scales, row)]
        return cells, (f"“{params.instruction}”, seed {grid.seed} in every cell: down the rows image guidance "
                       "rises (more of the input kept), across the columns text guidance rises (a stronger edit).")
