"""Customising the shared base model in the background: DreamBooth with LoRA, Custom Diffusion, Textual Inversion,
and erasing a concept (ESD), one job machinery for all four.

- DreamBooth (Ruiz et al., CVPR 2023) binds a rare identifier ("sks") to the subject: the instance prompt is
  "a sks dog". Its prior-preservation loss (Eq. 2) adds λ·w_t'·||x̂(α_t' x_pr + σ_t' ε', c_pr) - x_pr||² over
  images the frozen model drew for the class prompt ("a dog"), so the class keeps its meaning (no language drift).
- LoRA (Hu et al., ICLR 2022): only a rank-r update (α/r)·B·A of the attention projections is trained.
  Custom Diffusion (Kumari et al., CVPR 2023) showed that the cross-attention K/V projections alone, the only
  weights that read the text, suffice for a new concept: target "kv".
- min-SNR-γ (Hang et al., ICCV 2023): weight each timestep's loss by min(SNR, γ)/SNR (ε-prediction) or
  min(SNR, γ)/(SNR+1) (v-prediction), so the many easy low-noise steps stop dominating.

- The other methods (`method`): Custom Diffusion's full method, several concepts with full-rank K/V deltas and a
  modifier token each (studio/custom_diffusion.py); Textual Inversion, one new token's embedding and nothing else
  (studio/textual_inversion.py); ESD-x, a LoRA that erases a concept (studio/erase.py).

The base model stays frozen and shared with the other tabs: every optimisation step runs under the model manager's
lock with this job's adapter (and new tokens) on, and the next lend by anyone else switches them off first (see
studio/lora.py). Latents of every augmented view and, when nothing trains them, the prompt embeddings are computed
once. A job lives in one folder, so it can resume after a cancel, a crash or a restart; when it finishes, the same
folder is a library entry (a LoRA, or the job of an embedding in the owner's embedding library).
"""

import json
import logging
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from studio.custom_diffusion import add_kv_deltas, save_custom_diffusion
from studio.erase import esd_target
from studio.jobs import Cancelled, StopFn
from studio.lora import METADATA, TARGETS, activate, check_token, deactivate, remove_adapter, save_lora, tuner_layers
from studio.models import ModelManager
from studio.params import Params, choice, ranged
from studio.pnginfo import Recipe, save_png
from studio.prompts import encode_text, plain_text
from studio.sampling import seed_field, txt2img
from studio.textual_inversion import NewTokens
from studio.train_data import check_concepts, class_images, encode_views, load_job, save_job

PRESETS = Path(__file__).resolve().parents[1] / "presets" / "train.yaml"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TARGET_LABELS = {"attention": "attention blocks (LoRA, kohya's layers)",
                 "kv": "cross-attention K/V only (Custom Diffusion style)",
                 "cross": "all of cross-attention (ESD-x)"}
METHODS = {"dreambooth": "DreamBooth LoRA",
           "custom-diffusion": "Custom Diffusion (K/V + modifier tokens, 1–2 concepts)",
           "textual-inversion": "Textual Inversion (one new token)", "erase": "Erase a concept (ESD-x)"}
TOKEN_METHODS = ("custom-diffusion", "textual-inversion")  # their identifiers are new tokens with trained embeddings
# Several concepts in one job: Custom Diffusion's joint training (Sec. 3.2), and DreamBooth on the merged data (the
# baseline the paper compares it with)
TWO_CONCEPTS = ("custom-diffusion", "dreambooth")
# The settings each method reads, beyond those all read (COMMON_SETTINGS): what the Train tab shows for it.
COMMON_SETTINGS = ["lr", "lr_schedule", "steps", "batch", "resolution", "seed", "min_snr_gamma", "ema_decay",
                   "validate_every", "checkpoint_every"]
METHOD_SETTINGS = {
    "dreambooth": ["rank", "alpha", "crop", "flip", "target", "train_text_encoder", "prior_preservation",
                   "num_class_images", "prior_loss_weight"],
    "custom-diffusion": ["initializer", "crop", "flip", "prior_preservation", "num_class_images", "prior_loss_weight"],
    "textual-inversion": ["initializer", "crop", "flip"],
    "erase": ["rank", "alpha", "num_class_images", "negative_guidance"],
}
VALIDATION_SEEDS = 2  # images per validation prompt, seeds 0 and 1 at every validation
VALIDATION_STEPS = 20
COMMON_BELOW = 30000  # CLIP token ids below this are frequent words (see identifier_report)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the job stopped before the bad step touched the weights."""


