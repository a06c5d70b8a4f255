"""Train tab: customise the model in the background (DreamBooth with LoRA, Custom Diffusion with one or two concepts,
Textual Inversion, erasing a concept with ESD), then try the result and download it; the memorization probe below."""

import json
from dataclasses import asdict, fields
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.generate import GenerateParams, run_generate
from studio.custom_diffusion import WEIGHTS as CUSTOM_DIFFUSION_WEIGHTS
from studio.lora import METADATA, WEIGHTS, LoraUse, check_name
from studio.shapes.concepts import CONCEPTS, concept_images
from studio.train_data import (check_concepts, check_new_job, check_resumable, class_folder, class_images, load_job,
                               raise_steps, save_job)
from studio.textual_inversion import DIFFUSERS_FILE
from studio.trainer import (COMMON_SETTINGS, METHOD_SETTINGS, TWO_CONCEPTS, VALIDATION_SEEDS,
                            VALIDATION_STEPS, TrainJob, TrainParams, TrainState, identifier_report, presets, read_state,
                            train_until, trained)
from tabs import GPU, Form, StudioContext, checkbox, choices, session, slider, user_errors
from tabs.gpu import SECONDS_PER_TRAIN_STEP, denoising
from tabs.memorization import MemorizationSection
from tabs.sweep import SweepSection

EXPLAIN = {
    "dreambooth": "Ruiz et al., *DreamBooth* (2023) with Hu et al.'s *LoRA* (2022): a rare identifier (**sks**) in the "
                  "instance prompt is bound to your subject from 3–20 images, by training small low-rank updates of "
                  "the attention layers while the model stays frozen. *Prior preservation* also trains on images the "
                  "base model draws for the class prompt, so the class keeps its meaning.",
    "custom-diffusion": "Kumari et al., *Custom Diffusion* (CVPR 2023): only the cross-attention K and V weights, the "
                        "ones that read the text, are fine-tuned (in full), with a new modifier token per concept "
                        "(**v1-cross**). Two concepts train jointly, each with its own class images, and one prompt "
                        "can then compose them: *a v1-cross star on the left and a v2-moon circle on the right*.",
    "textual-inversion": "Gal et al., *An Image is Worth One Word* (ICLR 2023): a new token (**ti-cross**) is added "
                         "and only its embedding is learned, from an initializer word; the model is untouched. It "
                         "finds the word for the concept among what the frozen model can already draw, so it is much "
                         "weaker than DreamBooth for a shape the model has never seen: compare the two on the cross.",
    "erase": "Gandikota et al., *Erasing Concepts from Diffusion Models* (ICCV 2023), ESD-x: a LoRA on "
             "cross-attention learns to answer the erase prompt with what the frozen model predicts when guided "
             "*away* from it (Eq. 6, negative guidance η). Switch it on in any tab: the concept is gone, other "
             "prompts draw as before. It needs no images: the model's own pictures of the concept are the data.",
}
ALWAYS = "Training runs in the background; the other tabs keep working."
# The settings the UI shows, in this order (the prompts have their own boxes); each method shows those it reads.
SETTINGS = ["rank", "alpha", "lr", "lr_schedule", "steps", "batch", "resolution", "crop", "flip", "seed", "target",
            "train_text_encoder", "min_snr_gamma", "ema_decay", "prior_preservation", "num_class_images",
            "prior_loss_weight", "validate_every", "checkpoint_every", "initializer", "negative_guidance"]
LABELS = {"lr": "Learning rate", "ema_decay": "EMA decay (saves the weights' moving average)"}
# What the identifier box and the before/after gallery mean for each method.
IDENTIFIER = {"dreambooth": "Identifier", "custom-diffusion": "Modifier token (new)",
              "textual-inversion": "New token", "erase": "Identifier"}
COMPARED = {"dreambooth": "Class prompt before → after training (language drift)",
            "custom-diffusion": "Class prompt before → after training (language drift)",
            "textual-inversion": "The token at its initializer word → as learned",
            "erase": "The erased prompt before → after"}


KINDS = {"dreambooth": "DreamBooth LoRA", "custom-diffusion": "Custom Diffusion", "textual-inversion": "embedding",
         "erase": "ESD eraser"}


def shows(method: str, setting: str) -> bool:
    return setting in COMMON_SETTINGS + METHOD_SETTINGS[method]


