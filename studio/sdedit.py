"""SDEdit (Meng et al., ICLR 2022): edit an image by noising it to level t0 and denoising it with the model.

Section 3 of the paper: perturb the guide x_g with Gaussian noise, x(t0) = sqrt(ᾱ_t0)·x_g + sqrt(1-ᾱ_t0)·ε, then
run the reverse process from t0 to 0. A low t0 stays faithful to the guide; a high t0 becomes realistic but forgets
it. Algorithm 2 ("SDEdit with mask") keeps the unmasked region on the guide's own noisy trajectory at every step;
here the original pixels are also pasted back outside the mask at the end, so they are exactly unchanged. `repeats`
(K in Algorithm 1) runs noise → denoise K times, each output the next guide.

Everything runs in the latent space of a Stable Diffusion VAE; the guide is encoded once. Mask semantics: white
(≥ 128) = may change, black = keep exactly.
"""

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.images import flatten_alpha
from studio.jobs import Cancelled, PreviewFn, StepFn, StopFn
from studio.params import Params, ranged
from studio.prompts import encode_text
from studio.sampling import (Preview, decode_latents, encode_image, guided, make_scheduler, pick_seed, seed_field,
                             snap_size, text_context)

MAX_SIDE = 1024  # larger guides are scaled down (with a note): memory grows with the square of the side
N_PREVIEWS = 4  # predicted-x0 views kept along the way


@dataclass
class SDEditParams(Params):
    """One SDEdit run. `t0` is the paper's t0, diffusers' `strength` (StableDiffusionImg2ImgPipeline); `repeats` is
    the paper's K."""

    prompt: str = ""
    negative_prompt: str = ""
    t0: float = ranged(0.5, 0.05, 1.0, 0.01, "Noise level. Low keeps the guide (faithful); high follows the model.")
    steps: int = ranged(50, 5, 150, 1, "Steps of a full 0→1 schedule; SDEdit runs the last t0 fraction of them.")
    cfg: float = ranged(7.5, 0, 20, 0.5, "Classifier-free guidance. Lower (about 3) keeps more of the guide's "
                                         "colours at low t0.")
    eta: float = ranged(0.0, 0, 1, 0.05, "0: deterministic ODE (DDIM); 1: fresh noise each step, as the paper's SDE.")
    repeats: int = ranged(1, 1, 5, 1, "K in the paper: noise and denoise K times.")
    seed: int = seed_field(0)
    feather: int = ranged(0, 0, 32, 1, "Soften the mask edge over this many pixels, inside the mask only.")


@dataclass
class CompositeParams(Params):
    """Where `composite` pastes the second image: its centre as fractions of the guide, its width as a share."""

    x: float = ranged(0.5, 0, 1, 0.01, "Centre of the pasted image, as a fraction of the guide's width.")
    y: float = ranged(0.5, 0, 1, 0.01, "Centre of the pasted image, as a fraction of the guide's height.")
    scale: float = ranged(0.4, 0.1, 1, 0.05, "Width of the pasted image, as a share of the guide's.")


@dataclass
class SDEditResult:
    image: Image.Image
    noised: Image.Image  # the guide after noising to t0 (decoded x(t0))
    previews: list[tuple[int, Image.Image]]  # (step, predicted x0) along the last pass
    t0_timestep: int  # the training timestep that t0 maps to for this scheduler and step count
    seed: int
    warnings: list[str]


def prepare_guide(image: Image.Image, warnings: list[str]) -> Image.Image:
    """RGB, at most MAX_SIDE pixels a side, each side a multiple of 8. RGBA is flattened onto white."""
    image, flattened = flatten_alpha(image)
    if flattened:
        warnings.append("The guide had transparency; it was placed on white.")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        warnings.append(f"The guide ({image.width}×{image.height}) was scaled down to at most {MAX_SIDE} px a side.")
        image = image.resize((max(64, round(image.width * scale)), max(64, round(image.height * scale))),
                             Image.LANCZOS)
    if min(image.size) < 64:
        raise ValueError(f"The guide is {image.width}×{image.height}; it needs at least 64 pixels a side.")
    size = (snap_size(image.width, "width", warnings, hi=MAX_SIDE), snap_size(image.height, "height", warnings,
                                                                             hi=MAX_SIDE))
    return image.resize(size, Image.LANCZOS) if size != image.size else image


