"""Real images into Prompt-to-Prompt: DDIM inversion, then null-text inversion (Mokady et al., CVPR 2023).

DDIM inversion runs the deterministic sampler backwards with the image's prompt (no guidance), giving a noise
latent x_T whose DDIM trajectory returns to the image. With classifier-free guidance that trajectory drifts, so
null-text inversion then optimises, step by step, the *unconditional* embedding ∅_t so that the guided step from
the current latent lands on the inversion's next latent (the "pivot"). The result, x_T plus one ∅_t per step, lets
`run_p2p` redraw the image almost exactly as its source row, and edit it as any other source. The optimisation runs
in fp32 (the embedding and the loss) even when the UNet is fp16.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.jobs import Cancelled, StepFn, StopFn
from studio.sampling import decode_latents, encode_image, guided, make_scheduler, split_prediction, to_images


@dataclass
class Inversion:
    key: str  # image, prompt and settings: a later edit with the same key reuses this inversion
    prompt: str
    steps: int
    cfg: float
    x_T: torch.Tensor  # (1, C, h, w)
    null_embeddings: list[torch.Tensor]  # one (1, 77, d) unconditional embedding per step
    reconstruction: Image.Image
    psnr: float  # reconstruction vs the input, with the optimised null-texts
    psnr_ddim: float  # ... with DDIM inversion alone (the empty prompt as unconditional)


def inversion_key(image: Image.Image, prompt: str, steps: int, cfg: float) -> str:
    digest = hashlib.sha1(np.asarray(image.convert("RGB")).tobytes()).hexdigest()[:16]
    return f"{digest}|{prompt}|{steps}|{cfg}"


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def _ddim(output: torch.Tensor, x: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor,
          prediction_type: str) -> torch.Tensor:
    """Deterministic DDIM move of x from noise level ᾱ_from to ᾱ_to (either direction), given the UNet's output."""
    x0, eps = split_prediction(output, x, a_from, prediction_type)
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def invert(pipe: StableDiffusionPipeline, image: Image.Image, prompt: str, *, steps: int = 50, cfg: float = 7.5,
           inner_steps: int = 10, on_step: StepFn | None = None, should_stop: StopFn | None = None) -> Inversion:
    """Invert `image` (resized to the model's native size) for `prompt`. Progress counts DDIM inversion steps, then
    null-text steps."""
    if not prompt.strip():
        raise ValueError("Describe the image in the source prompt: inversion needs the prompt it will be edited from.")
    key = inversion_key(image, prompt, steps, cfg)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    image = image.convert("RGB").resize((side, side), Image.LANCZOS)
    scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps.tolist()
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)
    prediction = scheduler.config.prediction_type

    def alpha(i: int) -> torch.Tensor:  # ᾱ at schedule index i; index `steps` is the clean end
        return alphas[timesteps[i]] if i < steps else scheduler.final_alpha_cumprod.to(device, torch.float32)

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, True)
        z0 = encode_image(pipe, image).float()
    done, total = 0, 2 * steps

    def tick() -> None:
        nonlocal done
        if should_stop and should_stop():
            raise Cancelled("Inversion cancelled")
        done += 1
        if on_step:
            on_step(done, total)

    # 1. DDIM inversion (no guidance): trajectory[i] is the latent at schedule index i; trajectory[steps] = z0
    trajectory = [z0]
    z = z0
    with torch.no_grad():
        for i in reversed(range(steps)):
            tick()
            out = pipe.unet(z.to(dtype), timesteps[i], encoder_hidden_states=cond).sample.float()
            z = _ddim(out, z, alpha(i + 1), alpha(i), prediction)
            trajectory.insert(0, z)

    # 2. Null-text optimisation along the pivot trajectory
    null = uncond.detach().float()
    nulls = []
    z = trajectory[0]
    for i in range(steps):
        tick()
        t = timesteps[i]
        with torch.no_grad():
            out_cond = pipe.unet(z.to(dtype), t, encoder_hidden_states=cond).sample.float()
        null = null.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=1e-2 * (1 - i / (2 * steps)))
        for j in range(inner_steps):
            out_uncond = pipe.unet(z.to(dtype), t, encoder_hidden_states=null.to(dtype)).sample.float()
            z_prev = _ddim(guided(out_uncond, out_cond, cfg), z, alpha(i), alpha(i + 1), prediction)
            loss = F.mse_loss(z_prev, trajectory[i + 1])
            if loss.item() < 1e-5 + 2e-5 * i:  # the paper's early stop: close enough to the pivot
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        null = null.detach()
        nulls.append(null.to(dtype))
        with torch.no_grad():
            out_uncond = pipe.unet(z.to(dtype), t, encoder_hidden_states=null.to(dtype)).sample.float()
            z = _ddim(guided(out_uncond, out_cond, cfg), z, alpha(i), alpha(i + 1), prediction)

    with torch.no_grad():
        reconstruction = to_images(decode_latents(pipe, z.to(dtype)))[0]
        # DDIM inversion alone, for comparison: the same walk with the empty prompt's embedding as unconditional
        z_ddim = trajectory[0]
        for i in range(steps):
            e = pipe.unet(torch.cat([z_ddim] * 2).to(dtype), timesteps[i],
                          encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
            z_ddim = _ddim(guided(*e.chunk(2), cfg), z_ddim, alpha(i), alpha(i + 1), prediction)
        ddim_only = to_images(decode_latents(pipe, z_ddim.to(dtype)))[0]
    return Inversion(key, prompt, steps, cfg, trajectory[0].to(dtype), nulls,
                     reconstruction, psnr(image, reconstruction), psnr(image, ddim_only))
