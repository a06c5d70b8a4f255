"""Real images into the model: DDIM inversion, null-text inversion (Mokady et al., CVPR 2023), and their cache.

DDIM inversion runs the deterministic sampler (Song et al., ICLR 2021, Eq. 12 with σ = 0) backwards with the image's
prompt and no guidance, giving a noise latent x_T whose DDIM trajectory returns to the image. Every real-image method
starts from it: DDIB regenerates from x_T under another prompt, DiffEdit starts its edit from the trajectory's
latent at the edit strength and keeps the outside of its mask on the trajectory, and Prompt-to-Prompt needs it as the
pivot of null-text inversion. With classifier-free guidance the trajectory drifts, so null-text inversion optimises,
step by step, the *unconditional* embedding ∅_t so that the guided step from the current latent lands on the
trajectory's next latent. The result, x_T plus one ∅_t per step, lets `run_p2p` redraw the image almost exactly as
its source row, and edit it as any other source. The optimisation runs in fp32 even when the UNet is fp16.

`InversionCache` keeps both per (model, image, prompt, steps), null-text also per guidance, so the methods of the
"Edit a real image" tab and Prompt-to-Prompt's real-image path share one inversion. DDIM inversion is unguided
whatever the edit's guidance, as in the papers (guidance 1), so guidance only keys the null-text stage.
"""

import hashlib
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.images import flatten_alpha
from studio.jobs import Cancelled, PreviewFn, StepFn, StopFn
from studio.prompts import encode_text
from studio.sampling import (SIZE_MULTIPLE, decode_latents, encode_image, guided, make_scheduler, split_prediction,
                             text_context, to_images)

N_VIEWS = 6  # decoded latents of the trajectory kept for viewing
CACHE_SIZE = 8  # inversions kept (a few MB each for SD at 512)


def prepare_image(pipe: StableDiffusionPipeline, image: Image.Image, warnings: list[str] | None = None) -> Image.Image:
    """RGB (transparency on white), the longer side at the model's native size, both sides multiples of 8: the
    size the model was trained at, with the image's aspect ratio."""
    image, flattened = flatten_alpha(image)
    if flattened and warnings is not None:
        warnings.append("The image had transparency; it was placed on white.")
    if min(image.size) < 8:
        raise ValueError(f"The image is {image.width}×{image.height} pixels; it needs at least 8 a side.")
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scale = native / max(image.size)
    size = tuple(max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in image.size)
    if size != image.size:
        if warnings is not None:
            warnings.append(f"The image ({image.width}×{image.height}) was resized to {size[0]}×{size[1]}, the "
                            f"model's native size ({native} px on the longer side).")
        image = image.resize(size, Image.LANCZOS)
    return image


