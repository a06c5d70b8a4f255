"""DDIB, Dual Diffusion Implicit Bridges (Su, Song, Meng & Ermon, ICLR 2023): translate an image between two domains
through the noise space they share.

Algorithm 1 of the paper: encode the source image x^(s) with the *source* model's probability-flow ODE (DDIM
inversion, Song et al. 2021) to its latent x_T, then decode x_T with the *target* model's ODE. The two models are
trained separately; only x_T connects them. Here a domain is a prompt of one text-conditional model (the paper's
class-conditional experiments, with the class as text), or a model of its own when one is chosen for the target:
another base model with the same latent space, or this model with a LoRA (the paper's two-model form). Both ODEs are
DDIM with the same schedule and no guidance by default (`cfg` = 1): the paper's bridge exactly. Sec. 3.2 (cycle
consistency): translating the result back, target → source, returns close to the input, up to the discretisation
error of the two ODE solves; `round_trip` does it and reports the PSNR.

The source side reuses the shared DDIM inversion (`studio/inversion.py`), so DiffEdit and Prompt-to-Prompt on the
same image, caption and steps need no second one.
"""

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.inversion import DDIMInversion, DDIMSchedule, ddim_invert, decode, denoise, psnr, ticker, trace
from studio.jobs import PreviewFn, StepFn, StopFn
from studio.lora import applied
from studio.params import Params, flag, ranged
from studio.sampling import text_context


@dataclass
class DDIBParams(Params):
    """One translation. `source_prompt` and `target_prompt` are the two domains (the paper's class labels);
    `steps` is the number of DDIM steps of each ODE solve (diffusers' `num_inference_steps`); `cfg` the target
    ODE's guidance (`guidance_scale`; the paper's bridge has none, 1); `target_lora` makes the target domain this
    model with a LoRA (folder or .safetensors file, at `target_lora_scale`)."""

    source_prompt: str = ""
    target_prompt: str = ""
    steps: int = ranged(50, 5, 150, 1, "DDIM steps of each ODE: the inversion's and the regeneration's.")
    cfg: float = ranged(1.0, 0, 20, 0.5, "Guidance of the target ODE. 1 is the paper's bridge; higher pushes "
                                         "towards the target prompt and keeps less of the image.")
    round_trip: bool = flag(False, "Translate the result back to the source and show how close it comes "
                                   "(cycle consistency, Sec. 3.2): two more ODE solves.")
    target_lora: str = ""
    target_lora_scale: float = ranged(1.0, 0, 1.5, 0.05, "Scale of the target domain's LoRA.")

    def check(self) -> None:
        if not self.source_prompt.strip():
            raise ValueError("Write the caption (source prompt): the source domain the image is inverted in.")
        if not self.target_prompt.strip():
            raise ValueError("Write the target prompt: the domain to translate the image to.")


@dataclass
class DDIBResult:
    image: Image.Image  # the translation
    inversion: DDIMInversion  # the source side: x_T, its trajectory and its reconstruction
    back: Image.Image | None  # the round trip's return to the source domain
    cycle_psnr: float | None  # back vs the input (dB)
    warnings: list[str]


def same_latent_space(a: StableDiffusionPipeline, b: StableDiffusionPipeline) -> None:
    """Two models can share x_T only if their latents have the same shape and scale."""
    def space(p: StableDiffusionPipeline) -> tuple:
        return p.unet.config.in_channels, p.vae_scale_factor, p.vae.config.scaling_factor, p.unet.config.sample_size
    if space(a) != space(b):
        raise ValueError("The target model's latent space is not this model's (latent channels, VAE factor, scale "
                         "or size differ), so they cannot share x_T: pick a model of the same family.")


def run_ddib(pipe: StableDiffusionPipeline, image: Image.Image, params: DDIBParams, *,
             inversion: DDIMInversion | None = None, target_pipe: StableDiffusionPipeline | None = None,
             on_step: StepFn | None = None, should_stop: StopFn | None = None,
             on_preview: PreviewFn | None = None) -> DDIBResult:
    """Algorithm 1: x_T = ODE_source⁻¹(image), result = ODE_target(x_T). `pipe` (from `ModelManager.lend`) is the
    source model; `target_pipe` another model for the target domain, else `pipe` itself (with `target_lora` if set).
    `inversion` is the cached DDIM inversion of `image` for the source prompt and steps, computed here if None."""
    # 1. Check inputs
    warnings: list[str] = []
    target = target_pipe or pipe
    if target_pipe is not None:
        same_latent_space(pipe, target_pipe)
    if params.target_lora and target_pipe is not None:
        raise ValueError("Pick either a target model or a target LoRA, not both.")
    other_domain = target_pipe is not None or params.target_lora
    if params.target_prompt.strip() == params.source_prompt.strip() and not other_domain and params.cfg == 1:
        warnings.append("The target prompt is the caption and no other model is chosen: DDIB only reconstructs the "
                        "image.")
    if inversion is not None and (inversion.prompt, inversion.steps) != (params.source_prompt, params.steps):
        raise ValueError("The inversion was made for another caption or step count: invert the image again.")
    total = params.steps * (1 + 2 * params.round_trip) + (0 if inversion else 2 * params.steps)
    tick = ticker(total, on_step, should_stop, "DDIB")

    # 2. Source ODE backwards: x_T (shared with the tab's other methods through the inversion cache)
    if inversion is None:
        inversion = ddim_invert(pipe, image, params.source_prompt, steps=params.steps, should_stop=should_stop,
                                on_step=lambda i, n: tick())
    schedule = inversion.schedule if target is pipe else DDIMSchedule(target, params.steps)
    loras = [(params.target_lora, params.target_lora_scale)] if params.target_lora else []

    # 3. Target ODE forwards from x_T (and, for the round trip, back again and home through the source ODE)
    with torch.no_grad():
        target_cond = _context(target, params.target_prompt, params.cfg)
        with applied(target, loras):
            z = denoise(target, schedule, inversion.x_T, target_cond, params.cfg, on_step=lambda i, n: tick(),
                        on_preview=on_preview, what="DDIB")
            result = decode(target, z)
            if params.round_trip:
                x_T = trace(target, schedule, z, _context(target, params.target_prompt, 1), tick)[0]
        back = cycle = None
        if params.round_trip:
            source_cond = _context(pipe, params.source_prompt, 1)
            back = decode(pipe, denoise(pipe, inversion.schedule, x_T, source_cond, 1, on_step=lambda i, n: tick(),
                                        what="DDIB"))
            cycle = psnr(inversion.image, back)
    return DDIBResult(result, inversion, back, cycle, warnings + inversion.warnings)


def _context(pipe: StableDiffusionPipeline, prompt: str, cfg: float) -> torch.Tensor:
    return text_context(pipe, prompt, None, cfg > 1)[0]
