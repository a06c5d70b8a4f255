"""Make the folder to push to a Hugging Face Space, in one of the studio's two flavours.

    python -m deploy.space cpu OUT        # a free CPU Space on the offline Shapes model (the repository as it is)
    python -m deploy.space zerogpu OUT    # a ZeroGPU Space on Stable Diffusion 1.5

The folder holds what the app needs (no tests, docs, benchmarks or history), the flavour's README front matter and
its requirements. ZeroGPU runs only the torch releases its runtime lists (ZEROGPU_TORCH, from the Spaces ZeroGPU
docs), so that flavour pins one of them, with its matching torchvision, where the desktop install takes any newer
torch. Then: `cd OUT && git init && git remote add space https://huggingface.co/spaces/<you>/<name> && git add . &&
git commit -m studio && git push space HEAD:main` (README "Deploy to Hugging Face Spaces").
"""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = ("tests/", "docs/", "bench/", ".ci/", "deploy/", "Dockerfile", ".dockerignore", "CONTRIBUTING.md",
            "requirements-dev.txt")
ZEROGPU_TORCH = ("2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.2", "2.4.0", "2.5.1", "2.6.0", "2.7.1", "2.8.0")
ZEROGPU_PAIR = ("2.8.0", "0.23.0")  # the newest listed torch and its torchvision
FLAVOURS = {"cpu": ROOT / "README.md", "zerogpu": ROOT / "deploy" / "zerogpu.md"}


def tracked_files() -> list[str]:
    """The repository's files as git has them (so nothing made locally, outputs or checkpoints, is pushed)."""
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in listing.splitlines()
            if not f.startswith(LEFT_OUT) and ((ROOT / f).is_file() or (ROOT / f).is_symlink())]


def requirements(flavour: str) -> str:
    text = (ROOT / "requirements.txt").read_text()
    if flavour == "zerogpu":
        torch, vision = ZEROGPU_PAIR
        text = re.sub(r"(?m)^torch>=.*$", f"torch=={torch}  # a release ZeroGPU's runtime lists", text)
        text = re.sub(r"(?m)^torchvision>=.*$", f"torchvision=={vision}  # torch {torch}'s own", text)
    return text


def make_space(flavour: str, out: Path) -> Path:
    if flavour not in FLAVOURS:
        raise SystemExit(f"Unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}.")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new folder.")
    for name in tracked_files():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, out / name, follow_symlinks=False)  # a link stays one (models/shapes/ip2p)
    shutil.copy2(FLAVOURS[flavour], out / "README.md")
    (out / "requirements.txt").write_text(requirements(flavour))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("flavour", choices=list(FLAVOURS))
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    print(f"{args.flavour} Space in {make_space(args.flavour, args.out)}")


if __name__ == "__main__":
    main()