class TrainTab:
    TAB_ID, LABEL = "train", "Train a LoRA"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        # By (owner, LoRA name): a job is seen, cancelled and resumed only by whoever started it (and a teacher).
        self.jobs: dict[tuple[str, str], TrainJob] = ctx.training
        self.presets = presets()
        defaults = TrainParams(resolution=ctx.size, **self.presets["quick"])
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            self.method = choices(TrainParams, "method", "Method", radio=True, value=defaults.method,
                                  elem_id="train-method")
            self.explain = gr.Markdown(f"{EXPLAIN[defaults.method]} {ALWAYS}")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.name = gr.Textbox("sks-concept", label="Job name (the LoRA's, or the embedding's job)",
                                           elem_id="train-name")
                    with gr.Row() as self.concept_row:
                        self.concept = gr.Dropdown(list(CONCEPTS), value=next(iter(CONCEPTS)), scale=2,
                                                   label="Shapes preset concept (cross, moon: shapes the model has "
                                                         "never seen; heart, triangle: looks it can draw)")
                        self.use_concept = gr.Button("Use 5 renders", scale=1)
                    with gr.Group() as self.first:
                        self.files = gr.File(label="Subject images (3–20)", file_count="multiple",
                                             file_types=["image"], elem_id="train-files")
                        with gr.Row():
                            self.instance_prompt = gr.Textbox(defaults.instance_prompt, label="Instance prompt",
                                                              scale=3)
                            self.identifier = gr.Textbox(defaults.identifier, label="Identifier", scale=1)
                        self.tokens = gr.Markdown(self.describe_identifier(defaults.identifier))
                        self.class_prompt = gr.Textbox(defaults.class_prompt,
                                                       label="Class prompt (prior preservation)")
                    with gr.Group(visible=defaults.method in TWO_CONCEPTS) as self.second:
                        self.files_2 = gr.File(label="Second concept's images (3–20; empty: one concept)",
                                               file_count="multiple", file_types=["image"], elem_id="train-files-2")
                        with gr.Row():
                            self.instance_prompt_2 = gr.Textbox(label="Second instance prompt", scale=3,
                                                                placeholder="a v2-moon circle")
                            self.identifier_2 = gr.Textbox(label="Second identifier", scale=1,
                                                           placeholder="v2-moon")
                        self.class_prompt_2 = gr.Textbox(label="Second class prompt", placeholder="a circle")
                    self.erase_prompt = gr.Textbox(label="Concept to erase", placeholder="a star", visible=False,
                                                   elem_id="train-erase")
                    self.preset = gr.Dropdown(list(self.presets), value="quick", label="Preset")
                    with gr.Accordion("Settings", open=False, elem_id="train-settings"):
                        self.settings = [self._control(name, getattr(defaults, name), defaults.method)
                                         for name in SETTINGS]
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
                    self.drift = gr.Gallery(label=COMPARED[defaults.method], columns=4, height=140, format="png",
                                            object_fit="contain")
                    with gr.Accordion("Try it", open=True):
                        self.lora = gr.Dropdown([], label="From your library (LoRAs and trained embeddings)",
                                                allow_custom_value=True)
                        self.try_prompt = gr.Textbox(label="Prompt", placeholder="a sks dog on the beach")
                        self.scale = slider(LoraUse, "scale", "LoRA scale")
                        self.generate = gr.Button("Generate with the LoRA", variant="primary")
                        self.samples = gr.Gallery(label="With the LoRA (seeds 0–3)", columns=4, height=180,
                                                  format="png", object_fit="contain")
                        self.downloads = gr.File(label="Download (diffusers and kohya/A1111 formats)",
                                                 file_count="multiple", interactive=False)
            self.sweep = SweepSection(ctx, self, dict(zip(SETTINGS, self.settings)))
            self.memorization = MemorizationSection(ctx)
            self.timer = gr.Timer(1.0, active=False)
        # On ZeroGPU each share of a job is one GPU call, asking for the share's own estimate.
        self.draw_prior = ctx.gpu.task(self._draw_prior, self._prior_seconds)
        self.train_share = ctx.gpu.task(self._train_share, self._share_seconds)
        self._wire()

    @staticmethod
    def _control(name: str, value, method: str):
        label, shown = LABELS.get(name, name.replace("_", " ").capitalize()), shows(method, name)
        if "choices" in TrainParams.meta(name):
            return choices(TrainParams, name, label, radio=True, value=value, visible=shown)
        if isinstance(value, bool):
            return checkbox(TrainParams, name, label, value=value, visible=shown)
        if isinstance(value, str):
            return gr.Textbox(value, label=label, info=TrainParams.meta(name)["help"], visible=shown)
        if name == "lr":
            return gr.Number(value, label=label, info=TrainParams.meta(name)["help"], visible=shown)
        return slider(TrainParams, name, label, value=value, visible=shown)

    def _wire(self) -> None:
        outputs = [self.status, self.loss, self.validation, self.drift, self.downloads, self.lora, self.timer]
        self.use_concept.click(self.shapes_concept, [self.concept, self.method],
                               [self.files, self.instance_prompt, self.identifier, self.class_prompt, self.name,
                                self.preset, self.files_2, self.instance_prompt_2, self.identifier_2,
                                self.class_prompt_2], api_name="train_concept")
        self.identifier.change(self.describe_identifier, self.identifier, self.tokens, api_name=False, queue=False)
        self.method.change(self.show_method, self.method,
                           [self.explain, self.first, self.second, self.erase_prompt, self.concept_row, self.identifier,
                            self.drift, *self.settings], api_name=False, queue=False)
        self.preset.change(self.use_preset, self.preset, [*self.settings, self.method], api_name=False, queue=False)
        # The API's argument order of `train_start`: files, name, the prompts, SETTINGS in order, then the method and
        # what only some methods read (appended, so that older callers' DreamBooth calls still work).
        start = Form(files=self.files, name=self.name, instance_prompt=self.instance_prompt,
                     identifier=self.identifier, class_prompt=self.class_prompt,
                     validation_prompts=self.validation_prompts, **dict(zip(SETTINGS, self.settings)),
                     method=self.method, files_2=self.files_2, instance_prompt_2=self.instance_prompt_2,
                     identifier_2=self.identifier_2, class_prompt_2=self.class_prompt_2,
                     erase_prompt=self.erase_prompt)
        self.ctx.restorable[self.TAB_ID] = start  # a validation image's PNG holds the job's settings
        resume = Form(name=self.name, steps=self.settings[SETTINGS.index("steps")])
        if self.ctx.gpu.zero:
            # ZeroGPU has no background threads: the job runs from this event as a series of GPU calls, each
            # resuming from the checkpoint the previous one saved; this session's Cancel stops the running call.
            self.start.click(start.bind(self.start_shares), start.components, outputs, api_name="train_start",
                             concurrency_id="train")
            self.resume.click(resume.bind(self.resume_shares), resume.components, outputs, api_name="train_resume",
                              concurrency_id="train")
            self.stop.click(self.ctx.stop_job, None, None, api_name="train_cancel", queue=False)
        else:
            # Training runs in its own thread, between other jobs' turns: these return at once and the timer polls
            # the job named in the name box.
            self.start.click(start.bind(self.start_job), start.components, [self.status, self.timer],
                             api_name="train_start")
            self.resume.click(resume.bind(self.resume_job), resume.components, [self.status, self.timer],
                              api_name="train_resume")
            self.stop.click(self.cancel, self.name, None, api_name="train_cancel", queue=False)
            self.timer.tick(self.poll, self.name, outputs, api_name="train_status", queue=False)
        trying = Form(lora=self.lora, prompt=self.try_prompt, scale=self.scale)
        self.generate.click(trying.task(self.ctx.gpu, self.try_it, lambda v: denoising(25, 4, self.ctx.size,
                                                                                        self.ctx.size)),
                            trying.components, self.samples, api_name="train_try", concurrency_id=GPU)

    def describe_identifier(self, identifier: str) -> str:
        if not identifier.strip():
            return "⚠️ Choose an identifier, e.g. sks."
        pieces, warnings = identifier_report(self.ctx.manager.tokenizer(self.ctx.model), identifier.strip())
        return f"Tokenizer: **{' · '.join(pieces)}**" + "".join(f"\n\n⚠️ {w}" for w in warnings)

    def use_preset(self, name: str):
        values = {**{f.name: f.default for f in fields(TrainParams) if f.name in SETTINGS}, **self.presets[name]}
        method = gr.update(value=values["method"]) if "method" in values else gr.update()
        return [*(gr.update(value=values[s]) if s != "resolution" else gr.update() for s in SETTINGS), method]

    def show_method(self, method: str):
        """The boxes and settings the method reads, its paper's summary, what its identifier and gallery mean."""
        concepts = method != "erase"
        return (f"{EXPLAIN[method]} {ALWAYS}", gr.update(visible=concepts),
                gr.update(visible=method in TWO_CONCEPTS), gr.update(visible=not concepts),
                gr.update(visible=concepts), gr.update(label=IDENTIFIER[method]), gr.update(label=COMPARED[method]),
                *(gr.update(visible=shows(method, s)) for s in SETTINGS))

    @user_errors
    def shapes_concept(self, name: str, method: str, request: gr.Request):
        """The five renders of a Shapes concept and the prompts, tokens and preset of `method` for it; Custom
        Diffusion gets the next concept as its second."""
        def renders(concept: str) -> list[str]:
            folder = self.ctx.lora_root(request) / ".concepts" / concept.replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(concept_images(concept, side=self.ctx.size)):
                image.save(folder / f"{i}.png")
            return [str(folder / f"{i}.png") for i in range(5)]

        shape, _, noun = CONCEPTS[name]
        empty = (None, "", "", "")
        if method == "textual-inversion":
            return (renders(name), f"a ti-{shape}", f"ti-{shape}", f"a {noun}", f"ti-{shape}",
                    "shapes-textual-inversion", *empty)
        if method == "custom-diffusion":
            other = [c for c in CONCEPTS if c != name][0]
            shape_2, _, noun_2 = CONCEPTS[other]
            return (renders(name), f"a v1-{shape} {noun}", f"v1-{shape}", f"a {noun}", f"cd-{shape}-{shape_2}",
                    "shapes-custom-diffusion", renders(other), f"a v2-{shape_2} {noun_2}", f"v2-{shape_2}",
                    f"a {noun_2}")
        return (renders(name), f"a sks {noun}", "sks", f"a {noun}", f"sks-{name.replace(' ', '-')}", "shapes-concept",
                *empty)

    def _free_slot(self, owner: str, name: str) -> None:
        """Refuse a second run of one job, and more jobs at once than this studio allows a user."""
        if (owner, name) in self.jobs and self.jobs[owner, name].running:
            raise ValueError(f"{name!r} is training already.")
        allowed = self.ctx.limits.training_jobs_per_user
        running = sum(job.running for (who, _), job in self.jobs.items() if who == owner)
        if allowed is not None and running >= allowed:
            raise ValueError(f"You have {running} training job{'s' * (running != 1)} running; this studio allows "
                             f"{allowed} at a time. Wait for it, or Cancel it.")

    def _new_job(self, values: dict, request: gr.Request) -> tuple[str, TrainParams, list, list | None]:
        """The name, settings and images of a new job, checked here so the message comes at once."""
        name = check_name(values["name"] or "")
        self._free_slot(self.ctx.owner(request), name)
        params, images, second = self.recipe(values)
        check_new_job(self.ctx.lora_root(request) / name)
        return name, params, images, second

    def recipe(self, values: dict) -> tuple[TrainParams, list, list | None]:
        """The form's settings and each concept's images, checked (also by the Sweep, which trains a DreamBooth
        recipe over a grid and has no method box)."""
        params = self.ctx.params(TrainParams, values, identifier=(values["identifier"] or "").strip(),
                                 identifier_2=(values.get("identifier_2") or "").strip(),
                                 validation_prompts=[p for p in (values["validation_prompts"] or "").splitlines()
                                                     if p.strip()])
        concepts = check_concepts([[f if isinstance(f, str) else f.name for f in values.get(key) or []]
                                   for key in ("files", "files_2")[: len(params.concepts())]],
                                  max_pixels=self.ctx.limits.max_pixels)
        return params, *(concepts + [None, None])[:2]

    @user_errors
    def start_job(self, values: dict, request: gr.Request, progress: gr.Progress):
        name, params, images, second = self._new_job(values, request)
        self.jobs[self.ctx.owner(request), name] = TrainJob(self.ctx.manager, self.ctx.model,
                                                            self.ctx.lora_root(request) / name, params, images,
                                                            second=second).start()
        return f"**{name}** · starting", gr.Timer(active=True)

    @user_errors
    def resume_job(self, values: dict, request: gr.Request, progress: gr.Progress):
        name, owner = check_name(values["name"] or ""), self.ctx.owner(request)
        self._free_slot(owner, name)
        folder = self.ctx.lora_root(request) / name
        check_resumable(folder)
        self.ctx.limits.check_value("steps", values["steps"], "max_train_steps")
        self.jobs[owner, name] = TrainJob(self.ctx.manager, self.ctx.model, folder, TrainParams(steps=values["steps"]),
                                          resume=True).start()
        return f"**{name}** · resuming", gr.Timer(active=True)

    def cancel(self, name: str, request: gr.Request):
        job = self.jobs.get((self.ctx.owner(request), (name or "").strip()))
        if job:
            job.cancel()

    def poll(self, name: str, request: gr.Request):
        name = (name or "").strip()
        job = self.jobs.get((self.ctx.owner(request), name))
        if job is None:
            return "", None, [], [], None, gr.update(choices=self.library(request)), gr.Timer(active=False)
        return self._show(name, job.state, request, job.error, job.running)

    def _show(self, name: str, state: TrainState, request: gr.Request, error: str = "",
              running: bool = False) -> tuple:
        """The status line, loss curve, validation images, drift pair, downloads and library of a job's state."""
        status = f"**{name}** · {state.phase} · step {state.step} of {state.total}"
        if state.losses:
            status += f" · loss {state.losses[-1][1]:.4f}"
        if error:
            status += f"\n\n⚠️ {error}"
        # Copies first: the training thread appends to these lists while we read them.
        losses, validation = list(state.losses), list(state.validation)
        # No empty frame: a plot's first data decide its axis types, and an empty frame's columns read as text.
        loss = pd.DataFrame(losses, columns=["step", "loss"]).astype(float) if losses else None
        served = self.ctx.served
        shown = [(served(path), caption) for _, caption, path in sorted(validation, key=lambda v: -v[0])
                 if path.exists()]  # newest first
        drift, downloads = [], None
        if not running and state.phase == "done":
            folder = self.ctx.lora_root(request) / name
            drift = [(served(path), caption) for caption, path in state.drift if path.exists()]
            downloads = [served(path) for path in self.results(folder)]
        lora = gr.update(choices=self.library(request), value=name if state.phase == "done" else None)
        return status, loss, shown, drift, downloads, lora, gr.Timer(active=running)

    @staticmethod
    def results(folder: Path) -> list[Path]:
        """A finished job's files to download: the LoRA in both formats, Custom Diffusion's own file, the tokens."""
        files = [folder / WEIGHTS, folder / f"{folder.name}_kohya.safetensors", folder / CUSTOM_DIFFUSION_WEIGHTS,
                 folder / DIFFUSERS_FILE]
        metadata = json.loads((folder / METADATA).read_text())
        tokens = [folder / f"{t}.safetensors" for t in metadata.get("trigger_words", [])] \
            if metadata.get("kind") == "custom-diffusion" else []
        return [path for path in files + tokens if path.is_file()]

    def library(self, request: gr.Request | None) -> list[tuple[str, str]]:
        """What "Try it" offers: the owner's LoRAs and trained embeddings, each with its kind, then shared LoRAs."""
        kinds = trained(self.ctx.lora_root(request))
        names = self.ctx.lora_names(request) + [n for n, kind in kinds.items() if kind == "textual-inversion"]
        return [(f"{n} · {KINDS.get(kinds.get(n, ''), 'LoRA')}", n) for n in names]

    def _embeddings(self, request: gr.Request, name: str) -> list[tuple[Path, str]]:
        """The session's embeddings and the tokens job `name` trained (a session that picked a few in the header
        has not picked a token trained since)."""
        folder, picked = self.ctx.lora_root(request) / name, self.ctx.session_embeddings(request)
        tokens = json.loads((folder / METADATA).read_text()).get("trigger_words", []) \
            if (folder / METADATA).is_file() else []
        root = self.ctx.embedding_root(request)
        return picked + [(root / f"{t}.safetensors", t) for t in tokens if t not in {tok for _, tok in picked}]

    # ZeroGPU: a job as a series of GPU calls
    @user_errors
    def start_shares(self, values: dict, request: gr.Request, progress: gr.Progress):
        name, params, images, second = self._new_job(values, request)
        save_job(self.ctx.lora_root(request) / name, self.ctx.model, asdict(params),
                 [c for c in (images, second) if c is not None])
        yield from self._shares(name, request)

    @user_errors
    def resume_shares(self, values: dict, request: gr.Request, progress: gr.Progress):
        name = check_name(values["name"] or "")
        check_resumable(self.ctx.lora_root(request) / name)
        self.ctx.limits.check_value("steps", values["steps"], "max_train_steps")
        raise_steps(self.ctx.lora_root(request) / name, values["steps"])
        yield from self._shares(name, request)

    def _shares(self, name: str, request: gr.Request):
        """Draw the prior's class images, then train, a share per GPU call; show the job after each call."""
        folder, gpu = self.ctx.lora_root(request) / name, self.ctx.gpu
        params = TrainParams(**load_job(folder)[1])
        self.ctx.cancel.arm(session(request))
        per_call = gpu.chunk_steps(denoising(25, 1, params.resolution, params.resolution))
        for prompt in params.class_prompts():
            cache = class_folder(self.ctx.manager, self.ctx.model, prompt, params.resolution,
                                 folder.parent / ".class-images")
            while (have := len(list(cache.glob("*.png")))) < params.num_class_images:
                phase = f"drawing images of '{prompt}', {have} of {params.num_class_images}"
                yield self._show(name, TrainState(phase=phase, total=params.steps), request, running=True)
                self.draw_prior(str(folder), prompt, min(have + per_call, params.num_class_images), request)
        state = read_state(folder)
        per_call = gpu.chunk_steps(*self._costs(params))
        while state.phase != "done":
            yield self._show(name, state, request, running=True)
            state = self.train_share(str(folder), min(state.step + per_call, params.steps), request)
        yield self._show(name, state, request)

    def _prior_seconds(self, folder: str, prompt: str, n: int, request: gr.Request | None = None) -> float:
        params = TrainParams(**load_job(Path(folder))[1])
        have = len(list(class_folder(self.ctx.manager, self.ctx.model, prompt, params.resolution,
                                     Path(folder).parent / ".class-images").glob("*.png")))
        return (n - have) * denoising(25, 1, params.resolution, params.resolution)

    @staticmethod
    def _costs(params: TrainParams) -> tuple[float, float]:
        """GPU seconds of one training step and of one validation, at the job's resolution."""
        area = (params.resolution / 512) ** 2
        return SECONDS_PER_TRAIN_STEP * area, denoising(VALIDATION_STEPS, VALIDATION_SEEDS * len(params.prompts()),
                                                        params.resolution, params.resolution)

    def _share_seconds(self, folder: str, until: int, request: gr.Request | None = None) -> float:
        params, state = TrainParams(**load_job(Path(folder))[1]), read_state(Path(folder))
        step, validation = self._costs(params)
        return (until - state.step) * step + validation

    @user_errors
    def _draw_prior(self, folder: str, prompt: str, n: int, request: gr.Request) -> None:
        params = TrainParams(**load_job(Path(folder))[1])
        class_images(self.ctx.manager, self.ctx.model, prompt, n, params.resolution,
                     Path(folder).parent / ".class-images", self.ctx.cancel.flag(session(request)).is_set)

    @user_errors
    def _train_share(self, folder: str, until: int, request: gr.Request) -> TrainState:
        return train_until(self.ctx.manager, Path(folder), until,
                           should_stop=self.ctx.cancel.flag(session(request)).is_set)

    @user_errors
    def try_it(self, values: dict, request: gr.Request, progress: gr.Progress):
        name, scale = values["lora"], values["scale"]
        if not name or name not in [n for _, n in self.library(request)]:
            raise ValueError("Pick a finished LoRA or embedding from the library (or train one).")
        params = GenerateParams(values["prompt"] or "", seed=0, width=self.ctx.size, height=self.ctx.size, n_images=4)
        # A trained embedding is no LoRA: its token, loaded with the session's others, is the whole of it.
        embedding = trained(self.ctx.lora_root(request)).get(name) == "textual-inversion"
        loras = [] if embedding else [(self.ctx.lora_path(request, name), float(scale))]
        with self.ctx.job(request, progress, loras=loras, embeddings=self._embeddings(request, name)) as job:
            result = job.run(run_generate, params)
        # Each a Generate recipe with the LoRA: dropped on Restore, Generate draws it again with the LoRA picked.
        return [(self.ctx.keep(request, self.ctx.recipe(request, "generate", None, asdict(params), loras=loras,
                                                        seed=meta["image_seed"], n_images=1), image, i),
                 f"seed {i} · scale {scale:g}") for i, (image, meta) in enumerate(zip(result.images, result.metadata))]