def image_digest(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return hashlib.sha1(rgb.size[0].to_bytes(4, "big") + np.asarray(rgb).tobytes()).hexdigest()[:16]


def inversion_key(image: Image.Image, prompt: str, steps: int, cfg: float | None = None, model: str = "") -> str:
    """What an inversion depends on: the model (with its LoRAs), the image, the prompt, the steps and, for null-text
    inversion, the guidance."""
    return "|".join([model, image_digest(image), prompt, str(steps)] + ([] if cfg is None else [f"{cfg:g}"]))


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


class DDIMSchedule:
    """The deterministic DDIM schedule of `steps` steps: `timesteps[i]` (noisiest first) and ᾱ at each index, where
    index `steps` is the clean end. `move` goes from one index to another in either direction, so inversion and
    sampling take exactly the same pairs of noise levels and undo each other."""

    def __init__(self, pipe: StableDiffusionPipeline, steps: int):
        scheduler = make_scheduler("DDIM", pipe.scheduler.config)
        device = pipe.unet.device
        scheduler.set_timesteps(steps, device=device)
        self.steps, self.timesteps = steps, scheduler.timesteps.tolist()
        self.prediction = scheduler.config.prediction_type
        alphas = scheduler.alphas_cumprod.to(device, torch.float32)
        final = scheduler.final_alpha_cumprod.to(device, torch.float32)
        self.alphas = [alphas[t] for t in self.timesteps] + [final]

    def index(self, strength: float) -> int:
        """The schedule index where an edit of `strength` (the fraction of the steps it runs) starts."""
        return self.steps - max(1, round(self.steps * strength))

    def move(self, output: torch.Tensor, x: torch.Tensor, i_from: int, i_to: int) -> torch.Tensor:
        """x from the noise level of index i_from to that of i_to, given the UNet's output at i_from."""
        x0, eps = split_prediction(output, x, self.alphas[i_from], self.prediction)
        return self.alphas[i_to].sqrt() * x0 + (1 - self.alphas[i_to]).sqrt() * eps


def unet_output(pipe: StableDiffusionPipeline, x: torch.Tensor, t: int, context: torch.Tensor,
                cfg: float) -> torch.Tensor:
    """The UNet's output for x at t in fp32; with guidance, `context` is [unconditional, conditional]."""
    use_cfg = context.shape[0] == 2 * x.shape[0]
    model_in = torch.cat([x] * 2) if use_cfg else x
    out = pipe.unet(model_in.to(pipe.unet.dtype), t, encoder_hidden_states=context).sample.float()
    return guided(*out.chunk(2), cfg) if use_cfg else out


def denoise(pipe: StableDiffusionPipeline, schedule: DDIMSchedule, x: torch.Tensor, context: torch.Tensor,
            cfg: float, *, start: int = 0, after: Callable | None = None, on_step: StepFn | None = None,
            should_stop: StopFn | None = None, on_preview: PreviewFn | None = None,
            what: str = "Denoising") -> torch.Tensor:
    """DDIM sampling (σ = 0) from schedule index `start` to the clean end, with the same pairs of noise levels the
    inversion took. `after(i, x)` may change the latent after the step from i to i + 1 (DiffEdit's mask)."""
    with torch.no_grad():
        for i in range(start, schedule.steps):
            if should_stop and should_stop():
                raise Cancelled(f"{what} cancelled")
            output = unet_output(pipe, x, schedule.timesteps[i], context, cfg)
            x0 = split_prediction(output, x, schedule.alphas[i], schedule.prediction)[0] if on_preview else None
            x = schedule.move(output, x, i, i + 1)
            if after is not None:
                x = after(i, x)
            if on_step:
                on_step(i - start + 1, schedule.steps - start)
            if on_preview:
                on_preview(i - start + 1, schedule.steps - start, x0)
    return x


def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> Image.Image:
    """One latent (fp32 or the model's dtype) as an 8-bit image."""
    return to_images(decode_latents(pipe, latents.to(pipe.unet.dtype)))[0]


@dataclass
class DDIMInversion:
    """DDIM inversion of one image: `trajectory[i]` is the latent at schedule index i (fp32, on the model's device),
    `trajectory[0]` is x_T and `trajectory[steps]` the image's own latent z0."""

    key: str
    prompt: str
    steps: int
    image: Image.Image  # the input as inverted (RGB, the model's size)
    schedule: DDIMSchedule
    trajectory: list[torch.Tensor]
    reconstruction: Image.Image  # DDIM sampling back from x_T with the same prompt, unguided
    psnr: float  # reconstruction vs image, dB
    views: list[tuple[int, Image.Image]]  # (timestep, decoded latent) along the trajectory, x_T first
    warnings: list[str]

    @property
    def x_T(self) -> torch.Tensor:
        return self.trajectory[0]


@dataclass
class Inversion:
    """Null-text inversion on top of a DDIM inversion: what `run_p2p` takes as a real source image."""

    key: str
    prompt: str
    steps: int
    cfg: float
    x_T: torch.Tensor  # (1, C, h, w)
    null_embeddings: list[torch.Tensor]  # one (1, 77·k, d) unconditional embedding per step, k the prompt's chunks
    reconstruction: Image.Image
    psnr: float  # reconstruction vs the input, with the optimised null-texts
    psnr_ddim: float  # ... with DDIM inversion alone (the empty prompt as unconditional, same guidance)
    ddim: DDIMInversion | None = None


def ticker(total: int, on_step: StepFn | None, should_stop: StopFn | None, what: str) -> Callable[[], None]:
    """One call per unit of work: stop if asked (`Cancelled`), then report `done` of `total`."""
    done = 0

    def tick() -> None:
        nonlocal done
        if should_stop and should_stop():
            raise Cancelled(f"{what} cancelled")
        done += 1
        if on_step:
            on_step(done, total)

    return tick


def trace(pipe: StableDiffusionPipeline, schedule: DDIMSchedule, z0: torch.Tensor, cond: torch.Tensor,
          tick: Callable[[], None]) -> list[torch.Tensor]:
    """The DDIM ODE run backwards (unguided) from the clean latent z0: latents by schedule index, x_T first."""
    trajectory = [z0]
    with torch.no_grad():
        for i in reversed(range(schedule.steps)):  # from the clean end (index steps) to x_T (index 0)
            tick()
            z = trajectory[0]
            trajectory.insert(0, schedule.move(unet_output(pipe, z, schedule.timesteps[i], cond, 1), z, i + 1, i))
    return trajectory


def ddim_invert(pipe: StableDiffusionPipeline, image: Image.Image, prompt: str, *, steps: int = 50, model: str = "",
                on_step: StepFn | None = None, should_stop: StopFn | None = None) -> DDIMInversion:
    """Invert `image` for `prompt` (no guidance), then sample back from x_T to measure the reconstruction. Progress
    counts 2 × steps UNet calls."""
    if not prompt.strip():
        raise ValueError("Describe the image in its caption (the source prompt): inversion needs the prompt the "
                         "image will be edited from.")
    warnings: list[str] = []
    key = inversion_key(image, prompt, steps, model=model)
    image = prepare_image(pipe, image, warnings)
    schedule = DDIMSchedule(pipe, steps)
    tick = ticker(2 * steps, on_step, should_stop, "Inversion")
    with torch.no_grad():
        cond = encode_text(pipe, [prompt])
        trajectory = trace(pipe, schedule, encode_image(pipe, image).float(), cond, tick)
        back = denoise(pipe, schedule, trajectory[0], cond, 1, on_step=lambda i, n: tick(), what="Inversion")
    reconstruction = decode(pipe, back)
    picks = sorted({round(k * steps / (N_VIEWS - 1)) for k in range(N_VIEWS)})
    views = [(schedule.timesteps[i] if i < steps else 0, decode(pipe, trajectory[i])) for i in picks]
    return DDIMInversion(key, prompt, steps, image, schedule, trajectory, reconstruction, psnr(image, reconstruction),
                         views, warnings)


def null_text_invert(pipe: StableDiffusionPipeline, ddim: DDIMInversion, cfg: float, *, inner_steps: int = 10,
                     on_step: StepFn | None = None, should_stop: StopFn | None = None) -> Inversion:
    """Mokady et al.'s Algorithm 1 along `ddim`'s trajectory (the pivot): per step, Adam on ∅_t until the guided step
    lands within the early-stop tolerance of the pivot's next latent. Progress counts steps."""
    schedule, trajectory, steps = ddim.schedule, ddim.trajectory, ddim.steps
    dtype = pipe.unet.dtype
    tick = ticker(steps, on_step, should_stop, "Null-text inversion")
    with torch.no_grad():
        uncond, cond = text_context(pipe, ddim.prompt, None, True)[0].chunk(2)
    null = uncond.detach().float()
    nulls = []
    z = trajectory[0]
    for i in range(steps):
        tick()
        t = schedule.timesteps[i]
        with torch.no_grad():
            out_cond = unet_output(pipe, z, t, cond, 1)
        null = null.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([null], lr=1e-2 * (1 - i / (2 * steps)))
        for _ in range(inner_steps):
            out_uncond = pipe.unet(z.to(dtype), t, encoder_hidden_states=null.to(dtype)).sample.float()
            loss = F.mse_loss(schedule.move(guided(out_uncond, out_cond, cfg), z, i, i + 1), trajectory[i + 1])
            if loss.item() < 1e-5 + 2e-5 * i:  # the paper's early stop: close enough to the pivot
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        null = null.detach()
        nulls.append(null.to(dtype))
        with torch.no_grad():
            z = schedule.move(guided(unet_output(pipe, z, t, null.to(dtype), 1), out_cond, cfg), z, i, i + 1)
    reconstruction = decode(pipe, z)
    # DDIM inversion alone, for comparison: the same guided walk with the empty prompt's embedding as unconditional
    ddim_only = decode(pipe, denoise(pipe, schedule, trajectory[0], torch.cat([uncond, cond]), cfg))
    key = f"{ddim.key}|{cfg:g}"
    return Inversion(key, ddim.prompt, steps, cfg, trajectory[0].to(dtype), nulls, reconstruction,
                     psnr(ddim.image, reconstruction), psnr(ddim.image, ddim_only), ddim)


def invert(pipe: StableDiffusionPipeline, image: Image.Image, prompt: str, *, steps: int = 50, cfg: float = 7.5,
           inner_steps: int = 10, model: str = "", on_step: StepFn | None = None,
           should_stop: StopFn | None = None) -> Inversion:
    """DDIM inversion, then null-text inversion for guidance `cfg`, uncached. Progress counts both stages."""
    total = 3 * steps
    ddim = ddim_invert(pipe, image, prompt, steps=steps, model=model, should_stop=should_stop,
                       on_step=on_step and (lambda i, n: on_step(i, total)))
    return null_text_invert(pipe, ddim, cfg, inner_steps=inner_steps, should_stop=should_stop,
                            on_step=on_step and (lambda i, n: on_step(2 * steps + i, total)))


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB")))


def _image(pixels: torch.Tensor) -> Image.Image:
    return Image.fromarray(pixels.numpy())


class InversionCache:
    """The last `size` inversions, by `inversion_key`: one per (model, image, prompt, steps) for DDIM inversion, and
    per guidance too for null-text, which reuses the DDIM inversion it starts from. Shared by every tab (the keys are
    content, so a session only finds what it could compute itself). Entries are also written to a folder (removed
    with this object), so a GPU call that runs in a forked worker (ZeroGPU) leaves them for the next call. `computed`
    counts the inversions actually run, for the UI and the tests."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._folder = tempfile.TemporaryDirectory(prefix="studio-inversions-")
        self._memory: OrderedDict[str, DDIMInversion | Inversion] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = {"ddim": 0, "null-text": 0}

    def _path(self, key: str) -> Path:
        return Path(self._folder.name) / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"

    def _remember(self, key: str, value: DDIMInversion | Inversion) -> None:
        with self._lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)

    def _save(self, key: str, record: dict) -> None:
        torch.save(record, self._path(key))
        files = sorted(Path(self._folder.name).glob("*.pt"), key=lambda f: f.stat().st_mtime)
        for old in files[: -2 * self.size]:  # a DDIM and a null-text entry per inversion
            old.unlink(missing_ok=True)

    def _load(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.exists():
            return None
        path.touch()  # recently used
        return torch.load(path, weights_only=True)

    def has(self, image: Image.Image, prompt: str, steps: int, cfg: float | None = None, model: str = "") -> bool:
        key = inversion_key(image, prompt, steps, cfg, model)
        return key in self._memory or self._path(key).exists()

    def ddim(self, pipe: StableDiffusionPipeline, image: Image.Image, prompt: str, steps: int, *, model: str = "",
             on_step: StepFn | None = None, should_stop: StopFn | None = None) -> DDIMInversion:
        key = inversion_key(image, prompt, steps, model=model)
        found = self._memory.get(key)
        if found is None and (record := self._load(key)) is not None:
            device = pipe.unet.device
            found = DDIMInversion(key, prompt, steps, _image(record["image"]), DDIMSchedule(pipe, steps),
                                  list(record["trajectory"].to(device).unbind(0)), _image(record["reconstruction"]),
                                  record["psnr"], [(t, _image(v)) for t, v in record["views"]], record["warnings"])
        if found is None:
            found = ddim_invert(pipe, image, prompt, steps=steps, model=model, on_step=on_step,
                                should_stop=should_stop)
            self.computed["ddim"] += 1
            self._save(key, {"image": _pixels(found.image), "trajectory": torch.stack(found.trajectory).cpu(),
                             "reconstruction": _pixels(found.reconstruction), "psnr": found.psnr,
                             "views": [(t, _pixels(v)) for t, v in found.views], "warnings": found.warnings})
        self._remember(key, found)
        return found  # type: ignore[return-value]

    def null_text(self, pipe: StableDiffusionPipeline, image: Image.Image, prompt: str, steps: int, cfg: float, *,
                  model: str = "", inner_steps: int = 10, on_step: StepFn | None = None,
                  should_stop: StopFn | None = None) -> Inversion:
        key = inversion_key(image, prompt, steps, cfg, model)
        fresh = not self.has(image, prompt, steps, model=model)
        total = 3 * steps if fresh else steps  # DDIM inversion and its check take 2 x steps calls
        ddim = self.ddim(pipe, image, prompt, steps, model=model, should_stop=should_stop,
                         on_step=on_step and (lambda i, n: on_step(i, total)))
        found = self._memory.get(key)
        if found is None and (record := self._load(key)) is not None:
            device, dtype = pipe.unet.device, pipe.unet.dtype
            found = Inversion(key, prompt, steps, cfg, record["x_T"].to(device, dtype),
                              list(record["nulls"].to(device, dtype).unbind(0)), _image(record["reconstruction"]),
                              record["psnr"], record["psnr_ddim"], ddim)
        if found is None:
            offset = 2 * steps if fresh else 0
            found = null_text_invert(pipe, ddim, cfg, inner_steps=inner_steps, should_stop=should_stop,
                                     on_step=on_step and (lambda i, n: on_step(offset + i, total)))
            self.computed["null-text"] += 1
            self._save(key, {"x_T": found.x_T.cpu(), "nulls": torch.stack(found.null_embeddings).cpu(),
                             "reconstruction": _pixels(found.reconstruction), "psnr": found.psnr,
                             "psnr_ddim": found.psnr_ddim})
        self._remember(key, found)
        return found  # type: ignore[return-value]
