"""Diffusion classifier speed: the studio's batched classifier vs a plain per-(class, timestep) loop, in one run.

    python -m bench.classify                      # CUDA: SD1.5 architecture, random weights, 10 classes, "paper"
    python -m bench.classify --model shapes --device cpu --schedule fast
    python -m bench.classify --model tiny         # any device: checks the script itself

Prints UNet evaluations per second and seconds per image for both paths on the same schedule (the paper's CIFAR-10
schedule by default: 50 samples keeping 5, then 500 keeping 1), interleaved round by round (bench/common.py). The
plain loop is how the method reads in the paper: one UNet call per class and timestep, its error read back at once.
"""

import numpy as np
import torch
from PIL import Image

from bench.common import interleave, open_manager, parser, report
from bench.sd15 import save_random_sd15
from studio.classify import SCHEDULES, ClassifyParams, classify, plan, timesteps
from studio.sampling import split_prediction

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def plain_loop(pipe, image: Image.Image, params: ClassifyParams) -> int:
    """The same schedule, one (class, timestep) at a time; returns the UNet calls made."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixels = torch.from_numpy(np.array(image.convert("RGB").resize((side, side))))
    pixels = pixels.permute(2, 0, 1)[None].to(device, dtype) / 127.5 - 1
    with torch.no_grad():
        z = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        _, per_stage = timesteps(params.stages)
        remaining, errors, calls = list(CLASSES), {}, 0
        for (_, keep), ts in zip(params.stages, per_stage):
            for name in remaining:
                context = pipe.encode_prompt(params.templates[0].replace("{}", name), device, 1, False)[0]
                for t in ts:
                    if (name, t) not in errors:
                        noise = torch.randn(z.shape, generator=torch.Generator("cpu").manual_seed(t)).to(device, dtype)
                        a = pipe.scheduler.alphas_cumprod[t].to(device, dtype)
                        x_t = a.sqrt() * z + (1 - a).sqrt() * noise
                        out = pipe.unet(x_t, t, encoder_hidden_states=context).sample
                        eps = split_prediction(out, x_t, a, pipe.scheduler.config.prediction_type)[1]
                        errors[name, t] = torch.nn.functional.mse_loss(eps.float(), noise.float()).item()
                        calls += 1
            remaining = sorted(remaining, key=lambda n: np.mean([errors[n, t] for t in ts]))[:keep]
    return calls


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--schedule", default="paper", choices=list(SCHEDULES))
    p.add_argument("--batch", type=int, default=250, help="UNet rows per forward pass for the studio's path")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    folder = manager.resolve(args.model).location if args.model else str(save_random_sd15(args.workdir / "sd15-random"))
    params = ClassifyParams(stages=SCHEDULES[args.schedule], batch=args.batch)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    calls, _ = plan(len(CLASSES), params)

    def counted(run):
        def check() -> None:
            made = run()
            assert made == calls, (made, calls)  # both paths do the same work
        return check

    with manager.lend(folder) as pipe:
        timings = interleave({"studio (batched)": counted(lambda: classify(pipe, image, CLASSES, params).unet_calls),
                              "plain loop": counted(lambda: plain_loop(pipe, image, params))},
                             device, rounds=args.rounds, warmup=args.warmup)
    rows = report(f"Diffusion classifier · {args.model or 'SD1.5 architecture, random weights'} · {len(CLASSES)} "
                  f"classes · schedule {args.schedule} {SCHEDULES[args.schedule]} = {calls} UNet evaluations",
                  device, timings, args, baseline="plain loop",
                  columns={"UNet evaluations/s": lambda t: f"{calls / t.median:.0f}"})
    for row in rows:
        row["evals_per_s"] = calls / row["seconds"]
    return rows


if __name__ == "__main__":
    main()
