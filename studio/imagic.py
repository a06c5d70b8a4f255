"""Imagic (Kawar, Zada, Lang, Tov, Chang, Dekel, Mosseri & Irani, CVPR 2023): edit a real image by a target text,
with a model fine-tuned on that one image.

Sec. 3.1, three stages, all on the denoising loss L(x, e, θ) = E_{t,ε} ||ε − ε_θ(x_t, t, e)||² (the v form for a
v-prediction model):

- **(A) Text embedding optimisation** (Eq. 2): start from the target text's embedding e_tgt and optimise it, the
  model frozen, towards the image: e_opt = argmin_e L(x, e, θ). A few hundred steps at a high learning rate leave
  e_opt near e_tgt, in a region that describes the image.
- **(B) Model fine-tuning** (Eq. 3): with e_opt frozen, fine-tune the model on the same loss, so that e_opt
  reproduces the image exactly. The paper tunes every weight; here a LoRA (Hu et al. 2022) of the attention blocks
  does, through the LoRA trainer's machinery (`studio/lora.py`): the shared model's weights never change, the
  adapter lives on the shared UNet for the call only and is removed in `finally`, and its trained weights are kept
  in the result.
- **(C) Interpolation** (Eq. 4): generate with the fine-tuned model from ē = η·e_tgt + (1 − η)·e_opt. η = 0 redraws
  the image, η = 1 follows the target text; in between the edit appears while the image's look stays. A new η
  needs stage (C) only: `imagic_generate` puts the kept adapter back for one generation.

Stage C samples with DDIM from a seeded start (the paper samples from noise, not from an inversion).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image

from studio.inversion import DDIMSchedule, decode, denoise, prepare_image, ticker
from studio.jobs import PreviewFn, StepFn, StopFn
from studio.lora import TARGETS, activate, remove_adapter, tuner_layers
from studio.params import Params, ranged
from studio.prompts import encode_text
from studio.sampling import check_prompt, encode_image, pick_seed, seed_field

ADAPTER = "imagic"  # the fine-tuning's adapter name on the shared UNet, for the length of a call


@dataclass
class ImagicParams(Params):
    """One Imagic edit. Paper names: `embedding_steps` and `embedding_lr` are stage A's optimisation (diffusers'
    community pipeline: `text_embedding_optimization_steps`, `embedding_learning_rate`), `finetune_steps` and
    `finetune_lr` stage B's (`model_fine_tuning_optimization_steps`, `diffusion_model_learning_rate`; here a LoRA of
    rank `rank`), `eta` is η of Eq. 4 (`alpha` in the community pipeline), `steps` and `cfg` stage C's sampling."""

    target_prompt: str = ""
    embedding_steps: int = ranged(500, 0, 5000, 10, "Stage A: steps that optimise the target text's embedding "
                                                   "towards the image (model frozen).")
    embedding_lr: float = ranged(1e-3, 1e-5, 1e-1, 1e-5, "Stage A's learning rate (Adam).")
    finetune_steps: int = ranged(1000, 0, 5000, 10, "Stage B: steps that fine-tune a LoRA so the optimised "
                                                   "embedding redraws the image.")
    finetune_lr: float = ranged(1e-4, 1e-6, 1e-2, 1e-6, "Stage B's learning rate (Adam, LoRA weights only).")
    rank: int = ranged(4, 1, 64, 1, "Rank of stage B's LoRA.")
    eta: float = ranged(0.7, 0, 1.5, 0.05, "η: 0 redraws the image, 1 is the target text; the paper edits at "
                                           "about 0.6–0.8. Changing it re-runs stage C only.")
    steps: int = ranged(50, 5, 150, 1, "DDIM steps of stage C's sampling.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Guidance of stage C's sampling.")
    seed: int = seed_field(0, "Seed of the optimisation's noise and of stage C's start; -1 picks a random one.")
    # A shared studio's limits (studio/limits.py): stages A and B are optimisation steps, as a LoRA's training.
    LIMITS: ClassVar[dict[str, str]] = {"embedding_steps": "max_train_steps", "finetune_steps": "max_train_steps"}

    def check(self) -> None:
        if not self.target_prompt.strip():
            raise ValueError("Write the target prompt: Imagic edits the image towards that text (the caption is "
                             "not used).")


