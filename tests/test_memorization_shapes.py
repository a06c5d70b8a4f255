"""The memorization probe (Carlini et al. 2023) on the shipped Shapes model: a DreamBooth LoRA fitted hard to five
renders (no prior, no flips) reproduces them, pixel for pixel up to the VAE, in many samples, where the base model
never comes near them; and the base model's samples are no closer to its own 20,000 training scenes than fresh
scenes of the same world are (it generalises rather than copies)."""

from statistics import median

import pytest
from conftest import one_thread

from studio.memorization import ImageSet, MemorizationParams, WorldIndex, run_memorization
from studio.shapes.concepts import concept_images
from studio.trainer import TrainParams, train

pytestmark = pytest.mark.slow
SEEDS = 20
# A DreamBooth LoRA without what keeps it general: no prior, no mirrored views, no weight average.
OVERFIT = dict(instance_prompt="a sks star", class_prompt="a star", resolution=64, steps=1000, lr=1e-3, rank=16,
               alpha=16, train_text_encoder=True, min_snr_gamma=5, flip=False, validate_every=0, checkpoint_every=0,
               validation_prompts=["a sks star"])


@pytest.fixture(scope="module")
def overfit(manager, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras") / "sks-overfit"
    with one_thread():
        return train(manager, "shapes", folder, TrainParams(**OVERFIT), concept_images("green cross"))


def probed(manager, reference, loras=None):
    with manager.lend("shapes", loras=loras) as pipe:
        pipe.set_progress_bar_config(disable=True)
        return run_memorization(pipe, reference, MemorizationParams(prompt="a sks star", n_samples=SEEDS, seed=100))


def test_a_lora_on_five_images_reproduces_them_and_the_base_model_does_not(manager, overfit):
    """Measured (CPU, one thread, seeds 100-119, threshold 0.04 RMS): with the LoRA 6 of 20 samples are copies of a
    render (nearest 0.022, median 0.102), the base model 0 of 20 (nearest 0.087, median 0.202). The preset's LoRA
    with the prior and flips copies 1 of 20: it draws the cross at cells and on backgrounds none of the five has."""
    five = ImageSet.from_folder(overfit / "instance")
    lora, base = probed(manager, five, [(overfit, 1.0)]), probed(manager, five)
    assert base.fraction_copied == 0, base.distances
    assert lora.fraction_copied >= 0.15, lora.distances
    assert lora.median < 0.75 * base.median, (lora.median, base.median)


def test_the_base_model_is_no_closer_to_its_training_set_than_fresh_scenes(manager):
    """Measured: the base model's samples of "a sks star" are at median 0.057 of the world's training scenes, 25%
    under the threshold; 200 fresh world scenes at median 0.044, 48% under it (the world repeats simple scenes)."""
    base = probed(manager, ImageSet(concept_images("green cross")))
    world = WorldIndex().build()
    to_world = [m.distance for m in world.nearest(base.samples)]
    held_out = world.baseline().distances
    assert median(to_world) >= 0.9 * median(held_out), (to_world, held_out)
    copied = [sum(d < base.threshold for d in ds) / len(ds) for ds in (to_world, held_out)]
    assert copied[0] <= copied[1] + 0.1, copied
