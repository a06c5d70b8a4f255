"""Text-to-image speed: the studio's path (ModelManager + run_generate) vs plain diffusers, interleaved in one run.

    python -m bench.generate                      # CUDA: SD1.5 architecture, random weights, 25 steps, 512x512, CFG
    python -m bench.generate --model shapes --steps 25 --device cpu   # the Shapes model on a laptop CPU
    python -m bench.generate --model tiny         # any device: checks the script itself

Both paths are loaded side by side from the same folder and alternate round by round (bench/common.py); the table
gives seconds per image, UNet iterations per second, the studio's ratio to plain diffusers and peak memory.
"""

import torch
from diffusers import StableDiffusionPipeline

from bench.common import interleave, open_manager, parser, report
from bench.sd15 import save_random_sd15
from studio.device import dtype_for
from studio.generate import GenerateParams, run_generate
from studio.sampling import make_scheduler

PROMPT = "a photograph of an astronaut riding a horse"


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, help="default: the model's own (512 for SD1.5)")
    p.add_argument("--scheduler", default="DPM++ 2M")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    folder = manager.resolve(args.model).location if args.model else str(save_random_sd15(args.workdir / "sd15-random"))
    size = args.size or manager.resolve(folder).size
    params = GenerateParams(PROMPT, steps=args.steps, cfg=7.5, width=size, height=size, seed=0,
                            scheduler=args.scheduler)

    # 1. The studio's path: cached model, lent pipeline, CPU-seeded noise, guarded VAE decode
    def studio() -> None:
        with manager.lend(folder) as pipe:
            run_generate(pipe, params)

    # 2. Plain diffusers, as its documentation shows, loaded separately from the same folder
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype_for(device)).to(device)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def plain() -> None:
        pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size,
             generator=torch.Generator(device).manual_seed(0))

    timings = interleave({"studio": studio, "plain diffusers": plain}, device, rounds=args.rounds,
                         warmup=args.warmup)
    rows = report(f"Text to image · {args.model or 'SD1.5 architecture, random weights'} · {size}x{size} · "
                  f"{args.steps} steps {args.scheduler} · CFG 7.5", device, timings, args,
                  baseline="plain diffusers", columns={"it/s": lambda t: f"{args.steps / t.median:.1f}"})
    for row in rows:
        row["it_per_s"] = args.steps / row["seconds"]
    return rows


if __name__ == "__main__":
    main()
