"""Train tab: DreamBooth with LoRA in the background (Ruiz et al. 2023; Hu et al. 2022), then try it and download."""

from dataclasses import fields

import gradio as gr
import pandas as pd

from studio.generate import GenerateParams, run_generate
from studio.lora import WEIGHTS, LoraUse, check_name, library
from studio.shapes.concepts import CONCEPTS, concept_images
from studio.train_data import check_images, check_new_job, check_resumable
from studio.trainer import TrainJob, TrainParams, identifier_report, presets
from tabs import GPU, Form, StudioContext, build, checkbox, choices, slider, user_errors

EXPLAIN = ("Ruiz et al., *DreamBooth* (2023) with Hu et al.'s *LoRA* (2022): a rare identifier (**sks**) in the "
           "instance prompt is bound to your subject from 3–20 images, by training small low-rank updates of the "
           "attention layers while the model stays frozen. *Prior preservation* also trains on images the base "
           "model draws for the class prompt, so the class keeps its meaning. Training runs in the background; the "
           "other tabs keep working.")
# The settings the UI shows, in this order (the prompts have their own boxes).
SETTINGS = ["rank", "alpha", "lr", "lr_schedule", "steps", "batch", "resolution", "crop", "flip", "seed", "target",
            "train_text_encoder", "min_snr_gamma", "prior_preservation", "num_class_images", "prior_loss_weight",
            "validate_every", "checkpoint_every"]


