"""The Train tab's memorization probe (Carlini et al. 2023): many samples of one prompt, each set beside its nearest
training image; a sample closer than the threshold is a copy. On Shapes the reference can be the shipped model's own
training set (its 20,000 world scenes, indexed once for the app); on any model a LoRA's training images or a folder
on this server."""

import threading
from statistics import median

import gradio as gr

from studio.lora import LoraUse
from studio.memorization import ImageSet, MemorizationParams, MemorizationResult, WorldIndex, draw_result, \
    run_memorization
from tabs import GPU, Form, StudioContext, seed_box, session, slider, user_errors
from tabs.gpu import denoising

EXPLAIN = ("Carlini et al., *Extracting Training Data from Diffusion Models* (2023): draw many samples of one prompt "
           "and find each one's nearest training image. A sample closer than the threshold (RMS over 64×64 RGB, 0 = "
           "the same pixels, 1 = white against black) is a copy. Compare with the grey baseline: images that were "
           "*not* trained on, and how close they come by chance.")
WORLD, LORA_IMAGES, FOLDER = "world", "lora", "folder"
LABELS = {WORLD: "the Shapes world's training set", LORA_IMAGES: "the LoRA's own training images",
          FOLDER: "a folder on this server"}
FIELDS = ["prompt", "n_samples", "seed", "steps", "cfg", "threshold"]


