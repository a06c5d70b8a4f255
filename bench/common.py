"""The arguments and model manager every benchmark starts from."""

import argparse
import tempfile
from pathlib import Path

import torch

from studio.device import pick_device
from studio.models import ModelManager

MODEL_HELP = "a catalog name or folder instead of SD1.5's architecture with random weights"


def parser(doc: str, **model: object) -> argparse.ArgumentParser:
    """--model (help and choices overridable), --device and --workdir; the script adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--model", **({"help": MODEL_HELP} | model))
    p.add_argument("--device", help="default: the best one present")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "diffusion-studio-bench")
    return p


def open_manager(args: argparse.Namespace) -> tuple[torch.device, ModelManager]:
    device = pick_device(args.device)
    return device, ModelManager(str(device), cache_dir=args.workdir)
