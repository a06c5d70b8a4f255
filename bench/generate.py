"""Text-to-image speed: the studio's path (ModelManager + run_generate) vs plain diffusers, in one run.

    python -m bench.generate                      # CUDA: SD1.5 architecture, random weights, 25 steps, 512x512, CFG
    python -m bench.generate --model shapes --steps 20 --device cpu   # the Shapes model on a laptop CPU
    python -m bench.generate --model tiny         # any device: the tiny test model (checks the script itself)

Prints a table: seconds per image, UNet iterations per second and peak memory for both paths. Each path is timed with
the other's weights unloaded, after one warm-up image.
"""

import torch
from diffusers import StableDiffusionPipeline

from bench.common import free, measure, open_manager, parser
from bench.sd15 import save_random_sd15
from studio.device import describe, dtype_for
from studio.generate import GenerateParams, make_scheduler, run_generate

PROMPT = "a photograph of an astronaut riding a horse"


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--size", type=int, help="default: the model's own (512 for SD1.5)")
    p.add_argument("--repeats", type=int, default=3)
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

    rows = [("studio", *measure(studio, device, args.repeats))]
    del manager
    free(device)

    # 2. Plain diffusers, as its documentation shows
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=dtype_for(device)).to(device)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def plain() -> None:
        pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size,
             generator=torch.Generator(device).manual_seed(0))

    rows.append(("plain diffusers", *measure(plain, device, args.repeats)))

    print(f"\n{args.model or 'SD1.5 architecture, random weights'} · {size}x{size} · "
          f"{args.steps} steps {args.scheduler} · CFG 7.5 · {describe(device)} · torch {torch.__version__}")
    print(f"| path | s/image | it/s | peak memory (GiB) |\n|---|---|---|---|")
    table = []
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.3f} | {args.steps / seconds:.1f} | {peak:.2f} |")
        table.append({"path": name, "seconds": seconds, "it_per_s": args.steps / seconds, "peak_gib": peak})
    return table


if __name__ == "__main__":
    main()
