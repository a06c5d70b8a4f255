"""Diffusion Studio: `python app.py --help` for the flags. Parses flags, builds the Blocks from tabs/, launches."""

import argparse
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import spaces  # noqa: F401 - first: on a ZeroGPU Space it patches torch, which must happen before torch is imported

import studio  # noqa: F401 - next: it refuses, with a message, a Python older than the libraries below need
import gradio as gr
from studio.batch import Cluster
from studio.device import describe
from studio.limits import FLAGS, Limits
from studio.models import INSTRUCT, ModelManager
from tabs import Deployment, StudioContext, wire_send_to
from tabs.batch import ClusterRuns
from tabs.classify import ClassifyTab
from tabs.classroom import ClassroomTab
from tabs.control import ControlTab
from tabs.edit import EditTab
from tabs.generate import GenerateTab
from tabs.gpu import GpuPolicy
from tabs.loras import LoraBar
from tabs.p2p import P2PTab
from tabs.restore import RestoreBar
from tabs.ip2p import IP2PTab
from tabs.sdedit import SDEditTab
from tabs.settings import SettingsBar
from tabs.train import TrainTab

# Small models make small images: let single-image outputs fill their frame instead of sitting in its middle.
# Gallery captions small and translucent: Gradio lays them over the bottom of the thumbnail, where a 64x64 image's
# shapes may be.
CSS = (".studio-image img { width: 100%; height: 100%; object-fit: contain; }\n"
       ".thumbnail-item div.caption-label { font-size: 10px; padding: 0 4px; opacity: 0.75; }\n"
       # A gallery of height "auto" still stops at 55% of the window and scrolls: a grid shows all its rows.
       ".studio-whole-gallery .grid-wrap { max-height: none; }")
# The Shapes model's 64x64 pictures shown at gallery size: upscaled with crisp pixels instead of a smear
CRISP_SMALL_IMAGES = """<script>
document.addEventListener("load", (event) => {
  const img = event.target;
  if (img.tagName === "IMG") img.style.imageRendering = img.naturalWidth <= 128 ? "pixelated" : "";
}, true);
</script>"""
DEFAULT_MODEL = "shapes"  # the studio's own offline model; `tiny` is for tests
PERSISTENT = Path("/data")  # a Hugging Face Space's persistent storage, when it has some
QUEUE = 32  # requests that may wait at once
# A ZeroGPU Space has a GPU for real pictures: SD1.5 and the control models its front matter preloads
# (deploy/zerogpu.md), unless its variables say otherwise.
ZEROGPU_DEFAULTS = {"STUDIO_MODEL": "sd15", "STUDIO_PRELOAD": "controlnet-canny,instruct-pix2pix"}
LIMIT_FLAGS = [("max_steps", int, "denoising steps per image"), ("max_side", int, "width and height, in pixels"),
               ("max_images", int, "images per request"), ("max_train_steps", int, "steps of a training job"),
               ("max_upload_mb", float, "size of an uploaded file"), ("max_pixels", int, "pixels of an uploaded image"),
               ("timeout", float, "seconds one job may run"), ("max_batch_images", int, "images in a Classify batch")]
RAY_FLAGS = [("workers", int, "workers the cluster runs, each loading the model once (default 2)"),
             ("cpus", float, "CPUs per worker, also its torch threads (default 1)"),
             ("gpus", float, "GPUs per worker: 1 each, 0.5 two per GPU (default 0)")]