class MemorizationSection:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self._world: WorldIndex | None = None  # built by the first probe that needs it, then shared read-only
        self._world_lock = threading.Lock()
        roots = ctx.storage.data_roots
        kinds = [k for k in LABELS if (k != WORLD or ctx.family == "shapes") and (k != FOLDER or roots)]
        with gr.Accordion("Memorization probe (Carlini et al. 2023)", open=False, elem_id="train-memorization"):
            gr.Markdown(EXPLAIN)
            with gr.Row():
                self.prompt = gr.Textbox("a sks star" if ctx.family == "shapes" else "", label="Prompt", scale=2)
                self.lora = gr.Dropdown([], value=None, label="LoRA from your library (empty: the base model)",
                                        allow_custom_value=True, scale=2)
                self.scale = slider(LoraUse, "scale", "LoRA scale", scale=1)
            with gr.Row():
                self.reference = gr.Radio([(LABELS[k], k) for k in kinds], value=kinds[0], label="Compare with")
                self.folder = gr.Textbox(label="Folder on this server", visible=False,
                                         info=f"Inside {', '.join(map(str, roots))}" if roots else None)
            with gr.Row():
                self.n_samples = slider(MemorizationParams, "n_samples", "Samples")
                self.steps = slider(MemorizationParams, "steps", "Steps")
                self.cfg = slider(MemorizationParams, "cfg", "Guidance (CFG)")
                self.threshold = slider(MemorizationParams, "threshold", "Threshold δ")
                self.seed = seed_box(MemorizationParams, "First seed")
            with gr.Row():
                self.run = gr.Button("Run the probe", variant="primary", elem_id="memorization-run")
                self.stop = gr.Button("Cancel", variant="stop")
            self.summary = gr.Markdown(elem_id="memorization-summary")
            # No label over the picture: it would hide the picture's own caption line.
            self.picture = gr.Image(label="Closest samples over their nearest reference images; the distances",
                                    show_label=False, type="pil", format="png", interactive=False,
                                    elem_id="memorization-picture")
        self._wire()

    def _wire(self) -> None:
        self.lora.focus(self.library, None, self.lora, api_name=False, queue=False)
        self.reference.change(lambda kind: gr.update(visible=kind == FOLDER), self.reference, self.folder,
                              api_name=False, queue=False)
        # The API's argument order of `memorization`: the LoRA, the reference, then MemorizationParams' fields.
        form = Form(lora=self.lora, scale=self.scale, reference=self.reference, folder=self.folder,
                    **{name: getattr(self, name) for name in FIELDS})
        self.sample = self.ctx.gpu.task(self._sample, self._seconds)
        event = self.run.click(form.bind(self.probe), form.components, [self.picture, self.summary],
                               api_name="memorization", concurrency_id=GPU)
        self.stop.click(self.ctx.stop_job, None, None, cancels=[event], api_name="cancel_memorization", queue=False)

    def library(self, request: gr.Request):
        return gr.update(choices=self.ctx.lora_names(request))

    @user_errors
    def probe(self, values: dict, request: gr.Request, progress: gr.Progress):
        # 1. Inputs, and the reference set (indexed here, off the GPU: the world takes half a minute, once)
        params = self.ctx.params(MemorizationParams, values)
        name = (values["lora"] or "").strip()
        loras = [(self.ctx.lora_path(request, name), float(values["scale"]))] if name else []
        reference = self._reference(values, name, request, progress)
        # 2. The samples and their nearest images, as one job on the GPU
        result = self.sample(reference, params, loras, request, progress)
        return draw_result(result), summary(result, name and f"{name} at scale {float(values['scale']):g}")

    def _sample(self, reference, params: MemorizationParams, loras: list, request: gr.Request,
                progress: gr.Progress) -> MemorizationResult:
        return self.ctx.run_job(request, progress, run_memorization, reference, params, loras=loras)

    def _seconds(self, reference, params: MemorizationParams, loras: list, request: gr.Request | None = None,
                 progress: gr.Progress | None = None) -> float:
        return denoising(params.steps, params.n_samples, self.ctx.size, self.ctx.size)

    def _reference(self, values: dict, lora: str, request: gr.Request, progress: gr.Progress):
        kind = values["reference"]
        if kind == WORLD:
            if self.ctx.family != "shapes":
                raise ValueError("The Shapes world's training set is the reference of the Shapes model only.")
            return self.world(request, progress)
        if kind == LORA_IMAGES:
            if not lora:
                raise ValueError("Pick a LoRA: its training images are the reference.")
            folder = self.ctx.lora_path(request, lora) / "instance"
            if not folder.is_dir():
                raise ValueError(f"{lora} keeps no training images (it was imported, not trained here): compare "
                                 "with a folder of its images instead.")
            return ImageSet.from_folder(folder, f"the training images of {lora}")
        if kind == FOLDER:
            return ImageSet.from_folder(self._server_folder(values["folder"], request))
        raise ValueError(f"Unknown reference {kind!r}: choose one of {', '.join(LABELS.values())}.")

    def world(self, request: gr.Request, progress: gr.Progress) -> WorldIndex:
        """The app's one world index, built at the first probe that asks (its Cancel stops the build), with its
        held-out baseline; every later probe shares it read-only."""
        with self._world_lock:
            if self._world is None:
                stop = self.ctx.cancel.arm(session(request))
                index = WorldIndex().build(should_stop=stop.is_set, on_step=lambda i, n: progress(
                    (i, n), desc="Indexing the Shapes world's training set (once)", unit="scenes"))
                progress(None, desc="Placing held-out world scenes (once)")
                index.baseline()
                self._world = index
            return self._world

    def _server_folder(self, typed: str | None, request: gr.Request):
        """A folder inside the operator's data roots and, on a shared studio, outside everybody else's outputs."""
        if not (typed or "").strip():
            raise ValueError("Name a folder of images on this server.")
        storage = self.ctx.storage
        path = storage.data_path(typed.strip())
        if storage.shared and path.is_relative_to(storage.root.resolve()) and \
                not path.is_relative_to(storage.home(self.ctx.owner(request)).resolve()):
            raise ValueError(f"{typed.strip()} is in the studio's outputs, where other people's work is kept.")
        return path


def summary(result: MemorizationResult, lora: str = "") -> str:
    copied, n = round(result.fraction_copied * len(result.matches)), len(result.matches)
    closest = result.matches[result.pairs[0]]
    baseline = result.baseline
    line = (f"**{copied} of {n} samples ({result.fraction_copied:.0%}) are copies** (nearer than "
            f"{result.threshold:g} to an image of {result.reference}){' with ' + lora if lora else ''}. Median "
            f"distance **{result.median:.3f}**; the closest, seed {result.seed + result.pairs[0]}, is "
            f"{closest.distance:.3f} from {closest.name}.")
    if baseline.distances:
        under = sum(d < result.threshold for d in baseline.distances) / len(baseline.distances)
        line += (f"\n\nBaseline, {baseline.label}: median **{median(baseline.distances):.3f}**, {under:.0%} under "
                 "the threshold. Samples no closer than these show no memorization.")
    return "\n\n".join([line, *result.warnings])
