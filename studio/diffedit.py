"""DiffEdit (Couairon, Verbeek, Schwenk & Cord, ICLR 2023): semantic image editing with a mask the model finds itself.

Sec. 3.2, three steps:

1. **Mask.** Noise the image to strength `mask_strength` (the paper's 50%) with n noise samples; where the query
   text Q (the target prompt) and the reference text R (the caption) make the model predict different noise,
   ε_θ(x_t, t, Q) − ε_θ(x_t, t, R), is what the edit must change. The absolute difference, averaged over the samples
   and latent channels, is clipped at `clamp_ratio` × its mean (extreme values, as diffusers' `generate_mask`),
   normalised to [0, 1] and thresholded at 0.5. The guidance scale cancels in this difference (the unconditional
   term is the same for both prompts), so the conditional predictions alone give it.
2. **Encoding.** DDIM-encode the image to the encoding ratio r (`strength`): the shared DDIM inversion's
   trajectory up to that step, which also serves DDIB and Prompt-to-Prompt on the same image.
3. **Decoding with mask guidance.** Decode from x_r with the query text (and guidance); after every step, outside
   the mask the latent is replaced by the encoding's own latent at that step, y_t = M·ŷ_t + (1 − M)·x_t, so the
   outside follows the inversion back to the input while the inside is redrawn.

Everything is at the latent resolution (64×64 for SD at 512, 16×16 for Shapes): the mask is shown there, upsampled,
and a mask the user paints instead is brought to it (a latent cell is editable if any of its pixels is painted).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.inversion import (DDIMInversion, DDIMSchedule, ddim_invert, decode, denoise, prepare_image, ticker,
                              unet_output)
from studio.jobs import PreviewFn, StepFn, StopFn
from studio.params import Params, ranged
from studio.sampling import encode_image, pick_seed, seed_field, split_prediction, text_context

MASK_BATCH = 8  # noise samples per UNet call while estimating the mask (two prompts each)


@dataclass
class DiffEditParams(Params):
    """One DiffEdit edit. Paper names first, diffusers' (`StableDiffusionDiffEditPipeline`) beside them:
    `source_prompt` is R (`source_prompt`), `target_prompt` Q (`target_prompt`), `n_noise` the n noise samples
    (`num_maps_per_mask`), `mask_strength` the mask's noise level (`mask_encode_strength`), `clamp_ratio`
    (`mask_thresholding_ratio`), `threshold` the binarisation's 0.5, `strength` the encoding ratio r
    (`inpaint_strength`), `steps` (`num_inference_steps`), `cfg` (`guidance_scale`)."""

    source_prompt: str = ""
    target_prompt: str = ""
    n_noise: int = ranged(10, 1, 64, 1, "n: noise samples averaged for the mask (the paper's 10).")
    mask_strength: float = ranged(0.5, 0.05, 1.0, 0.05, "How far the image is noised while the two prompts' "
                                                        "predictions are compared (the paper's 50%).")
    clamp_ratio: float = ranged(3.0, 1.0, 10.0, 0.5, "Differences above this multiple of their mean are clipped "
                                                      "before normalising: higher grows the mask.")
    threshold: float = ranged(0.5, 0.05, 0.95, 0.05, "The normalised difference above which a latent pixel is in "
                                                     "the mask (the paper's 0.5).")
    strength: float = ranged(0.5, 0.05, 1.0, 0.05, "r: the encoding ratio, how far along the inversion the edit "
                                                   "starts. Higher changes more inside the mask.")
    steps: int = ranged(50, 5, 150, 1, "DDIM steps of the whole schedule (the edit runs the last r of them).")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Guidance of the decoding.")
    seed: int = seed_field(0, "Seed of the mask's noise samples; -1 picks a random one.")

    def check(self) -> None:
        if not self.source_prompt.strip():
            raise ValueError("Write the caption (source prompt, R in the paper): what the image shows now.")
        if not self.target_prompt.strip():
            raise ValueError("Write the target prompt (Q in the paper): the caption with your edit.")
        if self.target_prompt.strip() == self.source_prompt.strip():
            raise ValueError("The target prompt is the caption: DiffEdit's mask is where the two differ, so change "
                             "the words that should change (\"a red circle\" → \"a blue circle\").")


@dataclass
class MaskEstimate:
    difference: np.ndarray  # (h, w) latent-resolution |ε_Q − ε_R|, clipped and normalised to [0, 1]
    mask: np.ndarray  # (h, w) bool: difference > threshold
    seed: int


@dataclass
class DiffEditResult:
    image: Image.Image
    estimate: MaskEstimate | None  # None when the user's mask was used
    mask: np.ndarray  # (h, w) latent-resolution bool mask the edit used
    inversion: DDIMInversion
    warnings: list[str]

    def mask_image(self) -> Image.Image:
        """The mask the edit used, at the image's size (white: edited)."""
        return Image.fromarray(self.mask.astype(np.uint8) * 255).resize(self.image.size, Image.NEAREST)