@dataclass
class TrainParams(Params):
    """One training job. Field metadata gives the UI its ranges and help; presets/train.yaml names good sets. Names
    as in diffusers' train_dreambooth_lora.py: `prior_loss_weight` is λ of Eq. 2, `num_class_images` the prior's
    images, `rank` and `alpha` LoRA's r and α."""

    method: str = choice("dreambooth", METHODS, "What the job trains: a LoRA bound to an identifier (DreamBooth), "
                         "K/V weights and a new token per concept (Custom Diffusion), one new token only (Textual "
                         "Inversion), or a LoRA that removes a concept (ESD).")
    instance_prompt: str = "a photo of sks dog"
    identifier: str = "sks"
    class_prompt: str = "a photo of dog"
    # A second concept (Custom Diffusion, or DreamBooth on merged data; its images come separately); empty for one
    instance_prompt_2: str = ""
    identifier_2: str = ""
    class_prompt_2: str = ""
    initializer: str = field(default="star", metadata={
        "help": "Textual Inversion and Custom Diffusion: the word whose embedding each new token starts from (Gal et "
                "al. Sec. 4: a coarse description of the concept)."})
    erase_prompt: str = ""  # ESD: the concept to erase, e.g. "a star"
    negative_guidance: float = ranged(1.0, 0, 10, 0.1, "η of ESD Eq. 6: how far from the concept the model is pushed.")
    prior_preservation: bool = False
    num_class_images: int = ranged(50, 1, 500, 1, "Images of the class prompt the base model draws (cached).")
    prior_loss_weight: float = ranged(1.0, 0, 2, 0.05, "λ of DreamBooth Eq. 2: weight of the class images' loss.")
    rank: int = ranged(4, 1, 128, 1, "r: rank of each LoRA update; larger learns more, files grow.")
    alpha: float = ranged(4, 1, 128, 1, "α: the update is scaled by α/r.")
    lr: float = ranged(1e-4, 1e-6, 1e-1, 1e-6, "Learning rate of AdamW (Textual Inversion wants about 5e-3 and more).")
    lr_schedule: str = choice("constant", ("constant", "cosine"), "How the learning rate changes over the steps.")
    steps: int = ranged(500, 1, 10000, 10, "Optimisation steps.")
    batch: int = ranged(1, 1, 16, 1, "Instance images per step (as many class images are added with the prior).")
    resolution: int = ranged(512, 64, 1024, 8, "Training images are scaled and cropped to this square.")
    crop: str = choice("center", ("center", "random"), "Which square of each image is trained on.")
    flip: bool = True
    seed: int = seed_field(0, "Seed of augmentation, noise and timesteps: same seed, same LoRA.", random=False)
    target: str = choice("attention", TARGET_LABELS, "Which layers get LoRA updates.")
    train_text_encoder: bool = False
    min_snr_gamma: float = ranged(0.0, 0, 20, 0.5, "γ of min-SNR weighting (5 in the paper); 0 turns it off.")
    ema_decay: float = ranged(0.0, 0, 0.9999, 0.0001, "Save the moving average of the trained weights over about "
                              "the last 1/(1 − decay) steps instead of the last step's (0: off). Steadier results.")
    validate_every: int = ranged(100, 0, 5000, 10, "Draw the validation prompts every N steps (0: start and end).")
    validation_prompts: list[str] = field(default_factory=list)  # empty: the instance and class prompts
    checkpoint_every: int = ranged(250, 0, 5000, 10, "Save a resumable checkpoint every N steps (0: only on cancel).")

    def check(self) -> None:
        if self.method == "erase":
            if not self.erase_prompt.strip():
                raise ValueError("Name the concept to erase, e.g. 'a star'.")
        else:
            self._check_concept(self.instance_prompt, self.identifier, self.class_prompt)
        if self.method in TWO_CONCEPTS and self.instance_prompt_2.strip():
            self._check_concept(self.instance_prompt_2, self.identifier_2, self.class_prompt_2)
            if self.identifier_2.strip() == self.identifier.strip():
                raise ValueError("The two concepts need different identifiers, e.g. 'v1-cross' and 'v2-moon'.")
        elif self.instance_prompt_2.strip():
            raise ValueError("A second concept is trained by Custom Diffusion and DreamBooth only: pick one of them, "
                             "or clear the second instance prompt.")
        if self.method in TOKEN_METHODS and not self.initializer.strip():
            raise ValueError("Give an initializer word the new token starts from, e.g. 'star'.")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8; got {self.resolution}.")

    def _check_concept(self, instance_prompt: str, identifier: str, class_prompt: str) -> None:
        words = plain_text(instance_prompt).replace(",", " ").split()  # "(sks:1.2) dog" has sks
        if self.method in TOKEN_METHODS and identifier != identifier.lower():
            raise ValueError(f"A new token is read in lower case (CLIP lowers prompts): use {identifier.lower()!r}.")
        if not instance_prompt.strip():
            raise ValueError("The instance prompt is empty: describe the subject with the identifier, e.g. "
                             "'a sks dog'.")
        if not identifier.strip() or identifier.strip() not in words:
            raise ValueError(f"The instance prompt must contain the identifier {identifier!r} as a word, e.g. "
                             f"'a {identifier or 'sks'} dog'.")
        if self.prior_preservation and self.method in ("dreambooth", "custom-diffusion") and not class_prompt.strip():
            raise ValueError("Prior preservation needs a class prompt, e.g. 'a dog'.")
        if identifier in plain_text(class_prompt).replace(",", " ").split():
            raise ValueError("The class prompt must not contain the identifier: it describes any member of the "
                             "class.")

    @property
    def prior(self) -> bool:
        """Whether the job trains on class images too (DreamBooth's prior, Custom Diffusion's regularisation)."""
        return self.prior_preservation and self.method in ("dreambooth", "custom-diffusion")

    def concepts(self) -> list[tuple[str, str, str]]:
        """(instance prompt, identifier, class prompt) of each concept the job learns; none for ESD."""
        if self.method == "erase":
            return []
        second = [(self.instance_prompt_2, self.identifier_2, self.class_prompt_2)] \
            if self.method in TWO_CONCEPTS and self.instance_prompt_2.strip() else []
        return [(self.instance_prompt, self.identifier, self.class_prompt), *second]

    def class_prompts(self) -> list[str]:
        """The prompts whose images the frozen model draws for the job: the classes' with the prior, ESD's concept."""
        if self.method == "erase":
            return [self.erase_prompt]
        return [c for _, _, c in self.concepts()] if self.prior else []

    def compared(self) -> str:
        """The prompt shown before and after training: the class (language drift), the token (its start word and
        what it learned), the erased concept."""
        return {"erase": self.erase_prompt, "textual-inversion": self.instance_prompt}.get(self.method,
                                                                                          self.class_prompt)

    def prompts(self) -> list[str]:
        if self.validation_prompts:
            return self.validation_prompts
        own = [p for i, _, c in self.concepts() for p in (i, c)] if self.method != "erase" else [self.erase_prompt]
        return list(dict.fromkeys(p for p in own if p.strip()))


