"""DreamBooth with LoRA: teach the shared base model a subject from 3-20 images, in the background.

- DreamBooth (Ruiz et al., CVPR 2023) binds a rare identifier ("sks") to the subject: the instance prompt is
  "a sks dog". Its prior-preservation loss (Eq. 2) adds λ·w_t'·||x̂(α_t' x_pr + σ_t' ε', c_pr) - x_pr||² over
  images the frozen model drew for the class prompt ("a dog"), so the class keeps its meaning (no language drift).
- LoRA (Hu et al., ICLR 2022): only a rank-r update (α/r)·B·A of the attention projections is trained.
  Custom Diffusion (Kumari et al., CVPR 2023) showed that the cross-attention K/V projections alone, the only
  weights that read the text, suffice for a new concept: target "kv".
- min-SNR-γ (Hang et al., ICCV 2023): weight each timestep's loss by min(SNR, γ)/SNR (ε-prediction) or
  min(SNR, γ)/(SNR+1) (v-prediction), so the many easy low-noise steps stop dominating.

The base model stays frozen and shared with the other tabs: every optimisation step runs under the model manager's
lock with this job's adapter enabled, and disables it before the lock is released (see studio/lora.py). Latents of
every augmented view and the prompt embeddings are computed once. A job lives in one folder, so it can resume after a
cancel, a crash or a restart; when it finishes, the same folder is a LoRA library entry.
"""

import json
import logging
import math
import threading
import time
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

from studio.jobs import Cancelled, StopFn
from studio.lora import METADATA, TARGETS, activate, deactivate, remove_adapter, save_lora, tuner_layers
from studio.models import ModelManager
from studio.params import Params, choice, ranged
from studio.pnginfo import Recipe, save_png
from studio.prompts import encode_text, plain_text
from studio.sampling import seed_field, txt2img
from studio.train_data import check_images, class_images, encode_views, load_job, save_job

