"""Every benchmark in one run, for whoever has a GPU next: one table against the goals, and one JSON file.

    python -m bench.gpu                              # CUDA: SD1.5 architecture, random weights; about 8 minutes
    python -m bench.gpu --device cpu --quick         # anywhere: the same script at toy sizes (checks it runs)

Each part is its own script's interleaved comparison (bench/common.py), studio against plain diffusers on the same
device: text-to-image eager and with `--compile` (its compile time too), a Prompt-to-Prompt edit against one plain
image, ControlNet and T2I-Adapter against a plain image, the classifier's UNet evaluations per second, each way of
editing a real image, a LoRA training step, and the largest GPU memory peak of those parts.
"""

import argparse
import json
import time

from bench import classify, control, edit, generate, p2p, train
from bench.common import header, open_manager, parser
from bench.sd15 import save_random_sd15
from studio.generate import GenerateParams, run_generate
from studio.models import ModelManager

# (what, the studio's figure, the goal, how the figure is read from a part's rows)
GOALS = {"t2i it/s, compiled, ÷ plain diffusers": 3.0, "P2P edit ÷ plain image": 2.1,
         "ControlNet step ÷ plain step": 1.3, "classifier UNet evaluations/s": 600, "LoRA r4 ms/step": 30,
         "peak VRAM of a tab tour (GiB)": 4.0, "compile seconds": 60}


def row(rows: list[dict], path: str) -> dict:
    return next(r for r in rows if r["path"] == path)


def compiled_t2i(args: argparse.Namespace, folder: str, size: int, steps: int) -> tuple[float, float]:
    """Seconds of the first compiled image (compile included) and it/s after it (--quick: the eager backend, which
    checks the path without inductor's minutes of compiling on a CPU)."""
    manager = ModelManager(args.device, cache_dir=args.workdir, compile="eager" if args.quick else True)
    params = GenerateParams("a photograph of an astronaut riding a horse", steps=steps, width=size, height=size,
                            seed=0)
    started = time.perf_counter()
    with manager.lend(folder) as pipe:
        run_generate(pipe, params)
    first = time.perf_counter() - started
    started = time.perf_counter()
    with manager.lend(folder) as pipe:
        run_generate(pipe, params)
    return first, steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    args = p.parse_args(argv)
    device, manager = open_manager(args)
    sd15 = str(save_random_sd15(args.workdir / "sd15-random")) if not args.model else args.model
    size, steps = (64, 3) if args.quick else (512, 25)
    common = ["--device", str(device), "--workdir", str(args.workdir), "--rounds", "1" if args.quick else "3"]
    model = ["--model", args.model] if args.model else []
    parts = {
        "generate": generate.main([*common, *model, "--steps", str(steps), "--size", str(size)]),
        "p2p": p2p.main([*common, *model, "--steps", "5" if args.quick else "50", "--size", str(size)]),
        "control": control.main([*common, *(["--model", args.model] if args.model else []),
                                 "--steps", str(steps)]),
        "classify": classify.main([*common, *model, "--schedule", "fast" if args.quick else "paper"]),
        "edit": edit.main([*common, *model, "--steps", "5" if args.quick else "50",
                           "--imagic-steps", "2" if args.quick else "100"]),
        "train": train.main(["--device", str(device), "--workdir", str(args.workdir), *model,
                             "--steps", "6" if args.quick else "200", "--resolution", str(size)]),
    }
    compile_s, compiled_its = compiled_t2i(args, sd15, size, steps)
    plain = row(parts["generate"], "plain diffusers")["it_per_s"]
    peaks = [r["peak_gib"] for rows in parts.values() for r in rows if r.get("peak_gib") is not None]
    figures = {
        "t2i it/s, compiled, ÷ plain diffusers": compiled_its / plain,
        "P2P edit ÷ plain image": row(parts["p2p"], "replace edit")["ratio"],
        "ControlNet step ÷ plain step": row(parts["control"], "ControlNet (studio)")["ratio"],
        "classifier UNet evaluations/s": row(parts["classify"], "studio (batched)")["evals_per_s"],
        "LoRA r4 ms/step": row(parts["train"], "studio")["ms_per_step"],
        # The largest of the tabs' peaks, the ControlNet's among them (NaN off CUDA).
        "peak VRAM of a tab tour (GiB)": max(peaks) if peaks else float("nan"),
        "compile seconds": compile_s,
    }
    print(header("All benchmarks" + (" (quick: toy sizes, not a measurement)" if args.quick else ""), device,
                 "each part interleaved on its own; see the tables above"))
    print("| figure | studio | goal |\n|---|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:.2f} | {'≥' if name.startswith(('t2i', 'classifier')) else '≤'} {GOALS[name]} |")
    out = {"figures": figures, "goals": GOALS, "parts": parts, "quick": args.quick}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    del manager
    return out


if __name__ == "__main__":
    main()
