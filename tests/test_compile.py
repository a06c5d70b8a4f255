"""`--compile` by regions survives a tour of every tab: a bounded set of graphs, no recompiling when a tab is
revisited with another batch or size, LoRAs that still apply, and the same pixels as the eager model. Counted with
torch's CompileCounter backend, which compiles nothing but counts what the compiler captures (a CPU is enough)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.testing import CompileCounter

from studio.classify import ClassifyParams, classify
from studio.generate import GenerateParams, run_generate
from studio.models import ModelManager
from studio.p2p import P2PParams, run_p2p
from studio.sdedit import SDEditParams, run_sdedit
from studio.trainer import TrainParams, train


def generate(manager, loras=None, **changes):
    params = GenerateParams("a red circle", **{"seed": 0, "steps": 3, "width": 64, "height": 64, **changes})
    with manager.lend("tiny", loras=loras) as pipe:
        return np.stack([np.asarray(i) for i in run_generate(pipe, params).images])


def same_picture(a, b):
    # Captured graphs may sum floats in another order than eager kernels: a pixel can round one level apart.
    diff = np.abs(a.astype(int) - b.astype(int))
    return diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.slow
def test_a_tour_of_the_tabs_compiles_a_bounded_set_of_graphs(model_cache, manager, tmp_path):
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = ModelManager("cpu", cache_dir=model_cache, compile=counter)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
              for i in range(3)]
    lora = train(manager, "tiny", tmp_path / "lora", TrainParams(instance_prompt="a sks dog", class_prompt="a dog",
                                                                  resolution=64, steps=2, validate_every=0,
                                                                  checkpoint_every=0), images)
    # Captured graphs may order float sums differently from eager kernels: a pixel can round one level apart.
    assert same_picture(generate(compiled), generate(manager)), "compiled or not, the same picture"
    first = counter.frame_count
    generate(compiled, n_images=3)
    generate(compiled, width=96, height=96)
    assert counter.frame_count == first, "a new batch or size reuses the graphs (dynamic shapes)"
    with compiled.lend("tiny") as pipe:
        run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=5))
        run_sdedit(pipe, images[0], SDEditParams("a red circle", steps=10))
        classify(pipe, images[1], ["cat", "dog", "fox"], ClassifyParams())
    with_lora = generate(compiled, loras=[(lora, 1.0)])  # the whole-model compile crashed here
    assert same_picture(with_lora, generate(manager, loras=[(lora, 1.0)])), "the LoRA applies to the compiled UNet"
    toured = counter.frame_count
    generate(compiled)
    with compiled.lend("tiny") as pipe:
        run_p2p(pipe, P2PParams("a red circle", "a blue circle", steps=5))
    assert counter.frame_count == toured, "revisiting a tab compiles nothing new"
    assert toured <= 30, f"{toured} graphs for one tour"