def presets(path: Path = PRESETS) -> dict[str, dict[str, Any]]:
    """Preset name -> the TrainParams fields it sets. Unknown field names are refused (typos would be ignored)."""
    known = {f.name for f in fields(TrainParams)}
    table = yaml.safe_load(path.read_text())
    for name, values in table.items():
        if unknown := set(values) - known:
            raise ValueError(f"Preset {name!r} sets unknown fields: {', '.join(sorted(unknown))}")
    return table


@dataclass
class TrainState:
    """What a job has done so far. The trainer appends; the UI polls it from another thread."""

    step: int = 0
    total: int = 0
    phase: str = "waiting"
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, str, Path]] = field(default_factory=list)  # (step, caption, PNG)
    # The class prompt by the base model (step 0) and by the finished LoRA, same seeds: language drift (Ruiz et al.,
    # Sec. 4.3) at a glance. Set when the job ends; empty when the class prompt is not a validation prompt.
    drift: list[tuple[str, Path]] = field(default_factory=list)  # ("before · seed 0", PNG)


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-γ (Hang et al. 2023, Eq. 9); ones when γ is 0."""
    if gamma <= 0:
        return torch.ones(len(timesteps))
    alpha_bar = scheduler.alphas_cumprod[timesteps.cpu()]
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def train(manager: ModelManager, spec: str, folder: Path, params: TrainParams | None = None,
          images: list | None = None, *, second: list | None = None, resume: bool = False,
          state: TrainState | None = None, should_stop: StopFn | None = None, embeddings: Path | None = None) -> Path:
    """Train `params.method` into `folder` and return it (a library entry). `images` are the concept's, `second` the
    second concept's (Custom Diffusion, or DreamBooth on merged data); ESD needs none. A new token goes to the
    embedding library `embeddings` (by default `<home>/embeddings` beside `<home>/loras/<job>`). With `resume`, the
    job's saved images and settings are used (`params` may only raise `steps`) and training continues from the latest
    checkpoint.
    Raises `Cancelled` (after saving a checkpoint) and `TrainingDiverged`."""
    # 1. Inputs: a new job saves its images and settings in its folder; a resumed one reads them back
    state = state or TrainState()
    state.phase = "preparing"
    embeddings = embeddings or folder.parent.parent / "embeddings"
    if resume:
        spec, saved, concepts = load_job(folder)
        params = TrainParams(**{**saved, "steps": max(saved["steps"], params.steps if params else 0)})
    else:
        params = params or TrainParams()
        concepts = check_concepts([images, second][: len(params.concepts())])
        _check_tokens(manager.base(spec), params, embeddings, folder)
        save_job(folder, spec, asdict(params), concepts)
    pipe = manager.base(spec)
    state.total = params.steps
    unet, text_encoder = pipe.unet, pipe.text_encoder
    device, dtype = unet.device, unet.dtype
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(params.seed)

    # 2. Caches: latents of every augmented view with the index of its prompt, the class images' the same way, and
    # the prompts' embeddings unless something trains them
    erase = params.method == "erase"
    prompts = [p for instance, _, cls in params.concepts() for p in (instance, cls)] or [params.erase_prompt, ""]
    with manager.gpu_lock:
        views = [encode_views(pipe, c, params.resolution, params.crop, params.flip, generator) for c in concepts]
    drawn = [class_images(manager, spec, prompt, params.num_class_images, params.resolution,
                          folder.parent / ".class-images", should_stop) for prompt in params.class_prompts()]
    with manager.gpu_lock:
        classes = [encode_views(pipe, d, params.resolution, "center", False, generator) for d in drawn]
    if erase:  # ESD's data: the frozen model's own images of the concept (prompt 0)
        views, classes = classes, []
    data = Batches(*_indexed(views, 0), *_indexed(classes, 1))
    tokens = NewTokens(pipe, [identifier for _, identifier, _ in params.concepts()],
                       [params.initializer] * len(params.concepts()), getattr(pipe, "job_tokenizers", None)) \
        if params.method in TOKEN_METHODS else None
    text_lora = params.train_text_encoder and params.method == "dreambooth"
    embedded = None
    if not (tokens or text_lora):
        with manager.gpu_lock, torch.no_grad():
            embedded = encode_text(pipe, prompts)  # as Generate reads them (A1111's weights, long prompts)

    # 3. Adapters on the shared models (trainable weights in fp32), optimizer, schedule, checkpoint
    name = "train-" + folder.name.replace(".", "_")  # torch module names cannot hold dots
    models = [] if params.method == "textual-inversion" else [unet, text_encoder] if text_lora else [unet]
    grad_flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
    log = None
    try:
        with manager.gpu_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)  # peft draws A's initial values from the global generator
            if params.method == "custom-diffusion":
                add_kv_deltas(unet, name)
            elif models:
                unet.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                            target_modules=TARGETS["cross" if erase else params.target]),
                                 adapter_name=name)
            if text_lora:
                text_encoder.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                                    target_modules=TEXT_TARGETS), adapter_name=name)
            layers = tuner_layers(*models)
            trainable = [p for m in models for n, p in m.named_parameters() if f".{name}." in n and p.requires_grad]
            for p in trainable:
                p.data = p.data.float()
            deactivate(layers)
        trainable += [tokens.vectors] if tokens else []
        optimizer = torch.optim.AdamW(trainable, lr=params.lr)
        schedule = get_scheduler(params.lr_schedule, optimizer, num_warmup_steps=0,
                                 num_training_steps=params.steps)
        amp = device.type == "cuda" and dtype == torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        job = Trainables(models, name, tokens, WeightAverage(trainable, params.ema_decay) if params.ema_decay else None)
        start = _load_checkpoint(folder, params, job, optimizer, schedule, scaler, generator, state) if resume else 0
        if start == 0:
            _validate(manager, spec, folder, params, layers, job, 0, state)

        # 4. The loop: one step at a time under the lock. The adapter is switched on at the first step and stays on
        # while nobody else lends the model; a lend in between switches it off first (ModelManager.claim).
        state.phase = "training"
        switch = AdapterSwitch(manager, layers, name)
        log = (folder / "log.jsonl").open("a")
        for step in range(start, params.steps):
            if should_stop and should_stop():
                _save_checkpoint(folder, job, optimizer, schedule, scaler, generator, step)
                raise Cancelled(f"Training cancelled at step {step}; Resume continues from there")
            with manager.gpu_lock:
                switch.on()
                with torch.autocast(device.type, dtype=dtype, enabled=amp), job.tokens_on(pipe):
                    context = encode_text(pipe, prompts) if embedded is None else embedded
                    loss = _erase_loss(pipe, noise_scheduler, data, context, params, generator, switch) if erase \
                        else _loss(pipe, noise_scheduler, data, context, params, generator)
                value = loss.item()  # the one host sync a step keeps: the guard below needs it before the update
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"The loss became {value} at step {step + 1}, so training stopped. Lower the learning "
                        f"rate (it is {params.lr:g}) or turn on min-SNR weighting; Resume continues from the "
                        f"last checkpoint.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                if job.average:
                    job.average.update(step)
            state.step = step + 1
            state.losses.append((step + 1, value))
            log.write(json.dumps({"step": step + 1, "loss": value, "lr": schedule.get_last_lr()[0]}) + "\n")
            log.flush()
            if params.checkpoint_every and (step + 1) % params.checkpoint_every == 0:
                _save_checkpoint(folder, job, optimizer, schedule, scaler, generator, step + 1)
            if params.validate_every and (step + 1) % params.validate_every == 0 and step + 1 < params.steps:
                _validate(manager, spec, folder, params, layers, job, step + 1, state)

        # 5. The library entry: the LoRA in both formats (and Custom Diffusion's own), new tokens into the embedding
        # library, metadata, the last validation (the compared prompt before and after, same seeds)
        state.phase = "saving"
        if job.average:
            job.average.copy_to()
        _validate(manager, spec, folder, params, layers, job, params.steps, state)
        state.drift = drift_pairs(folder, params)
        source = manager.resolve(spec)
        record = {"kind": params.method, "base_model": spec, "base_location": source.location,
                  "instance_prompt": params.instance_prompt, "class_prompt": params.class_prompt,
                  "identifier": params.identifier, "steps": params.steps, "params": asdict(params),
                  "trigger_words": tokens.names if tokens else [], "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "final_loss": state.losses[-1][1] if state.losses else None}
        if tokens:
            tokens.save(folder, embeddings, {"base_model": spec, "method": params.method})
        with manager.gpu_lock:
            if params.method == "custom-diffusion":
                save_custom_diffusion(unet, name, folder)
            unet_state = get_peft_model_state_dict(unet, adapter_name=name) if models else {}
            te_state = get_peft_model_state_dict(text_encoder, adapter_name=name) if text_lora else {}
        if models:  # Custom Diffusion's ΔW is B·I at scale 1
            save_lora(folder, unet_state, te_state, 1.0 if params.method == "custom-diffusion" else
                      params.alpha / params.rank, record)
        else:
            (folder / METADATA).write_text(json.dumps(record, indent=2))
        state.phase = "done"
        return folder
    finally:
        if log:
            log.close()
        with manager.gpu_lock:
            manager.unclaim()
            for model in models:
                remove_adapter(model, name)
            for p, flag in grad_flags:
                p.requires_grad_(flag)


@dataclass
class Batches:
    """What a step draws from: the latents of every augmented instance view with the index of its prompt (instance
    prompt k at 2k), and the class images' the same way (class prompt k at 2k + 1); ESD's concept images are its
    instance views."""

    latents: torch.Tensor
    prompt_of: torch.Tensor
    prior: torch.Tensor | None
    prior_of: torch.Tensor | None


def _indexed(groups: list[torch.Tensor], offset: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not groups:
        return None, None
    index = torch.cat([torch.full((len(g),), 2 * k + offset) for k, g in enumerate(groups)])
    return torch.cat(groups), index


@dataclass
class Trainables:
    """What a job trains: an adapter `name` on `models` (none for Textual Inversion) and new tokens (or None)."""

    models: list
    name: str
    tokens: NewTokens | None
    average: "WeightAverage | None" = None

    def tokens_on(self, pipe: Any) -> Any:
        return self.tokens.applied(pipe) if self.tokens else nullcontext()

    def state_dict(self) -> dict[str, torch.Tensor]:
        weights = {f"{i}.{k}": v.contiguous() for i, m in enumerate(self.models)
                   for k, v in get_peft_model_state_dict(m, adapter_name=self.name).items()}
        averaged = {f"ema.{i}": s.contiguous() for i, s in enumerate(self.average.shadow)} if self.average else {}
        return weights | averaged | ({"tokens": self.tokens.vectors.detach().contiguous()} if self.tokens else {})

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        for i, model in enumerate(self.models):
            set_peft_model_state_dict(model, {k.split(".", 1)[1]: v for k, v in weights.items()
                                              if k.startswith(f"{i}.")}, adapter_name=self.name)
        if self.tokens:
            self.tokens.vectors.data.copy_(weights["tokens"])
        if self.average:
            for i, shadow in enumerate(self.average.shadow):
                shadow.copy_(weights[f"ema.{i}"])


class WeightAverage:
    """An exponential moving average of the trained weights, with diffusers' EMAModel warm-up (the decay at step t
    is min(decay, (1 + t) / (10 + t))). A short run with a constant learning rate ends wherever its last noisy steps
    left it: on Shapes the preset's 1,000 steps drew the cross in 8 to 15 of 20 samples over training seeds 0-5. The
    average over its last ~1/(1 − decay) steps is what the last validation draws and the job saves (the validations
    along the way show the current weights); checkpoints carry it, so a resumed job averages on."""

    def __init__(self, weights: list[torch.Tensor], decay: float):
        self.weights, self.decay = weights, decay
        self.shadow = [w.detach().clone() for w in weights]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for shadow, weight in zip(self.shadow, self.weights):
            shadow.lerp_(weight.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        for shadow, weight in zip(self.shadow, self.weights):
            weight.copy_(shadow)


def _check_tokens(pipe: Any, params: TrainParams, embeddings: Path, folder: Path) -> None:
    """New tokens must be new to the tokenizer and not yet in the owner's embedding library (unless this job made
    them, as a job run again after an interrupted start would)."""
    if params.method not in TOKEN_METHODS:
        return
    for _, identifier, _ in params.concepts():
        token = check_token(identifier, pipe.tokenizer, 1)
        made = embeddings / f"{token}.json"
        if made.is_file() and json.loads(made.read_text()).get("job") != folder.name:
            raise ValueError(f"You already have an embedding named {token}: choose another token.")


class AdapterSwitch:
    """The job's adapter on the shared model, switched on for its steps and left on between them; the next lend of
    the model by anyone else switches it off first (ModelManager.claim), so other jobs still see the base model."""

    def __init__(self, manager: ModelManager, layers: list, name: str):
        self.manager, self.layers, self.name, self.enabled = manager, layers, name, False

    def on(self) -> None:
        """Call holding `gpu_lock`."""
        if not self.enabled:
            activate(self.layers, [self.name])
            self.enabled = True
            self.manager.claim(self.off)

    def off(self) -> None:
        deactivate(self.layers)
        self.enabled = False


def _noised(scheduler: DDPMScheduler, x0: torch.Tensor, generator: torch.Generator,
            device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, the training target: ε, or v for a v-prediction model) for clean latents `x0`."""
    noise = torch.randn(x0.shape, generator=generator).to(device, dtype)
    t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
    noisy = scheduler.add_noise(x0, noise, t.to(device))
    target = scheduler.get_velocity(x0, noise, t.to(device)) \
        if scheduler.config.prediction_type == "v_prediction" else noise
    return noisy, t, target


