"""Prompt-to-Prompt tab: edit a generated image by editing its prompt; per-word weights; attention explorer."""

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.p2p import WEIGHT_RANGE, P2PParams, P2PResult, run_p2p, word_weights
from tabs import (GPU, Form, Job, SendSource, SendTarget, StudioContext, choices, model_examples, seed_box,
                  send_buttons, slider, user_errors)
from tabs.gpu import denoising
from tabs.inputs import ImageInput

EXPLAIN = ("Hertz et al., *Prompt-to-Prompt* (ICLR 2023). The source and the edited prompt are drawn together from "
           "the same noise; for the first part of the schedule the edit reuses the source's cross-attention maps, so "
           "the layout stays while the changed words change what is drawn. **replace** swaps words one for one, "
           "**refine** adds words, **reweight** turns a word's attention up or down (the sliders work with every "
           "edit). **LocalBlend** keeps the edit inside where the chosen words attend.")
MAX_WEIGHT_WORDS = 12
MIN_INVERSION_STEPS = 20  # below it null-text inversion rarely meets its early stop: slower and worse (6 dB at 5)


def heat(values: np.ndarray, size: int) -> Image.Image:
    """A map as a black-to-yellow picture (its own minimum to maximum), upscaled without smoothing."""
    v = (values - values.min()) / max(float(values.max() - values.min()), 1e-8)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 0.5, 0, 1), np.clip(v - 0.8, 0, 1) * 5], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)


def blend_view(edited: Image.Image, mask: Image.Image) -> Image.Image:
    """The edit with what LocalBlend keeps from the source dimmed: a bare mask at 64x64 reads as a stray shape."""
    may_change = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255
    return Image.fromarray((np.asarray(edited.convert("RGB"), dtype=np.float32) * (0.3 + 0.7 * may_change))
                           .astype(np.uint8))


def parse_windows(text: str) -> dict[str, tuple[float, float]]:
    """ "blue:0-0.4, circle:0.2-1" → {"blue": (0.0, 0.4), "circle": (0.2, 1.0)}."""
    windows = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        try:
            word, span = item.rsplit(":", 1)
            start, end = span.split("-")
            windows[word.strip()] = (float(start), float(end))
        except ValueError:
            raise ValueError(f"Write per-word windows as word:start-end, e.g. blue:0-0.4 (got {item!r}).") from None
    return windows