PRESETS = Path(__file__).resolve().parents[1] / "presets" / "train.yaml"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TARGET_LABELS = {"attention": "attention blocks (LoRA, kohya's layers)",
                 "kv": "cross-attention K/V only (Custom Diffusion style)"}
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

    instance_prompt: str = "a photo of sks dog"
    identifier: str = "sks"
    class_prompt: str = "a photo of dog"
    prior_preservation: bool = False
    num_class_images: int = ranged(50, 1, 500, 1, "Images of the class prompt the base model draws (cached).")
    prior_loss_weight: float = ranged(1.0, 0, 2, 0.05, "λ of DreamBooth Eq. 2: weight of the class images' loss.")
    rank: int = ranged(4, 1, 128, 1, "r: rank of each LoRA update; larger learns more, files grow.")
    alpha: float = ranged(4, 1, 128, 1, "α: the update is scaled by α/r.")
    lr: float = ranged(1e-4, 1e-6, 1e-2, 1e-6, "Learning rate of AdamW.")
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
    validate_every: int = ranged(100, 0, 5000, 10, "Draw the validation prompts every N steps (0: start and end).")
    validation_prompts: list[str] = field(default_factory=list)  # empty: the instance and class prompts
    checkpoint_every: int = ranged(250, 0, 5000, 10, "Save a resumable checkpoint every N steps (0: only on cancel).")

    def check(self) -> None:
        words = plain_text(self.instance_prompt).replace(",", " ").split()  # "(sks:1.2) dog" has sks
        if not self.instance_prompt.strip():
            raise ValueError("The instance prompt is empty: describe the subject with the identifier, e.g. "
                             "'a sks dog'.")
        if not self.identifier.strip() or self.identifier.strip() not in words:
            raise ValueError(f"The instance prompt must contain the identifier {self.identifier!r} as a word, e.g. "
                             f"'a {self.identifier or 'sks'} dog'.")
        if self.prior_preservation and not self.class_prompt.strip():
            raise ValueError("Prior preservation needs a class prompt, e.g. 'a dog'.")
        if self.identifier in plain_text(self.class_prompt).replace(",", " ").split():
            raise ValueError("The class prompt must not contain the identifier: it describes any member of the "
                             "class.")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8; got {self.resolution}.")

    def prompts(self) -> list[str]:
        return self.validation_prompts or [p for p in (self.instance_prompt, self.class_prompt) if p.strip()]


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
          images: list | None = None, *, resume: bool = False, state: TrainState | None = None,
          should_stop: StopFn | None = None) -> Path:
    """Train a LoRA into `folder` and return it (a library entry). With `resume`, the job's saved images and
    settings are used (`params` may only raise `steps`) and training continues from the latest checkpoint.
    Raises `Cancelled` (after saving a checkpoint) and `TrainingDiverged`."""
    # 1. Inputs: a new job saves its images and settings in its folder; a resumed one reads them back
    state = state or TrainState()
    state.phase = "preparing"
    if resume:
        spec, saved, images = load_job(folder)
        params = TrainParams(**{**saved, "steps": max(saved["steps"], params.steps if params else 0)})
    else:
        params = params or TrainParams()
        images = check_images(images or [])
        save_job(folder, spec, asdict(params), images)
    state.total = params.steps
    pipe = manager.base(spec)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    device, dtype = unet.device, unet.dtype
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(params.seed)

    # 2. Caches: latents of every augmented view, prompt tokens and embeddings, the class images' latents
    with manager.gpu_lock:
        latents = encode_views(pipe, images, params.resolution, params.crop, params.flip, generator)
        # As Generate reads them (A1111's weights, long prompts in chunks), as kohya's weighted captions train
        prompts = [params.instance_prompt, params.class_prompt]
        with torch.no_grad():
            embeddings = encode_text(pipe, prompts)
    prior = None
    if params.prior_preservation:
        drawn = class_images(manager, spec, params.class_prompt, params.num_class_images, params.resolution,
                             folder.parent / ".class-images", should_stop)
        with manager.gpu_lock:
            prior = encode_views(pipe, drawn, params.resolution, "center", False, generator)

    # 3. Adapters on the shared models (trainable weights in fp32), optimizer, schedule, checkpoint
    name = "train-" + folder.name.replace(".", "_")  # torch module names cannot hold dots
    models = [unet, text_encoder] if params.train_text_encoder else [unet]
    grad_flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
    log = None
    try:
        with manager.gpu_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)  # peft draws A's initial values from the global generator
            unet.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                        target_modules=TARGETS[params.target]), adapter_name=name)
            if params.train_text_encoder:
                text_encoder.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                                    target_modules=TEXT_TARGETS), adapter_name=name)
            layers = tuner_layers(*models)
            trainable = [p for m in models for n, p in m.named_parameters() if f".{name}." in n]
            for p in trainable:
                p.data = p.data.float()
            deactivate(layers)
        optimizer = torch.optim.AdamW(trainable, lr=params.lr)
        schedule = get_scheduler(params.lr_schedule, optimizer, num_warmup_steps=0,
                                 num_training_steps=params.steps)
        amp = device.type == "cuda" and dtype == torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        start = _load_checkpoint(folder, params, models, name, optimizer, schedule, scaler, generator,
                                 state) if resume else 0
        if start == 0:
            _validate(manager, spec, folder, params, layers, name, 0, state)

        # 4. The loop: one step at a time under the lock. The adapter is switched on at the first step and stays on
        # while nobody else lends the model; a lend in between switches it off first (ModelManager.claim).
        state.phase = "training"
        switch = AdapterSwitch(manager, layers, name)
        log = (folder / "log.jsonl").open("a")
        for step in range(start, params.steps):
            if should_stop and should_stop():
                _save_checkpoint(folder, models, name, optimizer, schedule, scaler, generator, step)
                raise Cancelled(f"Training cancelled at step {step}; Resume continues from there")
            with manager.gpu_lock:
                switch.on()
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    loss = _loss(pipe, noise_scheduler, latents, prior, embeddings, prompts, params, generator)
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
            state.step = step + 1
            state.losses.append((step + 1, value))
            log.write(json.dumps({"step": step + 1, "loss": value, "lr": schedule.get_last_lr()[0]}) + "\n")
            log.flush()
            if params.checkpoint_every and (step + 1) % params.checkpoint_every == 0:
                _save_checkpoint(folder, models, name, optimizer, schedule, scaler, generator, step + 1)
            if params.validate_every and (step + 1) % params.validate_every == 0 and step + 1 < params.steps:
                _validate(manager, spec, folder, params, layers, name, step + 1, state)

        # 5. The library entry: both formats, metadata, the last validation (language drift: class prompt before
        # and after, same seeds)
        state.phase = "saving"
        _validate(manager, spec, folder, params, layers, name, params.steps, state)
        state.drift = drift_pairs(folder, params)
        with manager.gpu_lock:
            unet_state = get_peft_model_state_dict(unet, adapter_name=name)
            te_state = get_peft_model_state_dict(text_encoder, adapter_name=name) if params.train_text_encoder else {}
        source = manager.resolve(spec)
        save_lora(folder, unet_state, te_state, params.alpha / params.rank, {
            "base_model": spec, "base_location": source.location, "instance_prompt": params.instance_prompt,
            "class_prompt": params.class_prompt, "identifier": params.identifier, "steps": params.steps,
            "params": asdict(params), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "final_loss": state.losses[-1][1] if state.losses else None})
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