def _loss(pipe: Any, scheduler: DDPMScheduler, data: Batches, context: torch.Tensor, params: TrainParams,
          generator: torch.Generator) -> torch.Tensor:
    """The denoising loss of one batch: instance views, plus as many class images with the prior (Eq. 2).
    `context` holds the embeddings of every prompt the data indexes."""
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    picks = torch.randint(len(data.latents), (params.batch,), generator=generator)
    x0, index = data.latents[picks.to(data.latents.device)], data.prompt_of[picks]
    if data.prior is not None:
        picks = torch.randint(len(data.prior), (params.batch,), generator=generator)
        x0, index = torch.cat([x0, data.prior[picks.to(data.prior.device)]]), torch.cat([index, data.prior_of[picks]])
    noisy, t, target = _noised(scheduler, x0, generator, device, dtype)
    pred = unet(noisy, t.to(device), encoder_hidden_states=context[index.to(device)]).sample
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
    per_sample = per_sample * min_snr_weights(scheduler, t, params.min_snr_gamma).to(device)
    loss = per_sample[: params.batch].mean()
    if data.prior is not None:
        loss = loss + params.prior_loss_weight * per_sample[params.batch :].mean()
    return loss


def _erase_loss(pipe: Any, scheduler: DDPMScheduler, data: Batches, context: torch.Tensor, params: TrainParams,
                generator: torch.Generator, switch: "AdapterSwitch") -> torch.Tensor:
    """ESD-x (studio/erase.py): the adapter's prediction for the concept, regressed on the frozen model's
    prediction guided away from it. `context` is (concept, empty prompt)."""
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    picks = torch.randint(len(data.latents), (params.batch,), generator=generator)
    noisy, t, _ = _noised(scheduler, data.latents[picks.to(data.latents.device)], generator, device, dtype)
    concept, empty = (c[None].expand(params.batch, -1, -1) for c in context)
    switch.off()  # the frozen model θ*
    target = esd_target(unet, noisy, t.to(device), concept, empty, params.negative_guidance)
    switch.on()
    pred = unet(noisy, t.to(device), encoder_hidden_states=concept).sample
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, t, params.min_snr_gamma).to(device)).mean()


