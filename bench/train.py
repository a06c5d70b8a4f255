"""LoRA training speed: the studio's trainer vs a plain peft/diffusers loop, in one run.

    python -m bench.train                              # CUDA: SD1.5 architecture, random weights, 512, batch 1, rank 4
    python -m bench.train --model tiny --device cpu --steps 5 --resolution 64   # any device: checks the script

Prints ms per optimisation step (after warm-up) and peak GPU memory for both paths, and the end-to-end seconds of a
whole studio job (caching, validation images at the start and end, saving both formats). The plain loop is the
shape of diffusers' `train_dreambooth_lora.py` without accelerate: every step VAE-encodes the image and runs the
text encoder, then one UNet forward and backward with the LoRA weights in fp32 under autocast.
Goals on one GPU: ≤ 30 ms/step, a 500-step job ≤ 25 s end to end, ≤ 8 GiB.
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig
from PIL import Image

from bench.common import free, open_manager, parser, peak_gib, reset_peak, sync
from bench.sd15 import save_random_sd15
from studio.device import describe
from studio.lora import remove_adapter
from studio.trainer import TARGETS, TrainParams, train

WARMUP = 5


def subject(side: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(4)]


def plain_loop(pipe, images: list[Image.Image], steps: int, rank: int) -> list[float]:
    """diffusers' DreamBooth LoRA loop in its simplest form; returns the time at the start of each step."""
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS["attention"]), adapter_name="plain")
    params = [p for n, p in unet.named_parameters() if ".plain." in n]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    amp = device.type == "cuda" and dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ids = pipe.tokenizer("a photo of sks dog", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)
    stamps = []
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    try:
        for step in range(steps):
            sync(device)
            stamps.append(time.perf_counter())
            pixels = torch.from_numpy(np.array(images[step % len(images)])).permute(2, 0, 1)[None]
            pixels = pixels.to(device, dtype) / 127.5 - 1
            with torch.no_grad():
                latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
                context = pipe.text_encoder(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (1,), device=device)
            noisy = pipe.scheduler.add_noise(latents, noise, t)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                pred = unet(noisy, t, encoder_hidden_states=context).sample
            loss = F.mse_loss(pred.float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        sync(device)
        stamps.append(time.perf_counter())
    finally:
        remove_adapter(unet, "plain")
        for p, flag in flags:  # peft froze the base weights: put them back as the shared model had them
            p.requires_grad_(flag)
    return stamps


def ms_per_step(stamps: list[float]) -> float:
    """Mean time between step starts, after warm-up."""
    timed = stamps[WARMUP:] if len(stamps) > WARMUP + 1 else stamps
    return 1000 * (timed[-1] - timed[0]) / (len(timed) - 1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=500, help="steps of the studio job (the plain loop runs 100 at most)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--rank", type=int, default=4)
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    spec = args.model or str(save_random_sd15(args.workdir / "sd15-random"))
    images = subject(args.resolution)
    rows = []

    # 1. The studio's job, end to end; the stop check runs once before every step, so it also stamps the steps
    stamps: list[float] = []

    def stamp() -> bool:
        sync(device)
        stamps.append(time.perf_counter())
        return False

    folder = args.workdir / "loras" / f"bench-{time.strftime('%H%M%S')}"
    params = TrainParams(instance_prompt="a photo of sks dog", class_prompt="a photo of dog", rank=args.rank,
                         alpha=args.rank, steps=args.steps, resolution=args.resolution, validate_every=0,
                         checkpoint_every=0)
    reset_peak(device)
    started = time.perf_counter()
    train(manager, spec, folder, params, images, should_stop=stamp)
    total = time.perf_counter() - started
    rows.append({"path": "studio", "ms_per_step": ms_per_step(stamps), "peak_gib": peak_gib(device),
                 "job_seconds": total})

    # 2. The plain loop on the same (shared, now adapter-free) model
    free(device)
    reset_peak(device)
    with manager.lend(spec) as pipe:
        plain = plain_loop(pipe, images, min(args.steps, 100), args.rank)
    rows.append({"path": "plain peft loop", "ms_per_step": ms_per_step(plain), "peak_gib": peak_gib(device),
                 "job_seconds": None})
    del manager
    free(device)

    print(f"\n{args.model or 'SD1.5 architecture, random weights'} · {args.resolution}px · batch 1 · "
          f"rank {args.rank} · {args.steps} steps · {describe(device)} · torch {torch.__version__}")
    print("| path | ms/step | peak GPU memory | whole job |\n|---|---|---|---|")
    for row in rows:
        peak = "n/a (CPU)" if math.isnan(row["peak_gib"]) else f"{row['peak_gib']:.2f} GiB"
        job = f"{row['job_seconds']:.1f} s" if row["job_seconds"] is not None else "–"
        print(f"| {row['path']} | {row['ms_per_step']:.1f} | {peak} | {job} |")
    return rows


if __name__ == "__main__":
    main()