def soft_mask(mask: Image.Image | np.ndarray, size: tuple[int, int], feather: int) -> np.ndarray:
    """Float mask in [0, 1] at `size` (w, h). Outside the mask it is exactly 0; inside, it ramps up over `feather`
    pixels from the edge, so a feathered edge never touches the pixels that must be kept."""
    array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if array.ndim == 3:
        array = array.max(-1)
    hard = cv2.resize((array >= 128).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    if feather <= 0:
        return hard.astype(np.float32)
    inside = cv2.distanceTransform(hard, cv2.DIST_L2, 3)
    return np.clip(inside / feather, 0, 1).astype(np.float32) * hard


def run_sdedit(pipe: StableDiffusionPipeline, guide: Image.Image, params: SDEditParams, *,
               mask: Image.Image | np.ndarray | None = None, on_step: StepFn | None = None,
               should_stop: StopFn | None = None, on_preview: PreviewFn | None = None) -> SDEditResult:
    """SDEdit one guide (Algorithm 1, or Algorithm 2 with `mask`). `pipe` comes from `ModelManager.lend`."""
    # 1. Check inputs (the ranges were checked when `params` was built)
    warnings: list[str] = []
    given_size = guide.size
    guide = prepare_guide(guide, warnings)
    weight = None
    if mask is not None:
        array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
        if (array.shape[1], array.shape[0]) != given_size:
            warnings.append(f"The mask ({array.shape[1]}×{array.shape[0]}) is not the size of the guide "
                            f"({given_size[0]}×{given_size[1]}); it was stretched to fit.")
        weight = soft_mask(array, guide.size, params.feather)
        if not weight.any():
            raise ValueError("The mask is empty: paint the region that may change in white.")
    seed = pick_seed(params.seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    device, dtype = pipe.unet.device, pipe.unet.dtype

    # 2. Text embeddings (conditional and, with guidance, unconditional)
    use_cfg = params.cfg > 1
    context, _ = text_context(pipe, params.prompt, params.negative_prompt, use_cfg)

    # 3. Timesteps: the last t0 fraction of a `steps`-step DDIM schedule
    scheduler = make_scheduler("DDIM", pipe.scheduler.config)
    scheduler.set_timesteps(params.steps, device=device)
    n_run = max(1, round(params.steps * params.t0))
    timesteps = scheduler.timesteps[params.steps - n_run :]
    t_start = timesteps[:1]

    # 4. Encode the guide once; latent-space mask (any editable pixel makes its latent cell editable)
    z_guide = encode_image(pipe, guide)
    preview = Preview.of(pipe)  # the x(t0) and x0 views cost a matrix product, not a decode
    factor = pipe.vae_scale_factor
    m = None
    if weight is not None:
        m = torch.from_numpy(weight > 0).float()[None, None]
        m = torch.nn.functional.max_pool2d(m, factor).to(device, dtype)

    # 5. K passes of noise → denoise
    z = z_guide
    done, total = 0, n_run * params.repeats
    previews: list[tuple[int, Image.Image]] = []
    for k in range(params.repeats):
        noise = torch.randn(z.shape, generator=generator).to(device, dtype)
        x = scheduler.add_noise(z, noise, t_start)
        if k == 0:
            noised = preview(pipe, x)[0]
        keep_every = max(1, n_run // N_PREVIEWS)
        previews = []
        for i, t in enumerate(timesteps):
            if should_stop and should_stop():
                raise Cancelled("SDEdit cancelled")
            with torch.no_grad():
                model_in = torch.cat([x] * 2) if use_cfg else x
                pred = pipe.unet(model_in, t, encoder_hidden_states=context).sample  # ε or v: the scheduler knows
            if use_cfg:
                pred = guided(*pred.chunk(2), params.cfg)
            out = scheduler.step(pred, t, x, eta=params.eta, generator=generator)
            x = out.prev_sample
            if m is not None:
                # Algorithm 2: outside the mask, stay on the guide's own trajectory at the next noise level.
                t_next = timesteps[i + 1 : i + 2]
                known = scheduler.add_noise(z_guide, noise, t_next) if len(t_next) else z_guide
                x = m * x + (1 - m) * known
            if i % keep_every == keep_every - 1 or i == n_run - 1:
                previews.append((i + 1, preview(pipe, out.pred_original_sample)[0]))
            done += 1
            if on_step:
                on_step(done, total)
            if on_preview:
                on_preview(done, total, out.pred_original_sample)
        z = x

    # 6. Decode; with a mask, paste the original pixels back outside it
    result = decode_latents(pipe, z)[0].permute(1, 2, 0).cpu().numpy() * 255
    if weight is not None:
        result = weight[..., None] * result + (1 - weight[..., None]) * np.asarray(guide, dtype=np.float32)
    image = Image.fromarray(result.round().clip(0, 255).astype(np.uint8))
    return SDEditResult(image, noised, previews[-N_PREVIEWS:], int(t_start.item()), seed, warnings)


def faithfulness(guide: Image.Image, output: Image.Image) -> float:
    """Distance to the guide as in the paper's stroke experiments: L2 between both images after a blur that hides
    detail the strokes never had (sigma = side/32), in [0, 1] pixel units. Lower is more faithful."""
    sigma = max(guide.size) / 32
    a, b = (cv2.GaussianBlur(np.asarray(im.convert("RGB").resize(guide.size), np.float32) / 255, (0, 0), sigma)
            for im in (guide, output))
    return float(np.sqrt(((a - b) ** 2).mean()))


def realism(pipe: StableDiffusionPipeline, image: Image.Image, prompt: str = "", n: int = 8, seed: int = 0) -> float:
    """An offline realism proxy: the model's own denoising error on the image (mean squared error of its noise
    prediction at n evenly spaced timesteps, fixed noise). Typical images of the model's world are easy to denoise;
    strokes and collages are not. Lower is more realistic; compare values from one model only."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    z = encode_image(pipe, image)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        context = encode_text(pipe, [prompt])
        steps = pipe.scheduler.config.num_train_timesteps
        t = torch.linspace(steps * 0.1, steps * 0.9, n).long().to(device)
        noise = torch.randn((n, *z.shape[1:]), generator=generator).to(device, dtype)
        x_t = make_scheduler("DDIM", pipe.scheduler.config).add_noise(z.expand(n, -1, -1, -1), noise, t)
        eps = pipe.unet(x_t, t, encoder_hidden_states=context.expand(n, -1, -1)).sample
    return float(((eps - noise) ** 2).mean())


@dataclass
class SweepPoint:
    t0: float
    result: SDEditResult
    faithfulness: float
    realism: float


def sweep(pipe: StableDiffusionPipeline, guide: Image.Image, params: SDEditParams, t0s: list[float], *,
          mask: Image.Image | np.ndarray | None = None, on_step: StepFn | None = None,
          should_stop: StopFn | None = None) -> list[SweepPoint]:
    """The realism–faithfulness trade-off of Figure 3: one seed, several t0, two numbers each."""
    points = []
    for i, t0 in enumerate(t0s):
        result = run_sdedit(pipe, guide, replace(params, t0=t0), mask=mask, should_stop=should_stop)
        reference = guide.convert("RGB").resize(result.image.size)
        points.append(SweepPoint(t0, result, faithfulness(reference, result.image),
                                 realism(pipe, result.image, params.prompt)))
        if on_step:
            on_step(i + 1, len(t0s))
    return points


def guide_from_layers(background: Image.Image | None, strokes: Image.Image | None,
                      mask_layer: Image.Image | None = None) -> tuple[Image.Image, np.ndarray | None]:
    """The guide and the mask from an editor's layers: colour strokes are painted over the background; the mask
    comes from its own layer (whatever is painted there, in any colour, may change), never from the composite. The
    guide keeps the background's transparency, for `run_sdedit` to place on white (with a note)."""
    if background is None and strokes is None:
        raise ValueError("Upload an image or start a blank canvas, then paint on it.")
    base = (background or Image.new("RGB", strokes.size, "white")).convert("RGBA")
    if strokes is not None:
        base = Image.alpha_composite(base, strokes.convert("RGBA").resize(base.size))
    mask = None
    if mask_layer is not None:
        alpha = np.asarray(mask_layer.convert("RGBA").resize(base.size))[..., 3]
        mask = np.where(alpha > 0, 255, 0).astype(np.uint8) if alpha.any() else None
    opaque = base.getchannel("A").getextrema()[0] == 255
    return (base.convert("RGB") if opaque else base), mask


def composite(base: Image.Image, patch: Image.Image, x: float, y: float,
              scale: float) -> tuple[Image.Image, np.ndarray]:
    """Paste `patch` onto `base` (its centre at fractions x, y of the base; its width `scale` of the base's) and return
    the collage with the mask of the pasted region, for SDEdit to harmonise only that region."""
    CompositeParams(x=x, y=y, scale=scale)  # the ranges the tab's sliders show
    base = base.convert("RGB")
    width = max(8, round(base.width * scale))
    patch = patch.convert("RGBA").resize((width, max(8, round(patch.height * width / patch.width))), Image.LANCZOS)
    left, top = round(x * base.width - patch.width / 2), round(y * base.height - patch.height / 2)
    collage = base.copy()
    collage.paste(patch, (left, top), patch)
    mask = Image.new("L", base.size)
    mask.paste(patch.getchannel("A"), (left, top))
    return collage, np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