def _validate(manager: ModelManager, spec: str, folder: Path, params: TrainParams, layers: list, job: Trainables,
              step: int, state: TrainState) -> None:
    """Draw the validation prompts from fixed seeds; at step 0 with the adapter off (the base model, and new tokens
    at their initial word)."""
    out = folder / "validation"
    out.mkdir(parents=True, exist_ok=True)
    with manager.lend(spec) as pipe, job.tokens_on(pipe):
        pipe.set_progress_bar_config(disable=True)
        if step:
            activate(layers, [job.name])
        try:
            for p, prompt in enumerate(params.prompts()):
                images = txt2img(pipe, prompt, seed=0, n=VALIDATION_SEEDS, steps=VALIDATION_STEPS,
                                 width=params.resolution, height=params.resolution)
                for seed, image in enumerate(images):
                    path = out / f"step-{step:06d}-p{p}-s{seed}.png"
                    # The job's settings travel in every validation image: drop one on Restore to train it again.
                    settings = {"prompt": prompt, **asdict(params), "name": folder.name,
                                "validation_prompts": "\n".join(params.validation_prompts)}
                    save_png(image, Recipe("train", settings, model=spec, model_hash=manager.model_hash(spec),
                                           extra={"step": step, "seed": seed}), path)
                    state.validation.append((step, f"step {step} · {prompt} · seed {seed}", path))
        finally:
            deactivate(layers)