def _loss(pipe: Any, scheduler: DDPMScheduler, latents: torch.Tensor, prior: torch.Tensor | None,
          embeddings: torch.Tensor, prompts: list[str], params: TrainParams,
          generator: torch.Generator) -> torch.Tensor:
    """The denoising loss of one batch: instance views, plus as many class images with the prior (Eq. 2).
    `embeddings` are `prompts`' (instance, class), encoded again here when the text encoder trains."""
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    picks = torch.randint(len(latents), (params.batch,), generator=generator)
    x0, prompt_index = latents[picks.to(latents.device)], [0] * params.batch
    if prior is not None:
        x0 = torch.cat([x0, prior[torch.randint(len(prior), (params.batch,), generator=generator).to(prior.device)]])
        prompt_index += [1] * params.batch
    noise = torch.randn(x0.shape, generator=generator).to(device, dtype)
    t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
    noisy = scheduler.add_noise(x0, noise, t.to(device))
    target = scheduler.get_velocity(x0, noise, t.to(device)) \
        if scheduler.config.prediction_type == "v_prediction" else noise
    index = torch.tensor(prompt_index, device=device)
    context = (encode_text(pipe, prompts) if params.train_text_encoder else embeddings)[index]
    pred = unet(noisy, t.to(device), encoder_hidden_states=context).sample
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean((1, 2, 3))
    per_sample = per_sample * min_snr_weights(scheduler, t, params.min_snr_gamma).to(device)
    loss = per_sample[: params.batch].mean()
    if prior is not None:
        loss = loss + params.prior_loss_weight * per_sample[params.batch :].mean()
    return loss


def _validate(manager: ModelManager, spec: str, folder: Path, params: TrainParams, layers: list, name: str,
              step: int, state: TrainState) -> None:
    """Draw the validation prompts from fixed seeds; at step 0 with the adapter off (the base model)."""
    out = folder / "validation"
    out.mkdir(parents=True, exist_ok=True)
    with manager.lend(spec) as pipe:
        pipe.set_progress_bar_config(disable=True)
        if step:
            activate(layers, [name])
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


def _save_checkpoint(folder: Path, models: list, name: str, optimizer: Any, schedule: Any, scaler: Any,
                     generator: torch.Generator, step: int) -> None:
    """Adapter weights, optimizer, schedule and RNG at `step`; only the newest checkpoint is kept."""
    out = folder / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    weights = {f"{i}.{k}": v.contiguous() for i, m in enumerate(models)
               for k, v in get_peft_model_state_dict(m, adapter_name=name).items()}
    save_file(weights, out / f"step-{step:06d}.safetensors")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "rng": generator.get_state()}, out / f"step-{step:06d}.pt")
    for old in out.glob("step-*"):
        if not old.stem.endswith(f"{step:06d}"):
            old.unlink()


def _load_checkpoint(folder: Path, params: TrainParams, models: list, name: str, optimizer: Any, schedule: Any,
                     scaler: Any, generator: torch.Generator, state: TrainState) -> int:
    """Restore the newest checkpoint and the loss log up to it; 0 if there is none."""
    found = sorted((folder / "checkpoints").glob("step-*.pt"))
    if not found:
        return 0
    saved = torch.load(found[-1], weights_only=True)
    weights = load_file(found[-1].with_suffix(".safetensors"))
    for i, model in enumerate(models):
        set_peft_model_state_dict(model, {k.split(".", 1)[1]: v for k, v in weights.items()
                                          if k.startswith(f"{i}.")}, adapter_name=name)
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
    """The class prompt by the base model (step 0) and by the finished LoRA, same seeds (Ruiz et al., Sec. 4.3);
    none when the class prompt is not a validation prompt."""
    if params.class_prompt not in params.prompts():
        return []
    p = params.prompts().index(params.class_prompt)
    return [(f"{'after' if step else 'before'} · seed {seed}",
             folder / "validation" / f"step-{step:06d}-p{p}-s{seed}.png")
            for step in (0, params.steps) for seed in range(VALIDATION_SEEDS)]


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
                 images: list | None = None, *, resume: bool = False):
        self.folder, self.state, self.error = folder, TrainState(), ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(manager, spec, params, images, resume), daemon=True,
                                        name=f"train-{folder.name}")

    def _run(self, manager: ModelManager, spec: str, params: TrainParams | None, images: list | None,
             resume: bool) -> None:
        try:
            train(manager, spec, self.folder, params, images, resume=resume, state=self.state,
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
