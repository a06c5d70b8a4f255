"""Edit a real image tab: one picture and its caption through DDIM inversion, DDIB, DiffEdit and Imagic, one method
at a time or all side by side, on one shared inversion (Prompt-to-Prompt's real-image path uses it too)."""

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.ddib import DDIBParams, run_ddib
from studio.diffedit import DiffEditParams, DiffEditResult, estimate_mask, run_diffedit
from studio.imagic import ImagicParams, imagic_generate, run_imagic
from studio.inversion import DDIMInversion, image_digest, prepare_image
from studio.p2p import P2PParams, run_p2p
from studio.prompts import SYNTAX
from tabs import (GPU, PRESETS, Form, Job, SendSource, SendTarget, StudioContext, checkbox, model_examples, seed_box,
                  send_buttons, slider, user_errors)
from tabs.gpu import SECONDS_PER_TRAIN_STEP, denoising
from tabs.inputs import EditorInput, ImageInput

INVERSION, DDIB, DIFFEDIT, IMAGIC = "DDIM inversion", "DDIB", "DiffEdit", "Imagic"
METHODS = {INVERSION: "DDIM inversion: redraw the image from its own x_T (how exact is the inversion?)",
           DDIB: "DDIB (Su et al. 2023): invert under the caption, regenerate from x_T under the target",
           DIFFEDIT: "DiffEdit (Couairon et al. 2023): a mask from where the prompts disagree, an edit inside it",
           IMAGIC: "Imagic (Kawar et al. 2023): tune an embedding and a LoRA on the image, interpolate to the target"}
SAME = "this model"
LORA = "LoRA: "
MASK_RGBA = (255, 0, 200, 150)  # how the mask is painted on its layer (translucent magenta)
EXPLAIN = ("Edit **your own picture** by text: upload it (or send one from Generate), describe it in the caption, "
           "write the target prompt, pick a method. **DDIM inversion** finds the noise x_T that the model turns back "
           "into the image; the other methods start from it or from the image itself. It is computed once per "
           "image, caption and steps and shared by every method here and by Prompt-to-Prompt. **Compare all "
           "methods** runs each one (and Prompt-to-Prompt with null-text inversion) on the same image and target, "
           "in one row with their times.")


@dataclass
class Outcome:
    """One method's run, for the outputs."""

    before: Image.Image  # the input as the model saw it
    after: Image.Image
    text: str
    inversion: DDIMInversion | None = None
    diffedit: DiffEditResult | None = None
    tuned: dict | None = None  # Imagic's stages A and B: {"key": ..., "tuned": ImagicTuned}
    cached: bool = False  # the inversion was in the cache
    seed: int | None = None  # the seed a method drew, where it draws noise (DiffEdit's mask, Imagic)


def example_image(name: str) -> str:
    return str(PRESETS / "examples" / name)


def learning_rate(params_cls: Any, name: str, label: str, value: float | None) -> gr.Number:
    """A learning rate spans decades: a number box, with the range and help of the params dataclass."""
    meta = params_cls.meta(name)
    return gr.Number(params_cls.default(name) if value is None else value, label=label, minimum=meta["min"],
                     maximum=meta["max"], info=meta["help"])


