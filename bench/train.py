"""LoRA training speed: the studio's trainer vs a plain peft/diffusers loop, interleaved step by step in one run.

    python -m bench.train                              # CUDA: SD1.5 architecture, random weights, 512, batch 1, rank 4
    python -m bench.train --model tiny --device cpu --steps 5 --resolution 64   # any device: checks the script

The studio's job calls its stop check once before every step; the benchmark uses it to run one step of the plain
loop there (on its own copy of the model), so the two alternate step by step and share whatever else the machine
does. It prints ms per optimisation step (medians after warm-up, with their spread and the per-step ratio), peak
GPU memory, and the end-to-end seconds of the whole studio job (caching, validation images at the start and end,
saving both formats) less the plain steps run inside it. The plain loop is the shape of diffusers'
`train_dreambooth_lora.py` without accelerate: every step VAE-encodes the image and runs the text encoder, then one
UNet forward and backward with the LoRA weights in fp32 under autocast.
Goals on one GPU: ≤ 30 ms/step, a 500-step job ≤ 25 s end to end, ≤ 8 GiB.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from PIL import Image

from bench.common import Timing, open_manager, parser, report, sync, timed
from bench.sd15 import save_random_sd15
from studio.device import dtype_for
from studio.trainer import TARGETS, TrainParams, train


def subject(side: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(4)]


class PlainLoop:
    """diffusers' DreamBooth LoRA loop in its simplest form, one step per call."""

    def __init__(self, pipe: StableDiffusionPipeline, images: list[Image.Image], rank: int):
        self.pipe, self.images, self.n = pipe, images, 0
        unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS["attention"]))
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.data = p.data.float()
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.amp = device.type == "cuda" and dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ids = pipe.tokenizer("a photo of sks dog", padding="max_length",
                                  max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)

    def step(self) -> None:
        pipe, device, dtype = self.pipe, self.pipe.unet.device, self.pipe.unet.dtype
        pixels = torch.from_numpy(np.array(self.images[self.n % len(self.images)])).permute(2, 0, 1)[None]
        pixels = pixels.to(device, dtype) / 127.5 - 1
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            context = pipe.text_encoder(self.ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=self.amp):
            pred = pipe.unet(noisy, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred.float(), noise.float())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.n += 1


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=500, help="steps of the studio job (the plain loop runs 100 at most)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--rank", type=int, default=4)
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    spec = args.model or str(save_random_sd15(args.workdir / "sd15-random"))
    images = subject(args.resolution)
    plain = PlainLoop(StableDiffusionPipeline.from_pretrained(manager.resolve(spec).location,
                                                              dtype=dtype_for(device)).to(device), images, args.rank)
    studio_steps, plain_steps, last = Timing("studio"), Timing("plain peft loop"), [None]

    def between_steps() -> bool:
        """The studio's stop check: close the studio step that just ran, then run one plain step."""
        sync(device)
        now = time.perf_counter()
        if last[0] is not None:
            studio_steps.seconds.append(now - last[0])
            if device.type == "cuda":
                studio_steps.peaks.append(torch.cuda.max_memory_allocated(device) / 2**30)
        if plain.n < min(args.steps, 100):
            seconds, peak = timed(plain.step, device)
            plain_steps.seconds.append(seconds)
            if device.type == "cuda":
                plain_steps.peaks.append(peak)
                torch.cuda.reset_peak_memory_stats(device)
        last[0] = time.perf_counter()
        return False

    folder = args.workdir / "loras" / f"bench-{time.strftime('%H%M%S')}"
    params = TrainParams(instance_prompt="a photo of sks dog", class_prompt="a photo of dog", rank=args.rank,
                         alpha=args.rank, steps=args.steps, resolution=args.resolution, validate_every=0,
                         checkpoint_every=0)
    started = time.perf_counter()
    train(manager, spec, folder, params, images, should_stop=between_steps)
    job = time.perf_counter() - started - sum(plain_steps.seconds)
    # Pairs of neighbouring steps, after the warm-up steps.
    n = min(len(studio_steps.seconds), len(plain_steps.seconds))
    for timing in (studio_steps, plain_steps):
        timing.seconds = timing.seconds[min(args.warmup, n - 1):n]
    rows = report(f"LoRA training · {args.model or 'SD1.5 architecture, random weights'} · {args.resolution}px · "
                  f"batch 1 · rank {args.rank} · {args.steps} steps", device, [studio_steps, plain_steps], args,
                  baseline="plain peft loop",
                  how=f"one plain step before every studio step; {len(studio_steps.seconds)} pairs after "
                      f"{args.warmup} warm-up; medians (min–max); ratios are per-pair ratios to the plain loop",
                  columns={"ms/step": lambda t: f"{1000 * t.median:.1f}",
                           "whole job": lambda t: f"{job:.1f} s" if t is studio_steps else "–"})
    for row in rows:
        row["ms_per_step"] = 1000 * row["seconds"]
        row["job_seconds"] = job if row["path"] == "studio" else None
    return rows


if __name__ == "__main__":
    main()