class P2PTab:
    TAB_ID, LABEL = "p2p", "Prompt-to-Prompt"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        examples = model_examples("p2p", ctx.family)
        labels, examples = [row[0] for row in examples], [self.example(*row[1:]) for row in examples]
        # The tab opens with the model's first example.
        source, target, edit, blend, cfg, seed, words, *values = examples[0]
        words = words.split()
        with gr.Tab(self.LABEL, id=self.TAB_ID):
            gr.Markdown(EXPLAIN)
            self.result = gr.State(None)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    self.source_prompt = gr.Textbox(source, label="Source prompt", elem_id="p2p-source")
                    self.target_prompt = gr.Textbox(target, label="Edited prompt", elem_id="p2p-target",
                                                    info="Reweight alone may leave this empty. (word:1.5) or "
                                                    "(word) sets the word's attention weight below.")
                    self.edit = choices(P2PParams, "edit", "Edit", radio=True, value=edit)
                    with gr.Accordion("Edit a real image (DDIM + null-text inversion)", open=False):
                        self.real = ImageInput(label="Real image (the source prompt must describe it)",
                                               type="filepath",
                                             height=200, elem_id="p2p-real")
                        gr.Markdown("The image is inverted once for its source prompt, steps and guidance (about "
                                    "20 model calls per step); later edits with the same settings reuse it, and the "
                                    "DDIM inversion is shared with the Edit a real image tab.")
                    gr.Markdown("**Attention weight per word of the edited prompt** (1 = unchanged)")
                    with gr.Row():
                        # The words the sliders stand for, in order: a hidden component rather than State, so that
                        # an example sets it together with the slider values.
                        self.weighted = gr.Textbox(" ".join(words), visible=False)
                        self.weights = [gr.Slider(*WEIGHT_RANGE, value=values[i], step=0.1, min_width=90,
                                                  visible=i < len(words), label=words[i] if i < len(words) else "")
                                        for i in range(MAX_WEIGHT_WORDS)]
                    with gr.Accordion("Injection windows and LocalBlend", open=False):
                        with gr.Row():
                            self.cross_start = slider(P2PParams, "cross_start", "Cross-attention from")
                            self.cross_end = slider(P2PParams, "cross_end", "…to")
                        self.word_windows = gr.Textbox(label="Per-word cross-attention windows",
                                                       placeholder="blue:0-0.4, circle:0-1",
                                                       info="word:start-end (fractions of the schedule); other "
                                                       "words use the window above.")
                        self.self_end = slider(P2PParams, "self_end", "Self-attention until")
                        self.blend_words = gr.Textbox(label="LocalBlend words (space-separated; empty = off)",
                                                      value=blend, placeholder="circle")
                        with gr.Row():
                            self.blend_threshold = slider(P2PParams, "blend_threshold", "LocalBlend threshold")
                            self.blend_levels = gr.CheckboxGroup(
                                [("1/1", 1), ("1/2", 2), ("1/4", 4), ("1/8", 8)], value=[],
                                label="LocalBlend averages the maps at", info="attention resolutions as a fraction of "
                                "the latent side (SD at 512: 64, 32, 16, 8). None ticked: the paper's choice, the "
                                "UNet's coarsest block level (16×16 for SD, 8×8 for Shapes)")
                    with gr.Accordion("More settings", open=False):
                        self.steps = slider(P2PParams, "steps", "Steps")
                        self.cfg = slider(P2PParams, "cfg", "Guidance (CFG)", value=cfg)
                        self.seed = seed_box(P2PParams, value=seed)
                    with gr.Row():
                        self.run = gr.Button("Edit", variant="primary", elem_id="p2p-run")
                        self.stop = gr.Button("Cancel", variant="stop")
                    # An example sets every weight (1 unless it names one), so the edit is the one it shows.
                    gr.Examples(examples, [self.source_prompt, self.target_prompt, self.edit, self.blend_words,
                                           self.cfg, self.seed, self.weighted, *self.weights],
                                label="Examples (click one, then Edit)", example_labels=labels)
                with gr.Column(scale=1):
                    with gr.Row():
                        self.source = gr.Image(label="Source", format="png", interactive=False, height=280,
                                               type="filepath", elem_classes="studio-image",
                                               elem_id="p2p-source-image")
                        self.edited = gr.Image(label="Edited", format="png", interactive=False, height=280,
                                               type="filepath", elem_classes="studio-image",
                                               elem_id="p2p-edited-image")
                    self.info = gr.Markdown()
                    ctx.send_sources.append(SendSource(self.edited, send_buttons(ctx, self.TAB_ID)))
                    with gr.Accordion("Attention explorer", open=True):
                        with gr.Row():
                            self.upto = gr.Slider(1, P2PParams.default("steps"), value=P2PParams.default("steps"),
                                                  step=1,
                                                  label="Average over steps 1…")
                            self.side = gr.Dropdown(["all"], value="all", label="Resolution")
                        self.source_maps = gr.Gallery(label="Source: cross-attention per token", columns=6,
                                                      height=200, format="png", object_fit="contain",
                                                      elem_id="p2p-source-maps")
                        self.edited_maps = gr.Gallery(label="Edited: cross-attention per token", columns=6,
                                                      height=200, format="png", object_fit="contain")
                        self.mask = gr.Image(label="LocalBlend mask on the edit (dimmed: kept from the source)",
                                             format="png", interactive=False, height=200, visible=False,
                                             elem_classes="studio-image", elem_id="p2p-blend-mask")
        # From Generate: the picture arrives as a real image to invert, with its prompt as the source prompt.
        ctx.send_targets.append(SendTarget(self.LABEL, self.TAB_ID, self.real, self.source_prompt, self.seed))
        self._wire()

    def _wire(self) -> None:
        # One slider per word of the edited prompt: a fixed set, relabelled and shown as the prompt changes, so the
        # event (and its API) stays the same whatever the prompt.
        words = Form(target=self.target_prompt, source=self.source_prompt, before=self.weighted, weights=self.weights)
        relabel = words.bind(lambda v, request, progress: self.relabel(v["target"], v["source"], v["before"],
                                                                        v["weights"]))
        for prompt in (self.target_prompt, self.source_prompt):
            prompt.change(relabel, words.components, [self.weighted, *self.weights], api_name=False, queue=False)
        # The API's argument order of `p2p`.
        form = Form(source_prompt=self.source_prompt, target_prompt=self.target_prompt, edit=self.edit,
                    cross_start=self.cross_start, cross_end=self.cross_end, word_windows=self.word_windows,
                    self_end=self.self_end, blend_words=self.blend_words, blend_threshold=self.blend_threshold,
                    blend_levels=self.blend_levels, steps=self.steps, cfg=self.cfg, seed=self.seed, real=self.real,
                    weights=self.weights)
        self.form = form
        # A PNG restores the words its weights belong to too, so the sliders keep their values as the prompts land.
        self.ctx.restorable[self.TAB_ID] = Form(**form.inputs, weighted=self.weighted)
        event = self.run.click(form.task(self.ctx.gpu, self.p2p, self.cost), form.components,
                               [self.source, self.edited, self.info, self.result, self.side, self.mask],
                               api_name="p2p", concurrency_id=GPU)
        event.then(self.explore, [self.result, self.upto, self.side], [self.source_maps, self.edited_maps],
                   api_name=False)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event], api_name="cancel_p2p", queue=False)
        for control in (self.upto, self.side):
            control.change(self.explore, [self.result, self.upto, self.side], [self.source_maps, self.edited_maps],
                           api_name=False, queue=False)

    def cost(self, values: dict) -> float:
        """GPU seconds: two images, plus a real image's inversion (DDIM, then null-text: about ten optimisation
        steps, forward and backward, per step)."""
        steps, size = values["steps"], self.ctx.size
        inversion = 21 * steps if values["real"] is not None else 0
        return denoising(2 * steps + inversion, 1, size, size)

    @staticmethod
    def words(target: str, source: str) -> list[str]:
        """The words of the edited prompt as Prompt-to-Prompt aligns them, without A1111's weighting syntax."""
        return list(dict.fromkeys(word_weights(target or source or "")[0].split()))[:MAX_WEIGHT_WORDS]

    @classmethod
    def example(cls, source: str, target: str, edit: str, blend: str, cfg: float, seed: int,
                weights: dict[str, float] | None = None) -> list:
        """A presets/p2p.yaml row as the values of the example's inputs: the settings, the words the sliders stand
        for, and one weight per slider (1 unless the row names the word)."""
        words = cls.words(target, source)
        weights = {**word_weights(target or source)[1], **(weights or {})}
        values = [weights.get(word, 1) for word in words]
        return [source, target, edit, blend, cfg, seed, " ".join(words), *values,
                *[1] * (MAX_WEIGHT_WORDS - len(words))]

    @classmethod
    def relabel(cls, target: str, source: str, before: str, weights: list[float]) -> list:
        """Sliders for the words of the prompt as typed; a word still there keeps its weight, so typing another word
        does not reset the ones already set, and a word weighted in the prompt, `(word:1.5)`, takes that weight."""
        kept = {**dict(zip((before or "").split(), weights)), **word_weights(target or source or "")[1]}
        words = cls.words(target, source)
        return [" ".join(words), *(gr.update(label=words[i], visible=True, value=kept.get(words[i], 1))
                                   if i < len(words) else gr.update(visible=False) for i in range(MAX_WEIGHT_WORDS))]

    @user_errors
    def p2p(self, values: dict, request: gr.Request, progress: gr.Progress):
        source, target = values["source_prompt"], values["target_prompt"]
        real = self.ctx.image(values["real"], "The real image")
        weights = dict(zip(self.words(target, source), values["weights"]))
        params = self.ctx.params(P2PParams, values, weights={w: float(v) for w, v in weights.items() if v != 1},
                       word_windows=parse_windows(values["word_windows"]),
                       blend_words=(values["blend_words"] or "").split(),
                       blend_levels=[int(level) for level in values["blend_levels"] or []])
        model = self.ctx.model_id(request)
        cached = [real is not None and self.ctx.inversions.has(real, params.source_prompt, params.steps, cfg, model)
                  for cfg in (None, params.cfg)]

        def work(job: Job) -> tuple[P2PResult, Any]:
            inversion = None
            if real is not None and params.steps < MIN_INVERSION_STEPS:
                job.warnings.append(f"A real image inverted in {params.steps} steps reconstructs poorly, and "
                                    "null-text inversion then works hardest: use at least "
                                    f"{MIN_INVERSION_STEPS} steps.")
            if real is not None:  # the shared cache: inverted once per model, image, prompt, steps and guidance
                inversion = self.ctx.inversions.null_text(job.pipe, real, params.source_prompt, params.steps,
                                                          params.cfg, model=model,
                                                          should_stop=job.should_stop,
                                                          on_step=job.on_step("Inverting the image"))
            result = run_p2p(job.pipe, params, inversion=inversion, should_stop=job.should_stop,
                             on_step=job.on_step("Denoising source and edit"), on_preview=job.on_preview)
            job.warnings += result.warnings
            return result, inversion

        for previews, done in self.ctx.stream(request, progress, work):
            if previews:
                yield previews[0], previews[1], gr.skip(), gr.skip(), gr.skip(), gr.skip()
        result, inversion = done
        weighted = ", ".join(f"{w} ×{v:g}" for w, v in params.weights.items()) or "none"
        info = (f"{params.edit} · seed {result.seed} · cross-attention {params.cross_start:.2f}–"
                f"{params.cross_end:.2f} · self-attention until {params.self_end:.2f} · weights: {weighted}")
        sides = gr.update(choices=["all", *map(str, result.maps.sides)], value="all")
        blended = result.blend_mask is not None
        mask = gr.update(value=blend_view(result.edited, result.blend_mask) if blended else None, visible=blended)
        if inversion is not None:
            info += (f"\n\nReal image: reconstruction PSNR {inversion.psnr:.1f} dB with null-text inversion "
                     f"({inversion.psnr_ddim:.1f} dB with DDIM inversion alone). "
                     + ("Inversion reused from the cache." if cached[1] else
                        "DDIM inversion reused from the cache, null-text inversion computed." if cached[0] else
                        "Inversion computed (now cached)."))
        recipe = self.ctx.recipe(request, self.TAB_ID, self.form, values, seed=result.seed,
                                 weighted=" ".join(self.words(target, source)))
        pictures = [self.ctx.keep(request, recipe, image, result.seed) for image in (result.source, result.edited)]
        yield *pictures, info, result, sides, mask

    @staticmethod
    def explore(result: P2PResult | None, upto: float, side: str):
        if result is None:
            return [], []
        steps = [s for s in result.maps.steps if s < int(upto)] or result.maps.steps[:1]
        sides = None if side == "all" else [int(side)]
        size = 96
        galleries = []
        for prompt, tokens in ((0, result.source_tokens), (1, result.target_tokens)):
            galleries.append([(heat(result.maps.token_map(prompt, i, steps, sides), size), token)
                              for i, token in enumerate(tokens)])
        return galleries