@dataclass
class ImagicTuned:
    """What stages A and B produce and stage C reuses for any η: the two embeddings and the LoRA's weights (CPU)."""

    e_tgt: torch.Tensor  # (1, 77, d) fp32
    e_opt: torch.Tensor
    lora: dict[str, torch.Tensor]
    rank: int
    size: tuple[int, int]  # (width, height) of the image as tuned
    seed: int
    losses: list[tuple[str, int, float]] = field(default_factory=list)  # (stage, step, loss)


@dataclass
class ImagicResult:
    image: Image.Image  # at params.eta
    tuned: ImagicTuned
    seed: int
    warnings: list[str]


def denoising_loss(unet, scheduler: DDPMScheduler, z0: torch.Tensor, context: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """L(x, e, θ) at one random timestep and noise: the UNet's prediction against ε (or v)."""
    noise = torch.randn(z0.shape, generator=generator).to(z0.device)
    t = torch.randint(scheduler.config.num_train_timesteps, (1,), generator=generator).to(z0.device)
    noisy = scheduler.add_noise(z0, noise, t)
    target = scheduler.get_velocity(z0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype)).sample
    return F.mse_loss(pred.float(), target.float())


@contextmanager
def frozen(unet) -> Iterator[None]:
    """Every UNet parameter without gradients for the block; their requires_grad flags as before after it."""
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def tuned_unet(pipe: StableDiffusionPipeline, rank: int, lora: dict[str, torch.Tensor] | None = None,
               seed: int = 0) -> Iterator[list[torch.nn.Parameter]]:
    """The shared UNet with an Imagic LoRA added to the LoRAs the job lent it with (fresh, or with `lora`'s
    weights); yields the LoRA's parameters (fp32, the only ones with gradients). In `finally` the adapter is
    removed, and every adapter's activation and every parameter's requires_grad are as before."""
    unet = pipe.unet
    before = [(layer, list(layer.active_adapters), not layer.disable_adapters) for layer in tuner_layers(unet)]
    lent = [name for _, active, enabled in before if enabled for name in active]
    with frozen(unet):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # peft draws A's initial values from the global generator
                unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS["attention"]),
                                 adapter_name=ADAPTER)
            if lora is not None:
                set_peft_model_state_dict(unet, lora, adapter_name=ADAPTER)
            activate(tuner_layers(unet), [*dict.fromkeys(lent), ADAPTER])
            trainable = [p for n, p in unet.named_parameters() if f".{ADAPTER}." in n]
            for p in unet.parameters():
                p.requires_grad_(False)
            for p in trainable:
                p.data = p.data.float()
                p.requires_grad_(True)
            yield trainable
        finally:
            remove_adapter(unet, ADAPTER)
            for layer, active, enabled in before:
                layer.set_adapter(active)
                layer.enable_adapters(enabled)