def estimate_mask(pipe: StableDiffusionPipeline, image: Image.Image, params: DiffEditParams, *,
                  on_step: StepFn | None = None, should_stop: StopFn | None = None) -> MaskEstimate:
    """Step 1: where Q and R make the model predict different noise. Progress counts noise samples."""
    seed = pick_seed(params.seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    schedule = DDIMSchedule(pipe, params.steps)
    start = schedule.index(params.mask_strength)
    t, alpha = schedule.timesteps[start], schedule.alphas[start]
    with torch.no_grad():
        z0 = encode_image(pipe, prepare_image(pipe, image)).float()
        _, cond = text_context(pipe, [params.source_prompt, params.target_prompt], None, False)
        total = torch.zeros(z0.shape[2:], device=z0.device)
        tick = ticker(params.n_noise, on_step, should_stop, "Mask estimation")
        for first in range(0, params.n_noise, MASK_BATCH):
            n = min(MASK_BATCH, params.n_noise - first)
            noise = torch.randn((n, *z0.shape[1:]), generator=generator).to(z0.device)
            x_t = alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise
            x = x_t.repeat_interleave(2, 0)  # rows: sample 0 under R, under Q, sample 1 under R, ...
            out = unet_output(pipe, x, t, cond.repeat(n, 1, 1), 1)
            eps = split_prediction(out, x, alpha, schedule.prediction)[1]
            total += (eps[1::2] - eps[0::2]).abs().mean(1).sum(0)
            for _ in range(n):
                tick()
    difference = total / params.n_noise
    clamp = difference.mean() * params.clamp_ratio
    normalised = (difference.clamp(0, clamp) / clamp.clamp(min=1e-12)).cpu().numpy()
    return MaskEstimate(normalised, normalised > params.threshold, seed)


def latent_mask(mask: Image.Image | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A painted mask (any size; white or any colour, or alpha, = edit) at the latent resolution `shape` (h, w): a
    cell is in the mask if any of its pixels is."""
    array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if array.ndim == 3:
        array = array.max(-1)
    painted = torch.from_numpy((array >= 128).astype(np.float32))[None, None]
    return F.adaptive_max_pool2d(painted, shape)[0, 0].numpy() > 0


def run_diffedit(pipe: StableDiffusionPipeline, image: Image.Image, params: DiffEditParams, *,
                 mask: Image.Image | np.ndarray | None = None, inversion: DDIMInversion | None = None,
                 on_step: StepFn | None = None, should_stop: StopFn | None = None,
                 on_preview: PreviewFn | None = None) -> DiffEditResult:
    """The three steps of Sec. 3.2. `mask`: the user's own mask instead of step 1 (white = edit). `inversion`: the
    cached DDIM inversion of `image` for the caption and steps, computed here if None. `pipe` comes from
    `ModelManager.lend`."""
    # 1. Check inputs
    if inversion is not None and (inversion.prompt, inversion.steps) != (params.source_prompt, params.steps):
        raise ValueError("The inversion was made for another caption or step count: invert the image again.")
    schedule = DDIMSchedule(pipe, params.steps)
    start = schedule.index(params.strength)
    n_mask = 0 if mask is not None else params.n_noise
    total = n_mask + (0 if inversion else 2 * params.steps) + params.steps - start
    tick = ticker(total, on_step, should_stop, "DiffEdit")
    step = (lambda i, n: tick())

    # 2. Step 1, the mask (or the user's), at the latent resolution
    estimate = None
    if mask is None:
        estimate = estimate_mask(pipe, image, params, on_step=step, should_stop=should_stop)
        m = estimate.mask
    else:
        side = pipe.vae_scale_factor
        prepared = prepare_image(pipe, image)
        m = latent_mask(mask, (prepared.height // side, prepared.width // side))
    if not m.any():
        raise ValueError("The mask is empty, so nothing would change: lower the mask threshold, raise the clamp "
                         "ratio, or paint the region to edit.")

    # 3. Step 2, encoding: the shared DDIM inversion's trajectory
    if inversion is None:
        inversion = ddim_invert(pipe, image, params.source_prompt, steps=params.steps, on_step=step,
                                should_stop=should_stop)
    trajectory = inversion.trajectory
    keep = torch.from_numpy(~m).to(trajectory[0].device)[None, None]

    # 4. Step 3, decoding with mask guidance from x_r
    with torch.no_grad():
        context, _ = text_context(pipe, params.target_prompt, None, params.cfg > 1)
        z = denoise(pipe, inversion.schedule, trajectory[start], context, params.cfg, start=start,
                    after=lambda i, x: torch.where(keep, trajectory[i + 1], x), on_step=step, should_stop=should_stop,
                    on_preview=on_preview, what="DiffEdit")
    return DiffEditResult(decode(pipe, z), estimate, m, inversion, list(inversion.warnings))
