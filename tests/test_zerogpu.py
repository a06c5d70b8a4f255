"""ZeroGPU, as far as the real `spaces` package lets a CPU machine go: in ZeroGPU mode every GPU event is wrapped in
`@spaces.GPU` with a bounded duration computed from its request, the models are loaded at start-up, and a training
job run as a series of GPU calls ends with the same LoRA as one uninterrupted run."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from safetensors.torch import load_file

from studio.lora import WEIGHTS
from studio.shapes.concepts import concept_images
from studio.trainer import TrainParams, train
from tabs import StudioContext
from tabs.gpu import GpuPolicy

ROOT = Path(__file__).resolve().parents[1]

# Runs in its own process: `spaces` reads SPACES_ZERO_GPU when it is imported, and patches torch then.
ZEROGPU_APP = r"""
import json, sys
import app
from tabs.gpu import GpuPolicy
gpu = GpuPolicy.detect()
args = app.parse_args(["--compile"])
manager = app.start_manager(args, gpu)
loaded = manager.load_count
demo = app.build_app(manager, args.model, app.Path(sys.argv[1]), gpu)
events = []
for dep in demo.fns.values():
    if dep.concurrency_id in ("gpu", "train", "preview"):
        values = [getattr(block, "value", None) for block in dep.inputs]
        seconds = dep.fn.gpu_seconds(*values, None, None) if hasattr(dep.fn, "gpu_seconds") else None
        events.append({"api": dep.api_name, "wrapped": hasattr(dep.fn, "zerogpu"), "seconds": seconds,
                       "streams": dep.concurrency_id == "train"})
generate = next(d.fn for d in demo.fns.values() if d.api_name == "generate")
try:
    generate.gpu_seconds("p", "", 0, 150, 7.5, 2048, 2048, "DPM++ 2M", 8, None, None)
    too_long = None
except Exception as error:
    too_long = str(error)
print(json.dumps({"zero": gpu.zero, "model": args.model, "loaded": loaded, "compile": manager.compile,
                  "device": str(manager.device), "events": events, "too_long": too_long,
                  "bounds": [gpu.min_seconds, gpu.max_seconds]}))
"""


@pytest.mark.slow
def test_in_zerogpu_mode_every_gpu_event_is_wrapped_with_a_bounded_duration(tmp_path, model_cache):
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",
           "STUDIO_MODEL": "tiny", "STUDIO_PRELOAD": "tiny-controlnet", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", ZEROGPU_APP, str(tmp_path / "outputs")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["zero"] and report["device"].startswith("cuda"), "spaces' torch patching was not in effect"
    assert report["loaded"] == 2, "the model and the preloaded ControlNet are loaded before the first request"
    assert report["compile"] is False, "ZeroGPU does not support torch.compile"
    apis = {e["api"] for e in report["events"]}
    assert {"generate", "sdedit", "sdedit_sweep", "p2p", "control", "control_compare", "control_preview",
            "control_all_preprocessors", "classify", "classify_batch", "train_try", "train_start",
            "train_resume", "train_sweep", "lora_import"} <= apis
    lo, hi = report["bounds"]
    for event in report["events"]:
        # Their GPU calls: each share; the memorization probe indexes the world on the CPU before its one GPU call.
        if event["streams"] or event["api"] in ("classify_batch", "train_sweep", "memorization"):
            continue
        assert event["wrapped"], f"{event['api']} runs outside @spaces.GPU"
        assert lo <= event["seconds"] <= hi, event
    assert "needs about" in report["too_long"] and "at most 120 s" in report["too_long"]


class Recorder:
    """Stands in for gr.Progress in a direct call."""

    def __call__(self, *args, **kwargs):
        return None


@pytest.mark.slow
def test_a_training_job_in_gpu_calls_resumes_to_the_lora_of_one_uninterrupted_run(manager, tmp_path, monkeypatch):
    """The ZeroGPU path of the Train tab (here with the decorator a no-op): the prior's class images and the steps
    come in shares of one GPU call each, every share resuming from the checkpoint the last one saved."""
    from tabs.train import TrainTab

    settings = dict(instance_prompt="a sks star", identifier="sks", class_prompt="a star", prior_preservation=True,
                    num_class_images=3, resolution=64, steps=7, rank=4, alpha=4, lr=1e-3, validate_every=0,
                    checkpoint_every=0, seed=3)
    images = concept_images("green cross", n=3)
    files = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    monkeypatch.setattr(GpuPolicy, "chunk_steps", lambda self, *a, **k: 3)  # shares of 3 steps, 3 class images
    ctx = StudioContext(manager, "shapes", tmp_path / "out", gpu=GpuPolicy(zero=True))
    with gr.Blocks():
        tab = TrainTab(ctx)
    values = {"files": files, "name": "shared", "validation_prompts": "", **settings}
    shown = list(tab.start_shares(values, SimpleNamespace(session_hash="s1"), Recorder()))
    assert "drawing images of 'a star', 0 of 3" in shown[0][0]
    steps = [int(s[0].split("step ")[1].split(" of")[0]) for s in shown[1:]]
    assert steps == [0, 3, 6, 7] and "done" in shown[-1][0]
    log = [json.loads(line) for line in (tmp_path / "out/loras/shared/log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 8))

    params = TrainParams(**{**asdict(TrainParams()), **settings})
    train(manager, "shapes", tmp_path / "out/loras/straight", params, images)
    a = load_file(tmp_path / "out/loras/shared" / WEIGHTS)
    b = load_file(tmp_path / "out/loras/straight" / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