def optimise(pipe: StableDiffusionPipeline, parameters: list[torch.Tensor], lr: float, steps: int, loss_fn,
             stage: str, tick, losses: list) -> None:
    """Adam on `parameters` for `steps` steps of `loss_fn()`; on a CUDA fp16 model the loss runs under autocast with
    a gradient scaler, as the LoRA trainer's does."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    amp = device.type == "cuda" and dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for step in range(steps):
        tick()
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = loss_fn()
        if not math.isfinite(loss.item()):
            raise ValueError(f"Imagic's {stage} loss became {loss.item()} at step {step + 1}: lower its learning "
                             "rate.")
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append((stage, step + 1, loss.item()))


def run_imagic(pipe: StableDiffusionPipeline, image: Image.Image, params: ImagicParams, *,
               on_step: StepFn | None = None, should_stop: StopFn | None = None,
               on_preview: PreviewFn | None = None) -> ImagicResult:
    """Stages A, B and C of Sec. 3.1. Progress counts A's and B's optimisation steps, then C's sampling steps.
    `pipe` comes from `ModelManager.lend`; the shared UNet is as it was when this returns or raises."""
    # 1. Inputs: the image's latent, the target text's embedding
    warnings: list[str] = []
    image = prepare_image(pipe, image, warnings)
    if warning := check_prompt(pipe.tokenizer, params.target_prompt):
        warnings.append(warning)
    seed = pick_seed(params.seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    tick = ticker(params.embedding_steps + params.finetune_steps + params.steps, on_step, should_stop, "Imagic")
    with torch.no_grad():
        z0 = encode_image(pipe, image).float()
        e_tgt = encode_text(pipe, [params.target_prompt], chunks=False).float()  # one chunk: Stage A's e
    losses: list[tuple[str, int, float]] = []
    e_opt = e_tgt.clone().requires_grad_(True)
    with frozen(pipe.unet):
        # 2. Stage A: optimise the embedding, the model frozen
        optimise(pipe, [e_opt], params.embedding_lr, params.embedding_steps,
                 lambda: denoising_loss(pipe.unet, scheduler, z0, e_opt, generator), "embedding", tick, losses)
        e_opt = e_opt.detach()
        # 3. Stage B: fine-tune a LoRA with e_opt frozen; 4. Stage C at η
        with tuned_unet(pipe, params.rank, seed=seed) as trainable:
            optimise(pipe, trainable, params.finetune_lr, params.finetune_steps,
                     lambda: denoising_loss(pipe.unet, scheduler, z0, e_opt, generator), "fine-tuning", tick, losses)
            lora = {k: v.detach().cpu().clone()
                    for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER).items()}
            tuned = ImagicTuned(e_tgt.cpu(), e_opt.cpu(), lora, params.rank, image.size, seed, losses)
            result = _sample(pipe, tuned, params.eta, params.steps, params.cfg, seed, tick, should_stop, on_preview)
    return ImagicResult(result, tuned, seed, warnings)


def imagic_generate(pipe: StableDiffusionPipeline, tuned: ImagicTuned, eta: float, *, steps: int = 50,
                    cfg: float = 7.5, seed: int | None = None, on_step: StepFn | None = None,
                    should_stop: StopFn | None = None, on_preview: PreviewFn | None = None) -> Image.Image:
    """Stage C alone, at another η: the kept LoRA goes back on the shared UNet for this generation only."""
    ImagicParams(target_prompt="-", eta=eta, steps=steps, cfg=cfg)  # the same ranges as a full run
    tick = ticker(steps, on_step, should_stop, "Imagic")
    with tuned_unet(pipe, tuned.rank, tuned.lora):
        return _sample(pipe, tuned, eta, steps, cfg, tuned.seed if seed is None else seed, tick, should_stop,
                       on_preview)


def _sample(pipe: StableDiffusionPipeline, tuned: ImagicTuned, eta: float, steps: int, cfg: float, seed: int,
            tick, should_stop: StopFn | None, on_preview: PreviewFn | None = None) -> Image.Image:
    """Eq. 4's ē = η·e_tgt + (1 − η)·e_opt, sampled with DDIM from the seed's noise."""
    device = pipe.unet.device
    embedding = (eta * tuned.e_tgt + (1 - eta) * tuned.e_opt).to(device, pipe.unet.dtype)
    with torch.no_grad():
        context = embedding
        if cfg > 1:
            uncond = encode_text(pipe, [""])
            context = torch.cat([uncond, embedding])
        f, (width, height) = pipe.vae_scale_factor, tuned.size
        shape = (1, pipe.unet.config.in_channels, height // f, width // f)
        x_T = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)).to(device)
        z = denoise(pipe, DDIMSchedule(pipe, steps), x_T, context, cfg, on_step=lambda i, n: tick(),
                    should_stop=should_stop, on_preview=on_preview, what="Imagic")
    return decode(pipe, z)