class TrainTab:
    TAB_ID, LABEL = "train", "Train a LoRA"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.root = ctx.lora_root
        self.jobs: dict[str, TrainJob] = {}  # by LoRA name; per app, shared by the sessions that watch them
        self.presets = presets()
        defaults = TrainParams(resolution=ctx.size, **self.presets["quick"])
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown(EXPLAIN)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.files = gr.File(label="Subject images (3–20)", file_count="multiple", file_types=["image"],
                                         elem_id="train-files")
                    with gr.Row():
                        self.concept = gr.Dropdown(list(CONCEPTS), value=next(iter(CONCEPTS)), scale=2,
                                                   label="Shapes preset concept (unseen by the Shapes model)")
                        self.use_concept = gr.Button("Use 5 renders", scale=1)
                    self.name = gr.Textbox("sks-concept", label="LoRA name", elem_id="train-name")
                    with gr.Row():
                        self.instance_prompt = gr.Textbox(defaults.instance_prompt, label="Instance prompt", scale=3)
                        self.identifier = gr.Textbox(defaults.identifier, label="Identifier", scale=1)
                    self.tokens = gr.Markdown(self.describe_identifier(defaults.identifier))
                    self.class_prompt = gr.Textbox(defaults.class_prompt, label="Class prompt (prior preservation)")
                    self.preset = gr.Dropdown(list(self.presets), value="quick", label="Preset")
                    with gr.Accordion("Settings", open=False, elem_id="train-settings"):
                        self.settings = [self._control(name, getattr(defaults, name)) for name in SETTINGS]
                        self.validation_prompts = gr.Textbox(label="Validation prompts (one per line; empty: the "
                                                             "instance and class prompts)", lines=2)
                    with gr.Row():
                        self.start = gr.Button("Start", variant="primary", elem_id="train-start")
                        self.stop = gr.Button("Cancel", variant="stop")
                        self.resume = gr.Button("Resume")
                with gr.Column(scale=1):
                    self.status = gr.Markdown(elem_id="train-status")
                    self.loss = gr.LinePlot(x="step", y="loss", height=220, title="Loss per step")
                    self.validation = gr.Gallery(label="Validation images (fixed seeds), newest step first", columns=4,
                                                 height=260, format="png", object_fit="contain")
                    self.drift = gr.Gallery(label="Class prompt before → after training (language drift)",
                                            columns=4, height=140, format="png", object_fit="contain")
                    with gr.Accordion("Try it", open=True):
                        self.lora = gr.Dropdown(library(self.root), label="LoRA from the library",
                                                allow_custom_value=True)
                        self.try_prompt = gr.Textbox(label="Prompt", placeholder="a sks dog on the beach")
                        self.scale = slider(LoraUse, "scale", "LoRA scale")
                        self.generate = gr.Button("Generate with the LoRA", variant="primary")
                        self.samples = gr.Gallery(label="With the LoRA (seeds 0–3)", columns=4, height=180,
                                                  format="png", object_fit="contain")
                        self.downloads = gr.File(label="Download (diffusers and kohya/A1111 formats)",
                                                 file_count="multiple", interactive=False)
            self.timer = gr.Timer(1.0, active=False)
        self._wire()

    @staticmethod
    def _control(name: str, value):
        label = name.replace("_", " ").capitalize()
        if "choices" in TrainParams.meta(name):
            return choices(TrainParams, name, label, radio=True, value=value)
        if isinstance(value, bool):
            return checkbox(TrainParams, name, label, value=value)
        if name == "lr":
            return gr.Number(value, label="Learning rate", info=TrainParams.meta(name)["help"])
        return slider(TrainParams, name, label, value=value)

    def _wire(self) -> None:
        prompts = [self.instance_prompt, self.identifier, self.class_prompt, self.validation_prompts]
        outputs = [self.status, self.loss, self.validation, self.drift, self.downloads, self.lora, self.timer]
        self.use_concept.click(self.shapes_concept, self.concept,
                               [self.files, self.instance_prompt, self.identifier, self.class_prompt, self.name,
                                self.preset], api_name="train_concept")
        self.identifier.change(self.describe_identifier, self.identifier, self.tokens, api_name=False, queue=False)
        self.preset.change(self.use_preset, self.preset, self.settings, api_name=False, queue=False)
        # Training runs in its own thread, outside the GPU queue: these return at once and the timer polls the job
        # named in the name box.
        # The API's argument order of `train_start`: files, name, the prompts, then SETTINGS in order.
        start = Form(files=self.files, name=self.name, instance_prompt=self.instance_prompt,
                     identifier=self.identifier, class_prompt=self.class_prompt,
                     validation_prompts=self.validation_prompts, **dict(zip(SETTINGS, self.settings)))
        self.start.click(start.bind(self.start_job), start.components, [self.status, self.timer],
                         api_name="train_start")
        self.resume.click(self.resume_job, [self.name, self.settings[SETTINGS.index("steps")]],
                          [self.status, self.timer], api_name="train_resume")
        self.stop.click(self.cancel, self.name, None, api_name="train_cancel", queue=False)
        self.timer.tick(self.poll, self.name, outputs, api_name="train_status", queue=False)
        self.generate.click(self.try_it, [self.lora, self.try_prompt, self.scale], self.samples, api_name="train_try",
                            concurrency_id=GPU)

    def describe_identifier(self, identifier: str) -> str:
        if not identifier.strip():
            return "⚠️ Choose an identifier, e.g. sks."
        pieces, warnings = identifier_report(self.ctx.manager.tokenizer(self.ctx.model), identifier.strip())
        return f"Tokenizer: **{' · '.join(pieces)}**" + "".join(f"\n\n⚠️ {w}" for w in warnings)

    def use_preset(self, name: str):
        values = {**{f.name: f.default for f in fields(TrainParams) if f.name in SETTINGS}, **self.presets[name]}
        return [gr.update(value=values[s]) if s != "resolution" else gr.update() for s in SETTINGS]

    @user_errors
    def shapes_concept(self, name: str):
        _, colour, noun = CONCEPTS[name]
        folder = self.root / ".concepts" / name.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(concept_images(name, side=self.ctx.size)):
            image.save(folder / f"{i}.png")
            paths.append(str(folder / f"{i}.png"))
        return paths, f"a sks {noun}", "sks", f"a {noun}", f"sks-{name.replace(' ', '-')}", "shapes-concept"

    @user_errors
    def start_job(self, values: dict, request: gr.Request, progress: gr.Progress):
        name = check_name(values["name"] or "")
        if name in self.jobs and self.jobs[name].running:
            raise ValueError(f"{name!r} is training already.")
        params = build(TrainParams, values, identifier=(values["identifier"] or "").strip(),
                       validation_prompts=[p for p in (values["validation_prompts"] or "").splitlines() if p.strip()])
        images = check_images([f if isinstance(f, str) else f.name for f in values["files"] or []])
        check_new_job(self.root / name)  # here too, so the message comes now and not from the job's thread
        self.jobs[name] = TrainJob(self.ctx.manager, self.ctx.model, self.root / name, params, images).start()
        return f"**{name}** · starting", gr.Timer(active=True)

    @user_errors
    def resume_job(self, name, steps):
        name = check_name(name)
        if name in self.jobs and self.jobs[name].running:
            raise ValueError(f"{name!r} is training already.")
        check_resumable(self.root / name)
        self.jobs[name] = TrainJob(self.ctx.manager, self.ctx.model, self.root / name,
                                   TrainParams(steps=int(steps)), resume=True).start()
        return f"**{name}** · resuming", gr.Timer(active=True)

    def cancel(self, name: str):
        if name.strip() in self.jobs:
            self.jobs[name.strip()].cancel()

    def poll(self, name: str):
        name = name.strip()
        job = self.jobs.get(name)
        if job is None:
            return "", None, [], [], None, gr.update(choices=library(self.root)), gr.Timer(active=False)
        state = job.state
        status = f"**{name}** · {state.phase} · step {state.step} of {state.total}"
        if state.losses:
            status += f" · loss {state.losses[-1][1]:.4f}"
        if job.error:
            status += f"\n\n⚠️ {job.error}"
        # Copies first: the training thread appends to these lists while we read them.
        losses, validation = list(state.losses), list(state.validation)
        # No empty frame: a plot's first data decide its axis types, and an empty frame's columns read as text.
        loss = pd.DataFrame(losses, columns=["step", "loss"]).astype(float) if losses else None
        shown = [(str(path), caption) for _, caption, path in sorted(validation, key=lambda v: -v[0])]  # newest first
        done = not job.running
        drift, downloads = [], None
        if done and state.phase == "done":
            drift = [(str(path), caption) for caption, path in state.drift if path.exists()]
            downloads = [str(job.folder / WEIGHTS), str(job.folder / f"{name}_kohya.safetensors")]
        lora = gr.update(choices=library(self.root), value=name if state.phase == "done" else None)
        return status, loss, shown, drift, downloads, lora, gr.Timer(active=not done)

    @user_errors
    def try_it(self, name, prompt, scale, request: gr.Request, progress=gr.Progress()):
        if not name or name not in library(self.root):
            raise ValueError("Pick a finished LoRA from the library (or train one).")
        result = self.ctx.run_job(request, progress, run_generate,
                                  GenerateParams(prompt or "", seed=0, width=self.ctx.size, height=self.ctx.size,
                                                 n_images=4),
                                  loras=[(self.root / name, float(scale))])
        return [(image, f"seed {i} · scale {scale:g}") for i, image in enumerate(result.images)]