def env(name: str, default: str | None = None) -> str | None:
    """An environment variable, else (on ZeroGPU) the ZeroGPU default, else `default`."""
    zero = ZEROGPU_DEFAULTS if GpuPolicy.detect().zero else {}
    return os.environ.get(name, zero.get(name, default))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def default_outputs() -> Path:
    """$STUDIO_OUTPUTS, else /data/outputs on a Space with persistent storage, else ./outputs."""
    if env("STUDIO_OUTPUTS"):
        return Path(env("STUDIO_OUTPUTS"))
    return PERSISTENT / "outputs" if PERSISTENT.is_dir() and os.access(PERSISTENT, os.W_OK) else Path("outputs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every flag also reads an environment variable (named in its help), for Spaces and Docker, where flags are
    awkward; a flag given on the command line wins."""
    p = argparse.ArgumentParser(description="Diffusion Studio: use and learn diffusion image-editing techniques.")
    p.add_argument("--model", default=env("STUDIO_MODEL", DEFAULT_MODEL),
                   help="catalog name (shapes, sd15, tiny), Hub id, diffusers folder or .safetensors file "
                        "($STUDIO_MODEL)")
    p.add_argument("--device", default=env("STUDIO_DEVICE"),
                   help="cpu, cuda, cuda:1 or mps (default: the best one present; $STUDIO_DEVICE)")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="0.0.0.0 to serve your network ($GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="($GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", default=env_flag("STUDIO_SHARE"),
                   help="also serve on a temporary public gradio.live link ($STUDIO_SHARE=1)")
    p.add_argument("--offline", action="store_true", default=env_flag("STUDIO_OFFLINE"),
                   help="never contact the Hugging Face Hub ($STUDIO_OFFLINE=1 or HF_HUB_OFFLINE=1)")
    p.add_argument("--compile", action="store_true", default=env_flag("STUDIO_COMPILE"),
                   help="torch.compile the UNet (slow first image; ignored on ZeroGPU; $STUDIO_COMPILE=1)")
    p.add_argument("--allow-pickle", action="store_true", default=env_flag("STUDIO_ALLOW_PICKLE"),
                   help="also load .ckpt/.bin weights (can run code; $STUDIO_ALLOW_PICKLE=1)")
    p.add_argument("--annotators", type=Path, metavar="FOLDER", default=env("STUDIO_ANNOTATORS"),
                   help="preprocessor weights (files of lllyasviel/Annotators) from this folder instead of the Hub "
                        "($STUDIO_ANNOTATORS)")
    p.add_argument("--memory-budget", type=float, metavar="GIB", default=env("STUDIO_MEMORY_BUDGET"),
                   help="evict least recently used models above this ($STUDIO_MEMORY_BUDGET)")
    p.add_argument("--outputs", type=Path, default=default_outputs(),
                   help="where generated PNGs and trained LoRAs are saved ($STUDIO_OUTPUTS; default /data/outputs "
                        "on a Space with persistent storage, else outputs/)")
    p.add_argument("--preload", default=env("STUDIO_PRELOAD", ""), metavar="NAMES",
                   help="comma-separated ControlNets, T2I-Adapters or InstructPix2Pix models to load at start-up "
                        "with the model (always done on ZeroGPU, where work cannot load models; $STUDIO_PRELOAD)")
    p.add_argument("--preview-every", type=int, metavar="N", default=int(env("STUDIO_PREVIEW_EVERY", "5")),
                   help="live previews every N denoising steps, each visitor may change it; 0: off "
                        "($STUDIO_PREVIEW_EVERY)")
    p.add_argument("--vae-tiling", choices=["auto", "on", "off"], default=env("STUDIO_VAE_TILING", "auto"),
                   help="decode large images by tiles: auto (above about 1,500 px for SD), on or off "
                        "($STUDIO_VAE_TILING)")
    p.add_argument("--gpu-seconds", type=int, default=int(env("STUDIO_GPU_SECONDS", "120")), metavar="S",
                   help="ZeroGPU: the longest GPU call the Space allows ($STUDIO_GPU_SECONDS)")
    # Many people on one studio
    p.add_argument("--public", action="store_true", default=env_flag("STUDIO_PUBLIC"),
                   help="a studio anyone can reach: each browser session owns its work, public limits, the safety "
                        "checker on, no server folders ($STUDIO_PUBLIC=1)")
    p.add_argument("--classroom", action="store_true", default=env_flag("STUDIO_CLASSROOM"),
                   help="students log in and own their work; the admins (--admin) see and steer everyone's "
                        "($STUDIO_CLASSROOM=1)")
    p.add_argument("--users", type=Path, metavar="FILE", default=env("STUDIO_USERS"),
                   help="classroom logins, one name:password per line ($STUDIO_USERS)")
    p.add_argument("--password", default=env("STUDIO_PASSWORD"),
                   help="classroom: one password for every student, each logging in with a name of their own "
                        "($STUDIO_PASSWORD)")
    p.add_argument("--admin", default=env("STUDIO_ADMIN", ""), metavar="NAMES",
                   help="comma-separated user names that see the Classroom tab ($STUDIO_ADMIN)")
    p.add_argument("--admin-password", default=env("STUDIO_ADMIN_PASSWORD"),
                   help="with --password: the admins' own password ($STUDIO_ADMIN_PASSWORD)")
    p.add_argument("--data-root", type=Path, action="append", metavar="FOLDER",
                   default=[Path(f) for f in (env("STUDIO_DATA_ROOTS") or "").split(os.pathsep) if f],
                   help="a server folder visitors may name (Classify batches); repeatable. Private desktop "
                        f"default: all of it; shared: none ($STUDIO_DATA_ROOTS, {os.pathsep}-separated)")
    p.add_argument("--safety-checker", choices=["on", "off"], default=env("STUDIO_SAFETY_CHECKER"),
                   help="run SD's safety checker on every image (default: on when --public or --classroom; "
                        "$STUDIO_SAFETY_CHECKER)")
    p.add_argument("--session-ttl", type=float, metavar="HOURS", default=float(env("STUDIO_SESSION_TTL", "24")),
                   help="shared studio: an anonymous session's files are removed when its tab closes, or after "
                        "this long untouched ($STUDIO_SESSION_TTL)")
    ray = p.add_argument_group("a Ray cluster for Classify batches and Train sweeps (README: Beyond one machine)")
    ray.add_argument("--ray", metavar="ADDRESS", default=env("RAY_ADDRESS"),
                     help="auto, HOST:6379, ray://HOST:10001 or local ($RAY_ADDRESS; default: this machine only)")
    for name, kind, what in RAY_FLAGS:
        ray.add_argument(f"--ray-{name}", type=kind, default=env(f"STUDIO_RAY_{name.upper()}"), metavar="N",
                         help=f"{what} ($STUDIO_RAY_{name.upper()})")
    limits = p.add_argument_group("limits of one request (default: none on a private desktop, the public ones "
                                  "with --public or --classroom)")
    for name, kind, what in LIMIT_FLAGS:
        limits.add_argument(FLAGS[name], type=kind, default=env(f"STUDIO_{name.upper()}"), metavar="N",
                            help=f"{what} (${'STUDIO_' + name.upper()})")
    args = p.parse_args(argv)
    if args.memory_budget is not None:
        args.memory_budget = float(args.memory_budget)
    for name, kind, _ in LIMIT_FLAGS:
        if getattr(args, name) is not None:
            setattr(args, name, kind(getattr(args, name)))
    if args.classroom and not (args.users or args.password):
        p.error("--classroom needs logins: --users FILE (name:password lines) or --password SECRET")
    return args


def deployment(args: argparse.Namespace) -> Deployment:
    """Who this studio serves, from the flags: private by default; --public or --classroom share it."""
    mode = "classroom" if args.classroom else "public" if args.public else "private"
    base = Limits.public() if mode != "private" else Limits()
    limits = replace(base, **{name: getattr(args, name) for name, _, _ in LIMIT_FLAGS
                              if getattr(args, name) is not None})
    roots = tuple(args.data_root) if args.data_root or mode != "private" else (Path("/"),)
    safety = (args.safety_checker or ("on" if mode != "private" else "off")) == "on"
    return Deployment(mode, limits, frozenset(n.strip() for n in args.admin.split(",") if n.strip()),
                      session_ttl=args.session_ttl * 3600, data_roots=roots, safety_checker=safety)


def logins(args: argparse.Namespace) -> Callable[[str, str], bool] | None:
    """Gradio's login check for a classroom: a users file, or one class password (and the admins' own)."""
    if not args.classroom:
        return None
    users = dict(line.strip().split(":", 1) for line in args.users.read_text().splitlines()
                 if ":" in line) if args.users else {}
    admins = {n.strip() for n in args.admin.split(",") if n.strip()}

    def check(name: str, password: str) -> bool:
        if name in users:
            return secrets.compare_digest(users[name], password)
        if not args.password or not name.strip():
            return False
        secret = args.admin_password if name in admins else args.password
        return bool(secret) and secrets.compare_digest(secret, password)

    return check


def build_app(manager: ModelManager, model: str, outputs: Path, gpu: GpuPolicy | None = None,
              where: Deployment | None = None, cluster: Cluster | None = None, preview_every: int = 5) -> gr.Blocks:
    takes_images = (SDEditTab, P2PTab, EditTab, IP2PTab, ControlTab, ClassifyTab)
    ctx = StudioContext(manager, model, outputs, send_to={tab.TAB_ID: tab.LABEL for tab in takes_images},
                        gpu=gpu or GpuPolicy(),
                        deployment=where or Deployment(), cluster=ClusterRuns(cluster) if cluster else None,
                        preview_every=preview_every)
    source = manager.resolve(model)
    with gr.Blocks(title="Diffusion Studio") as demo:
        gr.Markdown(f"# Diffusion Studio\nModel: **{source.name}** · {describe(manager.device)}")
        if source.note:
            gr.Markdown(f"⚠️ {source.note}", elem_id="model-note")
        if where and where.mode == "classroom":
            notes = gr.Markdown(elem_id="class-notes")
            gr.Timer(10.0).tick(lambda: ctx.notes, None, notes, api_name=False, queue=False)
            demo.load(lambda: ctx.notes, None, notes, api_name=False, queue=False)
        restore = RestoreBar(ctx, LoraBar(ctx))
        SettingsBar(ctx)
        with gr.Tabs() as tabs:
            GenerateTab(ctx)
            SDEditTab(ctx)
            P2PTab(ctx)
            EditTab(ctx)
            IP2PTab(ctx)
            ControlTab(ctx)
            ClassifyTab(ctx)
            TrainTab(ctx)
            if where and where.mode == "classroom":
                classroom = ClassroomTab(ctx)
                demo.load(classroom.visibility, None, classroom.tab, api_name=False, queue=False)
        wire_send_to(ctx, tabs)
        restore.wire(tabs)
        demo.unload(ctx.end_session)
    return demo


def start_manager(args: argparse.Namespace, gpu: GpuPolicy, where: Deployment | None = None) -> ModelManager:
    """The model manager; on ZeroGPU (or with --preload) with its models loaded now: a ZeroGPU job runs in a worker
    forked from this process, so what a job loads there is gone after it. ZeroGPU does not support torch.compile."""
    manager = ModelManager(args.device, memory_budget_gb=args.memory_budget, offline=args.offline,
                           allow_pickle=args.allow_pickle, compile=args.compile and not gpu.zero,
                           annotators_dir=args.annotators, screen=bool(where and where.safety_checker),
                           vae_tiling=args.vae_tiling)
    preload = [name.strip() for name in args.preload.split(",") if name.strip()]
    if gpu.zero or preload:
        manager.base(args.model)
        for name in preload:
            instruct = (manager.catalog.find(name) or ("",))[0] == INSTRUCT
            (manager.instruct_unet if instruct else manager.component)(name)
    return manager


def queued(demo: gr.Blocks) -> gr.Blocks:
    """The app's queue: GPU jobs take turns in the studio's own fair queue (one per session), so Gradio lets up to
    QUEUE of them wait there at once; beyond that, Gradio says the queue is full."""
    return demo.queue(max_size=QUEUE, default_concurrency_limit=QUEUE)


def launch_settings(args: argparse.Namespace, where: Deployment) -> dict:
    """Gradio's launch options. The outputs folder is not among the served paths: a handler serves each file to
    the session it belongs to (StudioContext.served)."""
    limit = where.limits.max_upload_mb
    return dict(server_name=args.host, server_port=args.port, share=args.share, auth=logins(args),
                auth_message="Log in with the name and password your teacher gave you." if args.classroom else None,
                max_file_size=f"{limit:g}mb" if limit else None, theme=gr.themes.Soft(), css=CSS,
                head=CRISP_SMALL_IMAGES)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gpu = GpuPolicy.detect(max_seconds=args.gpu_seconds)
    where = deployment(args)
    manager = start_manager(args, gpu, where)
    cluster = Cluster.configured(args.ray, workers=args.ray_workers, cpus=args.ray_cpus, gpus=args.ray_gpus)
    demo = build_app(manager, args.model, args.outputs, gpu, where, cluster, args.preview_every)
    queued(demo).launch(**launch_settings(args, where))


if __name__ == "__main__":
    main()