def mask_layer(mask: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A latent-resolution mask as the editor's translucent layer at the image's size."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = MASK_RGBA
    return Image.fromarray(layer, "RGBA").resize(size, Image.NEAREST)


def painted(layer: Image.Image | None) -> np.ndarray | None:
    """The mask painted on the editor's layer (anything with some opacity), or None if it is empty."""
    if layer is None:
        return None
    alpha = np.asarray(layer.convert("RGBA"))[..., 3]
    return np.where(alpha > 0, 255, 0).astype(np.uint8) if alpha.any() else None


class EditTab:
    TAB_ID, LABEL = "edit", "Edit a real image"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        presets = model_examples("edit", ctx.family)
        settings, examples = presets["settings"], presets["examples"]
        first = examples[0]
        ddib, diffedit, imagic = (settings.get(method, {}) for method in (DDIB, DIFFEDIT, IMAGIC))
        with gr.Tab(self.LABEL, id=self.TAB_ID) as tab:
            gr.Markdown(EXPLAIN)
            self.tuned = gr.State(None)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.image = ImageInput(example_image(first[1]), label="Image", type="filepath", height=240,
                                            elem_id="edit-image", elem_classes="studio-image")
                    self.caption = gr.Textbox(first[2], label="Caption (what the image shows)", elem_id="edit-caption",
                                              info="The source prompt: the image is inverted under it.")
                    self.target = gr.Textbox(first[3], label="Target prompt", elem_id="edit-target",
                                             info=f"The caption with your edit. {SYNTAX}")
                    self.method = gr.Radio([(label, name) for name, label in METHODS.items()], value=first[4],
                                           label="Method", elem_id="edit-method")
                    with gr.Row():
                        self.steps = slider(DDIBParams, "steps", "Steps", value=settings.get("steps"))
                        self.seed = seed_box(DiffEditParams, value=settings.get("seed"))
                    with gr.Group(visible=first[4] == DDIB) as self.ddib_group:
                        self.ddib_cfg = slider(DDIBParams, "cfg", "Guidance (target ODE)", value=ddib.get("cfg"))
                        self.round_trip = checkbox(DDIBParams, "round_trip", "Round trip (target → source)")
                        with gr.Row():
                            self.domain = gr.Dropdown(self.domains(None), value=SAME, allow_custom_value=True,
                                                      label="Target domain", info="This model with the target "
                                                      "prompt, a LoRA of the library, or another model of the same "
                                                      "family (catalog name or folder): the paper's two models.")
                            self.lora_scale = slider(DDIBParams, "target_lora_scale", "LoRA scale")
                    with gr.Group(visible=first[4] == DIFFEDIT) as self.diffedit_group:
                        with gr.Row():
                            self.strength = slider(DiffEditParams, "strength", "Encoding ratio r",
                                                   value=diffedit.get("strength"))
                            self.diffedit_cfg = slider(DiffEditParams, "cfg", "Guidance", value=diffedit.get("cfg"))
                        with gr.Accordion("Mask estimation", open=False):
                            with gr.Row():
                                self.n_noise = slider(DiffEditParams, "n_noise", "Noise samples n")
                                self.mask_strength = slider(DiffEditParams, "mask_strength", "Mask noise strength")
                            with gr.Row():
                                self.clamp_ratio = slider(DiffEditParams, "clamp_ratio", "Clamp ratio")
                                self.threshold = slider(DiffEditParams, "threshold", "Threshold")
                        self.own_mask = gr.Checkbox(False, label="Edit inside the mask as painted below",
                                                    info="Off: DiffEdit estimates the mask from the two prompts.")
                    with gr.Group(visible=first[4] == IMAGIC) as self.imagic_group:
                        with gr.Row():
                            self.embedding_steps = slider(ImagicParams, "embedding_steps", "A: embedding steps",
                                                          value=imagic.get("embedding_steps"))
                            self.embedding_lr = learning_rate(ImagicParams, "embedding_lr", "A: learning rate",
                                                              imagic.get("embedding_lr"))
                        with gr.Row():
                            self.finetune_steps = slider(ImagicParams, "finetune_steps", "B: fine-tuning steps",
                                                         value=imagic.get("finetune_steps"))
                            self.finetune_lr = learning_rate(ImagicParams, "finetune_lr", "B: learning rate",
                                                             imagic.get("finetune_lr"))
                        with gr.Row():
                            self.rank = slider(ImagicParams, "rank", "B: LoRA rank", value=imagic.get("rank"))
                            self.imagic_cfg = slider(ImagicParams, "cfg", "C: guidance", value=imagic.get("cfg"))
                    with gr.Row():
                        self.run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                        self.compare = gr.Button("Compare all methods", elem_id="edit-compare")
                        self.stop = gr.Button("Cancel", variant="stop")
                    with gr.Accordion("Prompt-to-Prompt in the comparison", open=False):
                        self.p2p_cfg = slider(P2PParams, "cfg", "Guidance", value=settings.get("p2p_cfg"))
                    gr.Examples([[example_image(row[1]), *row[2:]] for row in examples],
                                [self.image, self.caption, self.target, self.method],
                                example_labels=[row[0] for row in examples], label="Examples (click one, then Edit)")
                with gr.Column(scale=1):
                    self.result = gr.ImageSlider(label="Before / after (drag the handle)", type="filepath",
                                                 format="png", height=320, elem_id="edit-result",
                                                 elem_classes="studio-image")
                    self.info = gr.Markdown(elem_id="edit-info")
                    ctx.send_sources.append(SendSource(self.result, send_buttons(ctx, self.TAB_ID),
                                                       pick=lambda pair: pair and pair[1]))
                    self.eta = slider(ImagicParams, "eta", "Imagic η (redraws stage C only)", value=imagic.get("eta"),
                                      visible=first[4] == IMAGIC, elem_id="edit-eta")
                    with gr.Accordion("DDIM inversion: x_T and the trajectory", open=False):
                        self.trajectory = gr.Gallery(label="The latent along the inversion, decoded (x_T first)",
                                                     columns=6, height=160, format="png", object_fit="contain",
                                                     elem_id="edit-trajectory")
                    with gr.Accordion("DiffEdit mask", visible=first[4] == DIFFEDIT) as self.mask_box:
                        with gr.Row():
                            self.difference = gr.Image(label="|ε(target) − ε(caption)|, normalised", format="png",
                                                       interactive=False, height=200, elem_classes="studio-image",
                                                       elem_id="edit-difference")
                            self.editor = EditorInput(
                                label="Mask (paint to add, erase to remove; then tick the box on the left)",
                                type="filepath", image_mode="RGBA", height=200, elem_id="edit-mask",
                                layers=gr.LayerOptions(allow_additional_layers=False, layers=["Mask"]),
                                brush=gr.Brush(colors=["#ff00c8"], color_mode="fixed"))
                        self.estimate = gr.Button("Estimate the mask only", size="sm")
            self.compared = gr.Gallery(label="All methods, same image and target", columns=6, height=260, format="png",
                                       object_fit="contain", visible=False, elem_id="edit-compared")
        ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, self.image, self.caption, self.seed))
        self._wire(tab)

    def _wire(self, tab: gr.Tab) -> None:
        # The API's argument order of `edit`, `edit_compare` and `edit_mask`.
        self.form = Form(image=self.image, source_prompt=self.caption, target_prompt=self.target, method=self.method,
                         steps=self.steps, seed=self.seed, ddib_cfg=self.ddib_cfg, round_trip=self.round_trip,
                         domain=self.domain, target_lora_scale=self.lora_scale, strength=self.strength,
                         diffedit_cfg=self.diffedit_cfg, n_noise=self.n_noise, mask_strength=self.mask_strength,
                         clamp_ratio=self.clamp_ratio, threshold=self.threshold, own_mask=self.own_mask,
                         mask=self.editor, embedding_steps=self.embedding_steps, embedding_lr=self.embedding_lr,
                         finetune_steps=self.finetune_steps, finetune_lr=self.finetune_lr, rank=self.rank,
                         imagic_cfg=self.imagic_cfg, eta=self.eta, p2p_cfg=self.p2p_cfg, tuned=self.tuned)
        self.ctx.restorable[self.TAB_ID] = self.form
        gpu, views = self.ctx.gpu, [self.trajectory, self.difference, self.editor, self.tuned]
        event = self.run.click(self.form.task(gpu, self.edit, self.cost), self.form.components,
                               [self.result, self.info, self.compared, *views], api_name="edit", concurrency_id=GPU)
        comparing = self.compare.click(self.form.task(gpu, self.compare_all, self.compare_cost),
                                       self.form.components, [self.compared, self.info, *views],
                                       api_name="edit_compare", concurrency_id=GPU)
        masking = self.estimate.click(self.form.task(gpu, self.mask, lambda v: v["n_noise"] / 2 * self.area()),
                                      self.form.components, [self.difference, self.editor, self.info],
                                      api_name="edit_mask", concurrency_id=GPU)
        eta = Form(image=self.image, tuned=self.tuned, eta=self.eta, steps=self.steps, imagic_cfg=self.imagic_cfg)
        redraw = self.eta.release(eta.task(gpu, self.redraw, lambda v: denoising(v["steps"]) * self.area()),
                                  eta.components, [self.result, self.info], api_name="edit_eta", concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event, comparing, masking, redraw],
                        api_name="cancel_edit", queue=False)
        self.method.change(self.show, self.method, [self.ddib_group, self.diffedit_group, self.imagic_group, self.eta,
                                                    self.mask_box], api_name=False, queue=False)
        tab.select(self.refresh, None, self.domain, api_name=False, queue=False)

    # --- What each request costs on a GPU (ZeroGPU asks before it starts) --------------------------------------

    def area(self) -> float:
        return (self.ctx.size / 512) ** 2

    def cost(self, values: dict) -> float:
        """GPU seconds of one method: denoising steps (two UNet rows each) and Imagic's optimisation steps."""
        steps, method = values["steps"], values["method"]
        work = steps  # the DDIM inversion and its check (one row each), unless cached
        if method == DDIB:
            work += steps * (1 if values["ddib_cfg"] > 1 else 0.5) * (3 if values["round_trip"] else 1)
        elif method == DIFFEDIT:
            work += values["n_noise"] + steps * values["strength"]
        elif method == IMAGIC:
            train = (values["embedding_steps"] + values["finetune_steps"]) * SECONDS_PER_TRAIN_STEP
            return (denoising(steps) + train) * self.area()
        return denoising(work) * self.area()

    def compare_cost(self, values: dict) -> float:
        null_text = 11 * values["steps"]  # Prompt-to-Prompt's null-text inversion, then its edit
        return sum(self.cost({**values, "method": m}) for m in METHODS) + denoising(null_text) * self.area()

    # --- Handlers -------------------------------------------------------------------------------------------

    def domains(self, request: gr.Request | None) -> list[str]:
        """DDIB's target domains: this model, the LoRAs this owner may apply (once a request says who), the catalog's
        other models of this family."""
        family = self.ctx.family
        models = [name for name, entry in self.ctx.manager.catalog.sections.get("base", {}).items()
                  if entry.get("family") == family and name != self.ctx.model]
        loras = [LORA + name for name in self.ctx.lora_names(request)] if request is not None else []
        return [SAME, *loras, *models]

    def refresh(self, request: gr.Request):
        return gr.update(choices=self.domains(request))

    @staticmethod
    def show(method: str) -> list:
        """Each method's settings, Imagic's η and DiffEdit's mask only with their method."""
        return [gr.update(visible=method == m) for m in (DDIB, DIFFEDIT, IMAGIC, IMAGIC, DIFFEDIT)]

    def source(self, values: dict) -> Image.Image:
        if values["image"] is None:
            raise ValueError("Upload an image first (or send one from the Generate tab, or click an example).")
        return self.ctx.image(values["image"])

    def painted_mask(self, values: dict) -> np.ndarray | None:
        """The mask painted in the editor, when "Edit inside the mask as painted" is ticked."""
        if not values["own_mask"]:
            return None
        layers = (values["mask"] or {}).get("layers") or []
        mask = painted(self.ctx.image(layers[0], "The mask layer") if layers else None)
        if mask is None:
            raise ValueError("The mask below is empty: paint where the edit may change the image, or untick "
                             "“Edit inside the mask as painted” to let DiffEdit estimate it.")
        return mask

    def params(self, method: str, values: dict, request: gr.Request | None) -> Any:
        """The method's params, checked (also against this studio's limits) before the model is lent."""
        if method == DDIB:
            domain = (values["domain"] or SAME).strip()
            lora = str(self.ctx.lora_path(request, domain[len(LORA):])) if domain.startswith(LORA) else ""
            return self.ctx.params(DDIBParams, values, cfg=values["ddib_cfg"], target_lora=lora)
        if method == DIFFEDIT:
            self.painted_mask(values)
            return self.ctx.params(DiffEditParams, values, cfg=values["diffedit_cfg"])
        if method == IMAGIC:
            return self.ctx.params(ImagicParams, values, cfg=values["imagic_cfg"])
        if not (values["source_prompt"] or "").strip():
            raise ValueError("Write the caption: the image is inverted under it.")
        return None

    def inverted(self, job, image: Image.Image, values: dict,
                 request: gr.Request | None) -> tuple[DDIMInversion, bool]:
        """The shared DDIM inversion of the image for its caption and steps, and whether the cache had it."""
        caption, steps, model = values["source_prompt"], int(values["steps"]), self.ctx.model_id(request)
        cached = self.ctx.inversions.has(image, caption, steps, model=model)
        return self.ctx.inversions.ddim(job.pipe, image, caption, steps, model=model, should_stop=job.should_stop,
                                        on_step=job.on_step("Inverting the image (DDIM)")), cached

    def run_method(self, method: str, params: Any, job, image: Image.Image, values: dict,
                   request: gr.Request | None) -> Outcome:
        if method == IMAGIC:
            return self.imagic(job, image, params, values, request)
        inversion, cached = self.inverted(job, image, values, request)
        outcome = self.apply(method, params, job, image, values, inversion)
        outcome.cached = cached
        return outcome

    def apply(self, method: str, params: Any, job, image: Image.Image, values: dict,
              inversion: DDIMInversion) -> Outcome:
        if method == DDIB:
            domain = (values["domain"] or SAME).strip()
            if domain in (SAME, "") or domain.startswith(LORA):
                result = run_ddib(job.pipe, image, params, inversion=inversion, should_stop=job.should_stop,
                                  on_step=job.on_step("DDIB: the target ODE"), on_preview=job.on_preview)
            else:
                with self.ctx.manager.lend(domain) as target:
                    result = run_ddib(job.pipe, image, params, inversion=inversion, target_pipe=target,
                                      should_stop=job.should_stop, on_step=job.on_step("DDIB: the target ODE"),
                                      on_preview=job.on_preview)
            job.warnings += result.warnings
            text = f"**DDIB** · target domain: {domain} · guidance {params.cfg:g}"
            if result.cycle_psnr is not None:
                text += f" · round trip back to the input: PSNR {result.cycle_psnr:.1f} dB"
            return Outcome(inversion.image, result.image, text, inversion)
        if method == DIFFEDIT:
            mask = self.painted_mask(values)
            result = run_diffedit(job.pipe, image, params, mask=mask, inversion=inversion,
                                  should_stop=job.should_stop, on_step=job.on_step("DiffEdit"),
                                  on_preview=job.on_preview)
            job.warnings += result.warnings
            source = "painted" if mask is not None else f"estimated from {params.n_noise} noise samples"
            text = (f"**DiffEdit** · mask {source}, {result.mask.mean():.0%} of the image · encoding ratio "
                    f"r = {params.strength:g} · guidance {params.cfg:g}")
            return Outcome(inversion.image, result.image, text, inversion, result,
                           seed=result.estimate.seed if result.estimate else None)
        return Outcome(inversion.image, inversion.reconstruction, f"**DDIM inversion** · reconstruction PSNR "
                       f"{inversion.psnr:.1f} dB (the image redrawn from its x_T, unguided)", inversion)

    def imagic(self, job, image: Image.Image, params: ImagicParams, values: dict,
               request: gr.Request | None) -> Outcome:
        key = (self.ctx.model_id(request), image_digest(image), params.target_prompt, params.embedding_steps,
               params.embedding_lr, params.finetune_steps, params.finetune_lr, params.rank, params.seed)
        before = prepare_image(job.pipe, image)
        kept = values["tuned"]
        if kept and kept["key"] == key:  # stages A and B done for this image, target and settings: stage C only
            after = imagic_generate(job.pipe, kept["tuned"], params.eta, steps=params.steps, cfg=params.cfg,
                                    should_stop=job.should_stop, on_step=job.on_step("Imagic C: generating"),
                                    on_preview=job.on_preview)
            return Outcome(before, after, f"**Imagic** · η {params.eta:g} · stages A and B reused", tuned=kept,
                           seed=kept["tuned"].seed)
        stages = (params.embedding_steps, params.embedding_steps + params.finetune_steps)

        def on_step(i: int, n: int) -> None:
            desc = ("Imagic A: optimising the embedding" if i <= stages[0] else
                    "Imagic B: fine-tuning a LoRA" if i <= stages[1] else "Imagic C: generating")
            job.progress((i, n), desc=desc, unit="steps")

        result = run_imagic(job.pipe, image, params, should_stop=job.should_stop, on_step=on_step,
                            on_preview=job.on_preview)
        job.warnings += result.warnings
        losses = result.tuned.losses
        last = {stage: loss for stage, _, loss in losses}
        text = (f"**Imagic** · η {params.eta:g} · final losses: embedding {last.get('embedding', float('nan')):.3f}, "
                f"fine-tuning {last.get('fine-tuning', float('nan')):.3f} · move η to redraw stage C only")
        return Outcome(before, result.image, text, tuned={"key": key, "tuned": result.tuned}, seed=result.seed)

    def views(self, outcome: Outcome) -> list:
        """The trajectory, DiffEdit's maps and Imagic's kept stages (each left as it is when not produced)."""
        trajectory = gr.skip()
        if outcome.inversion is not None:
            views = outcome.inversion.views
            trajectory = [(image, f"t = {t}" + (" (x_T)" if i == 0 else " (z0)" if i == len(views) - 1 else ""))
                          for i, (t, image) in enumerate(views)]
        difference = editor = gr.skip()
        if outcome.diffedit is not None and outcome.diffedit.estimate is not None:
            difference, editor = self.mask_views(outcome.before, outcome.diffedit.estimate)
        return [trajectory, difference, editor, outcome.tuned if outcome.tuned is not None else gr.skip()]

    @staticmethod
    def mask_views(before: Image.Image, estimate) -> tuple[Image.Image, dict]:
        difference = Image.fromarray((estimate.difference * 255).astype(np.uint8)).resize(before.size, Image.NEAREST)
        layer = mask_layer(estimate.mask, before.size)
        composite = Image.alpha_composite(before.convert("RGBA"), layer)
        return difference, {"background": before, "layers": [layer], "composite": composite}

    @user_errors
    def edit(self, values: dict, request: gr.Request, progress: gr.Progress):
        image, method = self.source(values), values["method"]
        params = self.params(method, values, request)  # bad settings are refused before the model is lent
        started = time.perf_counter()
        for previews, outcome in self.ctx.stream(request, progress, lambda job: self.run_method(
                method, params, job, image, values, request)):
            if previews:
                yield (image, previews[0]), *[gr.skip()] * 6  # info, comparison, the views: as they are
        info = f"{outcome.text} · {time.perf_counter() - started:.1f} s"
        if outcome.inversion is not None:
            info += " · DDIM inversion " + ("reused from the cache" if outcome.cached else "computed (now cached, "
                                            "also for Prompt-to-Prompt)")
        used = {} if outcome.seed is None else {"seed": outcome.seed}
        after = self.ctx.keep(request, self.ctx.recipe(request, self.TAB_ID, self.form, values, **used), outcome.after,
                              values["seed"] if outcome.seed is None else outcome.seed)
        yield [(outcome.before, after), info, gr.update(visible=False), *self.views(outcome)]

    @user_errors
    def compare_all(self, values: dict, request: gr.Request, progress: gr.Progress):
        image = self.source(values)
        params = {method: self.params(method, values, request) for method in METHODS}
        outcomes, times = {}, {}
        with self.ctx.job(request, progress) as job:
            for method in METHODS:  # the DDIM inversion first: the others reuse it
                started = time.perf_counter()
                outcomes[method] = self.run_method(method, params[method], job, image, values, request)
                times[method] = time.perf_counter() - started
            started = time.perf_counter()
            p2p = self.p2p(job, image, values, request)
            times["Prompt-to-Prompt"] = time.perf_counter() - started
        inversion = outcomes[INVERSION].inversion
        shown = [(inversion.image, "input"),
                 (inversion.reconstruction, f"DDIM inversion · {inversion.psnr:.1f} dB · {times[INVERSION]:.1f} s"),
                 *((outcomes[m].after, f"{m} · {times[m]:.1f} s") for m in (DDIB, DIFFEDIT, IMAGIC)),
                 (p2p, f"Prompt-to-Prompt · {times['Prompt-to-Prompt']:.1f} s")]
        rows = "\n".join(f"| {name} | {seconds:.1f} s |" for name, seconds in times.items())
        info = ("Same image, caption and target prompt for every method, each with its settings on the left. The "
                "DDIM inversion is computed once (its time is in its own row, 0 s if it was cached) and reused by "
                "DDIB, DiffEdit and Prompt-to-Prompt's null-text inversion.\n\n| method | time |\n|---|---|\n" + rows)
        merged = Outcome(inversion.image, inversion.image, "", inversion, outcomes[DIFFEDIT].diffedit,
                         outcomes[IMAGIC].tuned)
        return [gr.update(value=shown, visible=True), info, *self.views(merged)]

    def p2p(self, job, image: Image.Image, values: dict, request: gr.Request | None) -> Image.Image:
        """Prompt-to-Prompt on the real image: null-text inversion (from the shared DDIM inversion), then a word swap,
        or a refinement when the prompts differ in length."""
        source, target = values["source_prompt"], values["target_prompt"]
        edit = "replace" if len(source.split()) == len(target.split()) else "refine"
        params = P2PParams(source, target, edit, steps=int(values["steps"]), cfg=values["p2p_cfg"])
        inversion = self.ctx.inversions.null_text(job.pipe, image, source, params.steps, params.cfg,
                                                  model=self.ctx.model_id(request), should_stop=job.should_stop,
                                                  on_step=job.on_step("Prompt-to-Prompt: null-text inversion"))
        return run_p2p(job.pipe, params, inversion=inversion, should_stop=job.should_stop,
                       on_step=job.on_step("Prompt-to-Prompt: the edit")).edited

    @user_errors
    def mask(self, values: dict, request: gr.Request, progress: gr.Progress):
        image = self.source(values)
        params = self.ctx.params(DiffEditParams, values, cfg=values["diffedit_cfg"])
        with self.ctx.job(request, progress) as job:
            estimate = estimate_mask(job.pipe, image, params, should_stop=job.should_stop,
                                     on_step=job.on_step("DiffEdit: estimating the mask", "samples"))
            before = prepare_image(job.pipe, image)
        difference, editor = self.mask_views(before, estimate)
        return difference, editor, (f"**DiffEdit mask** · {estimate.mask.mean():.0%} of the image · edit it on the "
                                    "right, tick “Edit inside the mask as painted”, then Edit")

    @user_errors
    def redraw(self, values: dict, request: gr.Request, progress: gr.Progress):
        kept = values["tuned"]
        image = self.source(values) if values["image"] is not None else None
        if not kept or image is None or kept["key"][1] != image_digest(image):
            yield gr.skip(), "Run Imagic on this image first: η then redraws its last result without re-tuning."
            return
        params = self.ctx.params(ImagicParams, values, target_prompt="-", cfg=values["imagic_cfg"])
        started = time.perf_counter()

        def work(job: Job) -> tuple[Image.Image, Image.Image]:
            after = imagic_generate(job.pipe, kept["tuned"], params.eta, steps=params.steps, cfg=params.cfg,
                                    should_stop=job.should_stop, on_step=job.on_step("Imagic C: generating"),
                                    on_preview=job.on_preview)
            return prepare_image(job.pipe, image), after

        for previews, pair in self.ctx.stream(request, progress, work):
            if previews:
                yield (image, previews[0]), gr.skip()
        yield pair, f"**Imagic** · η {params.eta:g} · stage C only · {time.perf_counter() - started:.1f} s"

