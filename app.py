"""Diffusion Studio: `python app.py --help` for the flags. Parses flags, builds the Blocks from tabs/, launches."""

import argparse
import os
from pathlib import Path

import gradio as gr

from studio.device import describe
from studio.models import ModelManager
from tabs import StudioContext
from tabs.classify import ClassifyTab
from tabs.control import ControlTab
from tabs.generate import GenerateTab
from tabs.loras import LoraBar
from tabs.p2p import P2PTab
from tabs.sdedit import SDEditTab
from tabs.train import TrainTab

# Small models make small images: let single-image outputs fill their frame instead of sitting in its middle.
# Gallery captions small and translucent: Gradio lays them over the bottom of the thumbnail, where a 64x64 image's
# shapes may be.
CSS = (".studio-image img { width: 100%; height: 100%; object-fit: contain; }\n"
       ".thumbnail-item div.caption-label { font-size: 10px; padding: 0 4px; opacity: 0.75; }")
DEFAULT_MODEL = "shapes"  # the studio's own offline model; `tiny` is for tests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Studio: use and learn diffusion image-editing techniques.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="catalog name (shapes, sd15, tiny), Hub id, diffusers folder or .safetensors file")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the best one present)")
    # Hugging Face Spaces and Docker set GRADIO_SERVER_NAME/PORT; flags still win.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="0.0.0.0 to serve your network")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also serve on a temporary public gradio.live link")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first image)")
    p.add_argument("--allow-pickle", action="store_true", help="also load .ckpt/.bin weights (can run code)")
    p.add_argument("--annotators", type=Path, metavar="FOLDER",
                   help="preprocessor weights (files of lllyasviel/Annotators) from this folder instead of the Hub")
    p.add_argument("--memory-budget", type=float, metavar="GIB", help="evict least recently used models above this")
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="where generated PNGs are saved")
    return p.parse_args(argv)


def build_app(manager: ModelManager, model: str, outputs: Path) -> gr.Blocks:
    ctx = StudioContext(manager, model, outputs, send_to={SDEditTab.TAB_ID: SDEditTab.LABEL,
                                                           P2PTab.TAB_ID: P2PTab.LABEL})
    source = manager.resolve(model)
    with gr.Blocks(title="Diffusion Studio") as demo:
        gr.Markdown(f"# Diffusion Studio\nModel: **{source.name}** · {describe(manager.device)}")
        if source.note:
            gr.Markdown(f"⚠️ {source.note}", elem_id="model-note")
        LoraBar(ctx)
        with gr.Tabs() as tabs:
            generate = GenerateTab(ctx)
            SDEditTab(ctx)
            P2PTab(ctx)
            ControlTab(ctx)
            ClassifyTab(ctx)
            TrainTab(ctx)
        generate.wire_send_to(ctx.send_targets, tabs)
        demo.unload(ctx.end_session)
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    manager = ModelManager(args.device, memory_budget_gb=args.memory_budget, offline=args.offline,
                           allow_pickle=args.allow_pickle, compile=args.compile,
                           annotators_dir=args.annotators)
    demo = build_app(manager, args.model, args.outputs)
    demo.queue(max_size=32).launch(server_name=args.host, server_port=args.port, share=args.share,
                                   allowed_paths=[str(args.outputs.resolve())], theme=gr.themes.Soft(), css=CSS)


if __name__ == "__main__":
    main()
