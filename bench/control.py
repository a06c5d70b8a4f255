"""ControlNet and T2I-Adapter cost per step: the studio's loop vs diffusers' pipelines, against a plain image.

    python -m bench.control                      # CUDA: SD1.5 architecture, random weights, 20 steps, 512x512
    python -m bench.control --model shapes --device cpu
    python -m bench.control --model tiny         # any device: checks the script itself

All five variants run interleaved on models loaded once (bench/common.py): a plain image through the studio's loop
(the baseline), a ControlNet and a T2I-Adapter through it, and the same two through diffusers' pipelines. Goals on a
GPU: ControlNet ≤ 1.3x a plain image's time per step, T2I-Adapter ≤ 3% over it (its features are computed once per
image). Peak memory is reported on CUDA.
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import (ControlNetModel, StableDiffusionAdapterPipeline, StableDiffusionControlNetPipeline,
                       T2IAdapter)
from PIL import Image

from bench.common import interleave, open_manager, parser, report
from bench.sd15 import save_random_sd15
from studio.control import ControlParams, ControlUnit, run_control
from studio.sampling import make_scheduler

PROMPT = "a photograph of a house by a lake"


def save_random_controls(folder: Path, sd15: Path) -> tuple[Path, Path]:
    """SD1.5-shaped ControlNet (a copy of the UNet encoder) and full T2I-Adapter with random weights."""
    cn, ad = folder / "controlnet-random", folder / "adapter-random"
    if not (cn / "config.json").exists():
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd15 / "unet")).save_pretrained(cn)
        T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                   adapter_type="full_adapter").save_pretrained(ad)
    return cn, ad


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__, choices=["shapes", "tiny"], help="a built-in family instead of SD1.5's architecture")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    if args.model:
        base, cn_name, ad_name = args.model, f"{args.model}-controlnet", f"{args.model}-t2i-adapter"
    else:
        sd15 = save_random_sd15(args.workdir / "sd15-random")
        base, (cn_name, ad_name) = str(sd15), map(str, save_random_controls(args.workdir, sd15))
    size = manager.resolve(base).size
    controlnet, adapter = manager.component(cn_name), manager.component(ad_name)
    condition = Image.fromarray((np.random.RandomState(0).rand(size, size, 3) > 0.9).astype(np.uint8) * 255)
    params = ControlParams(PROMPT, steps=args.steps, width=size, height=size, seed=0)
    extra = dict(image=condition, num_inference_steps=args.steps, width=size, height=size, output_type="latent")

    def studio(units: list[ControlUnit]):
        def run() -> None:
            with manager.lend(base) as pipe:
                pipe.set_progress_bar_config(disable=True)
                run_control(pipe, units, params)
        return run

    def pipeline(cls: type, **component: torch.nn.Module):
        def run() -> None:
            with manager.lend(base, cls, **component) as pipe:
                pipe.set_progress_bar_config(disable=True)
                pipe.scheduler = make_scheduler(params.scheduler, pipe.scheduler.config)
                pipe(PROMPT, **extra)
        return run

    timings = interleave({
        "plain image (studio loop)": studio([]),
        "ControlNet (studio)": studio([ControlUnit(controlnet, condition)]),
        "T2I-Adapter (studio)": studio([ControlUnit(adapter, condition)]),
        "ControlNet (diffusers pipeline)": pipeline(StableDiffusionControlNetPipeline, controlnet=controlnet),
        "T2I-Adapter (diffusers pipeline)": pipeline(StableDiffusionAdapterPipeline, adapter=adapter),
    }, device, rounds=args.rounds, warmup=args.warmup)
    return report(f"ControlNet / T2I-Adapter · {args.model or 'SD1.5 architecture, random weights'} · "
                  f"{size}x{size} · {args.steps} UniPC steps · CFG 7.5", device, timings, args,
                  columns={"ms/step": lambda t: f"{1000 * t.median / args.steps:.1f}"})


if __name__ == "__main__":
    main()