def _save_checkpoint(folder: Path, job: Trainables, optimizer: Any, schedule: Any, scaler: Any,
                     generator: torch.Generator, step: int) -> None:
    """Trained weights, optimizer, schedule and RNG at `step`; only the newest checkpoint is kept."""
    out = folder / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    save_file(job.state_dict(), out / f"step-{step:06d}.safetensors")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "rng": generator.get_state()}, out / f"step-{step:06d}.pt")
    for old in out.glob("step-*"):
        if not old.stem.endswith(f"{step:06d}"):
            old.unlink()


def _load_checkpoint(folder: Path, params: TrainParams, job: Trainables, optimizer: Any, schedule: Any,
                     scaler: Any, generator: torch.Generator, state: TrainState) -> int:
    """Restore the newest checkpoint and the loss log up to it; 0 if there is none."""
    found = sorted((folder / "checkpoints").glob("step-*.pt"))
    if not found:
        return 0
    saved = torch.load(found[-1], weights_only=True)
    job.load_state_dict(load_file(found[-1].with_suffix(".safetensors")))
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    scaler.load_state_dict(saved["scaler"])
    generator.set_state(saved["rng"])
    step = saved["step"]
    log = folder / "log.jsonl"
    rows = [r for r in _log_rows(folder) if r["step"] <= step]  # steps after the checkpoint are done again
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _read_progress(folder, params, state, upto=step)
    return step


