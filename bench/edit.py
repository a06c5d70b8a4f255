"""What editing a real image costs: each method of the Edit a real image tab in UNet evaluations and time, against one
plain generation, interleaved in one run.

    python -m bench.edit                         # CUDA: SD1.5 architecture, random weights, 50 DDIM steps, 512x512
    python -m bench.edit --model shapes --device cpu --steps 25
    python -m bench.edit --model tiny            # any device: checks the script itself

Variants: a plain image (DDIM, guidance 7.5: the baseline), DDIM inversion with its reconstruction check (what the
shared cache saves every later method), DDIB and DiffEdit with the inversion cached (what each costs on its own),
null-text inversion from a cached DDIM inversion (Prompt-to-Prompt's real-image path), Imagic's three stages, and
Imagic's stage C alone (a new η). "UNet evaluations" counts image rows through the UNet per call (a guided step is
two); Imagic's optimisation steps are each a forward and a backward pass, so its time per evaluation is higher.
"""

from contextlib import contextmanager

import numpy as np
from PIL import Image

from bench.common import interleave, open_manager, parser, report
from bench.sd15 import save_random_sd15
from studio.ddib import DDIBParams, run_ddib
from studio.diffedit import DiffEditParams, run_diffedit
from studio.generate import GenerateParams, run_generate
from studio.imagic import ImagicParams, imagic_generate, run_imagic
from studio.inversion import ddim_invert, null_text_invert

CAPTION, TARGET = "a photograph of a red car in a street", "a photograph of a blue car in a street"


@contextmanager
def counting(unet):
    """Counts the image rows the UNet is called on while inside."""
    count = [0]
    hook = unet.register_forward_pre_hook(lambda module, args, kwargs: count.__setitem__(0, count[0] + len(
        args[0] if args else kwargs["sample"])), with_kwargs=True)
    try:
        yield count
    finally:
        hook.remove()


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of every variant")
    p.add_argument("--imagic-steps", type=int, default=100, help="optimisation steps of Imagic's stages A and B "
                                                                  "each (the paper's are 500-1,000 for SD)")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    folder = manager.resolve(args.model).location if args.model else str(save_random_sd15(args.workdir / "sd15-random"))
    size = manager.resolve(folder).size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    steps = args.steps
    with manager.lend(folder) as pipe:
        inversion = ddim_invert(pipe, image, CAPTION, steps=steps)
        imagic = ImagicParams(TARGET, embedding_steps=args.imagic_steps, finetune_steps=args.imagic_steps,
                              steps=steps)
        tuned = run_imagic(pipe, image, imagic).tuned
        runs = {
            "plain image": lambda: run_generate(pipe, GenerateParams(CAPTION, steps=steps, width=size, height=size,
                                                                     seed=0, scheduler="DDIM")),
            "DDIM inversion + check": lambda: ddim_invert(pipe, image, CAPTION, steps=steps),
            "DDIB (inversion cached)": lambda: run_ddib(pipe, image, DDIBParams(CAPTION, TARGET, steps=steps),
                                                        inversion=inversion),
            "DiffEdit (inversion cached)": lambda: run_diffedit(pipe, image, DiffEditParams(
                CAPTION, TARGET, steps=steps, threshold=0.05), inversion=inversion),
            "null-text inversion (DDIM cached)": lambda: null_text_invert(pipe, inversion, 7.5),
            "Imagic A+B+C": lambda: run_imagic(pipe, image, imagic),
            "Imagic C only (new η)": lambda: imagic_generate(pipe, tuned, 0.5, steps=steps),
        }
        evaluations = {}
        for name, run in runs.items():
            with counting(pipe.unet) as count:
                run()
            evaluations[name] = count[0]
        # The counting calls were the first warm-up.
        timings = interleave(runs, device, rounds=args.rounds, warmup=max(0, args.warmup - 1))
    return report(f"Edit a real image · {args.model or 'SD1.5 architecture, random weights'} · {size}x{size} · "
                  f"{steps} DDIM steps · Imagic {args.imagic_steps}+{args.imagic_steps} optimisation steps",
                  device, timings, args, columns={"UNet evaluations": lambda t: str(evaluations[t.name])})


if __name__ == "__main__":
    main()