def _log_rows(folder: Path) -> list[dict]:
    log = folder / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def _read_progress(folder: Path, params: TrainParams, state: TrainState, upto: int) -> None:
    """The losses and validation images on disk up to step `upto`, into `state`."""
    state.losses[:] = [(r["step"], r["loss"]) for r in _log_rows(folder) if r["step"] <= upto]
    prompts = params.prompts()
    state.validation[:] = [(int(p.name[5:11]), f"step {int(p.name[5:11])} · {prompts[int(p.name[13:-7])]} · seed "
                                               f"{p.stem[-1]}", p)
                           for p in sorted((folder / "validation").glob("step-*.png")) if int(p.name[5:11]) <= upto]
    state.step = max([s for s, _ in state.losses], default=0)
    state.total = params.steps


def drift_pairs(folder: Path, params: TrainParams) -> list[tuple[str, Path]]:
    """The compared prompt (`TrainParams.compared`: the class prompt for language drift, Ruiz et al. Sec. 4.3) at
    step 0 and by the finished job, same seeds; none when it is not a validation prompt."""
    if params.compared() not in params.prompts():
        return []
    p = params.prompts().index(params.compared())
    return [(f"{'after' if step else 'before'} · seed {seed}",
             folder / "validation" / f"step-{step:06d}-p{p}-s{seed}.png")
            for step in (0, params.steps) for seed in range(VALIDATION_SEEDS)]


def trained(root: Path) -> dict[str, str]:
    """Finished jobs under `root` and what each made (`TrainParams.method`; "lora" for one made elsewhere)."""
    done = [p / METADATA for p in root.iterdir() if (p / METADATA).is_file()] if root.is_dir() else []
    return {m.parent.name: json.loads(m.read_text()).get("kind", "lora") for m in done}


def read_state(folder: Path) -> TrainState:
    """A job's state from its folder alone (for a job trained in another process, e.g. by ZeroGPU calls)."""
    _, saved, _ = load_job(folder)
    params, state = TrainParams(**saved), TrainState()
    _read_progress(folder, params, state, upto=params.steps)
    done = (folder / METADATA).is_file() and json.loads((folder / METADATA).read_text())["steps"] == params.steps
    state.phase = "done" if done else "paused" if state.step else "waiting"
    state.drift = drift_pairs(folder, params) if done else []
    return state


def train_until(manager: ModelManager, folder: Path, until: int, *, should_stop: StopFn | None = None) -> TrainState:
    """Continue a saved job (its folder from `save_job`) up to step `until`, then save a checkpoint: one share of a
    job that runs as several calls (a ZeroGPU call each). Returns the state on disk. Raises `Cancelled` only for
    `should_stop`."""
    spec = load_job(folder)[0]
    state = TrainState()
    try:
        train(manager, spec, folder, resume=True, state=state,
              should_stop=lambda: state.step >= until or bool(should_stop and should_stop()))
    except Cancelled:
        if state.step < until:
            raise
    return read_state(folder)


def identifier_report(tokenizer: Any, identifier: str) -> tuple[list[str], list[str]]:
    """How the tokenizer splits the identifier, and warnings: DreamBooth wants one rare token (Sec. 3.2)."""
    pieces = tokenizer.tokenize(identifier)
    ids = tokenizer.convert_tokens_to_ids(pieces)
    warnings = []
    if len(pieces) > 1:
        warnings.append(f"'{identifier}' splits into {len(pieces)} tokens ({' · '.join(pieces)}): the model must "
                        "learn a combination. A single rare token binds faster.")
    # CLIP's BPE ids follow merge order, roughly frequency: "dog" is #1,929, "sks" #48,136 of 49,408.
    elif ids[0] < COMMON_BELOW:
        warnings.append(f"'{identifier}' is a common token (#{ids[0]:,}): the model already means something by it, "
                        "which training must overwrite. Prefer a rare one such as 'sks' or 'ohwx'.")
    return [f"{p} (#{i:,})" for p, i in zip(pieces, ids)], warnings


class TrainJob:
    """`train` in a background thread, with a cancel flag and an outcome a UI can poll. Other tabs keep working
    meanwhile: the job takes the model manager's lock one step at a time."""

    def __init__(self, manager: ModelManager, spec: str, folder: Path, params: TrainParams | None = None,
                 images: list | None = None, *, second: list | None = None, resume: bool = False):
        self.folder, self.state, self.error = folder, TrainState(), ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(manager, spec, params, images, second, resume),
                                        daemon=True, name=f"train-{folder.name}")

    def _run(self, manager: ModelManager, spec: str, params: TrainParams | None, images: list | None,
             second: list | None, resume: bool) -> None:
        try:
            train(manager, spec, self.folder, params, images, second=second, resume=resume, state=self.state,
                  should_stop=self._stop.is_set)
        except Cancelled as stop:
            self.state.phase, self.error = "cancelled", str(stop)
        except Exception as error:  # the thread has no caller: keep the message for the UI, the trace for the log
            logging.getLogger(__name__).exception("training %s failed", self.folder.name)
            self.state.phase, self.error = "failed", str(error)

    def start(self) -> "TrainJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> "TrainJob":
        self._thread.join(timeout)
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
