"""The memorization probe (Carlini et al. 2023) on synthetic images and the tiny model: the distance, the exact
world index, reference folders, the numbers behind the default threshold, input checks, cancel, and a whole run."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from studio.jobs import Cancelled
from studio.memorization import (THRESHOLD, ImageSet, MemorizationParams, WorldIndex, distance, draw_result,
                                 held_out_distances, run_memorization)
from studio.shapes.concepts import concept_images
from studio.shapes.world import POSITIONS, SHAPES, ShapeSpec, render, sample_scene


def cross(cell="center", size="large", background="gray", shape="cross", colour="green") -> Image.Image:
    return render([ShapeSpec(shape, colour, cell, size)], (background,))[0]


def test_distance_is_zero_for_the_same_picture_and_grows_with_the_change():
    a = cross()
    assert distance(a, a) == 0
    assert distance(a, a.resize((256, 256), Image.NEAREST)) == 0, "compared at 64x64 whatever the size"
    assert distance(Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")) == 1
    resized, moved, recoloured = distance(a, cross(size="small")), distance(a, cross("top")), \
        distance(a, cross(background="white"))
    assert 0 < resized < moved < recoloured < 1
    assert distance(a, cross("top")) == distance(cross("top"), a)


def test_the_default_threshold_lies_between_the_vae_and_a_changed_scene(manager):
    """The numbers in studio/memorization.py's docstring: the Shapes VAE moves a render by at most 0.028; any one
    attribute of a cross render changed moves it at least 0.044; two of the five renders are at least 0.107 apart."""
    five = concept_images("green cross")
    assert min(distance(a, b) for a, b in itertools.combinations(five, 2)) > 0.1
    changed = []
    for background, (cell, (row, col)) in itertools.product(("white", "gray", "black"), POSITIONS.items()):
        a = cross(cell, background=background)
        changed.append(distance(a, cross(cell, "small", background)))
        changed += [distance(a, cross(cell, background=background, shape=s)) for s in SHAPES]
        changed += [distance(a, cross(other, background=background)) for other, (r, c) in POSITIONS.items()
                    if abs(r - row) + abs(c - col) == 1]
    assert THRESHOLD < min(changed) < 0.05, min(changed)
    with manager.lend("shapes") as pipe:
        x = torch.stack([torch.from_numpy(np.asarray(i, np.float32) / 127.5 - 1).permute(2, 0, 1) for i in five])
        with torch.no_grad():
            y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    through_vae = ((x - y) / 2).pow(2).mean((1, 2, 3)).sqrt()
    assert float(through_vae.max()) < THRESHOLD - 0.005, through_vae


@pytest.fixture(scope="module")
def small_world():
    return WorldIndex(2000).build()


def test_the_world_index_finds_the_seed_of_a_training_scene(small_world):
    found = small_world.nearest([sample_scene(1234).image, sample_scene(7).image])
    for seed, match in zip((1234, 7), found):
        assert match.distance == 0
        assert match.key <= seed, "ties go to the lowest seed"
        assert np.array_equal(np.asarray(match.image), np.asarray(sample_scene(seed).image))
        assert match.name == f"scene {match.key}"
    held_out = small_world.nearest([sample_scene(3, split="held_out").image])[0]
    assert held_out.distance > 0, "a held-out (colour, shape, position) is never in the training set"


def test_the_world_index_is_exact_against_brute_force():
    index = WorldIndex(300).build()
    scenes = [sample_scene(i).image for i in range(300)]
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.clip(np.asarray(scenes[5], np.float32) + rng.normal(0, 40, (64, 64, 3)), 0, 255)
                            .astype(np.uint8))
    queries = [noisy, sample_scene(10_000_001).image, cross("bottom left", background="white")]
    for query, match in zip(queries, index.nearest(queries)):
        assert match.distance == pytest.approx(min(distance(query, s) for s in scenes), abs=1e-6)


def test_held_out_scenes_are_compared_with_the_training_set(small_world):
    baseline = held_out_distances(small_world, n=20)
    assert len(baseline.distances) == 20 and all(0 <= d <= 1 for d in baseline.distances)
    assert "held-out" in baseline.label


def test_an_image_folder_is_a_reference_with_a_leave_one_out_baseline(tmp_path):
    five = concept_images("green cross")
    for i, image in enumerate(five):
        image.save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    reference = ImageSet.from_folder(tmp_path)
    match = reference.nearest([five[3]])[0]
    assert (match.name, match.key, match.distance) == ("03.png", 3, 0)
    assert len(reference.baseline().distances) == 5 and min(reference.baseline().distances) > 0.1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        ImageSet.from_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        ImageSet.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="empty"):
        ImageSet([])


@pytest.mark.parametrize("bad, match", [(dict(n_samples=0), "n samples must be between"),
                                        (dict(n_samples=201), "n samples must be between"),
                                        (dict(threshold=0), "threshold must be between"),
                                        (dict(threshold=1.5), "threshold must be between"),
                                        (dict(steps=0), "steps must be between"),
                                        (dict(n_samples=2.5), "whole number"),
                                        (dict(scheduler="PLMS"), "Unknown scheduler")])
def test_bad_parameters_are_refused_with_a_message(bad, match):
    with pytest.raises(ValueError, match=match):
        MemorizationParams(prompt="a sks star", **bad)


def test_cancel_stops_the_samples_and_the_index_build(manager):
    steps = []
    with manager.lend("tiny") as pipe:
        with pytest.raises(Cancelled):
            run_memorization(pipe, ImageSet(concept_images("green cross")),
                             MemorizationParams(prompt="a cross", n_samples=3, steps=10),
                             on_step=lambda i, n: steps.append(i), should_stop=lambda: len(steps) >= 2)
    assert len(steps) == 2
    index = WorldIndex(5000)
    with pytest.raises(Cancelled):
        index.build(should_stop=lambda: True)
    assert not index.built, "a cancelled build keeps nothing"


def test_the_tiny_model_runs_the_probe_end_to_end(manager):
    reference = ImageSet(concept_images("green cross"), label="the five renders")
    seen = []
    with manager.lend("tiny") as pipe:
        pipe.set_progress_bar_config(disable=True)
        params = MemorizationParams(prompt="a green cross", n_samples=10, steps=2, seed=3)
        result = run_memorization(pipe, reference, params, on_step=lambda i, n: seen.append((i, n)))
    assert len(result.samples) == len(result.matches) == 10 and result.seed == 3
    assert seen[-1] == (4, 4) and [i for i, _ in seen] == [1, 2, 3, 4], "steps over both batches of samples"
    distances = [result.matches[i].distance for i in result.pairs]
    assert distances == sorted(distances) and 0 <= result.fraction_copied <= 1
    histogram = result.histogram()
    assert sum(histogram.samples) == 10 and sum(histogram.baseline) == 5
    assert len(histogram.edges) == len(histogram.samples) + 1 and histogram.edges[-1] >= max(distances)
    picture = draw_result(result)
    assert picture.mode == "RGB" and picture.width >= 6 * 128


def test_the_train_tabs_section_probes_a_server_folder_and_refuses_one_outside_the_data_roots(manager, tmp_path):
    import gradio as gr

    from tabs import Deployment, StudioContext
    from tabs.memorization import MemorizationSection

    data = tmp_path / "data"
    data.mkdir()
    for i, image in enumerate(concept_images("green cross")):
        image.save(data / f"{i}.png")
    ctx = StudioContext(manager, "tiny", tmp_path / "out", deployment=Deployment(data_roots=(data,)))
    with gr.Blocks():
        section = MemorizationSection(ctx)
    assert [key for _, key in section.reference.choices] == ["lora", "folder"], "the world only for Shapes"
    values = dict(lora=None, scale=1.0, reference="folder", folder=str(data), prompt="a green cross", n_samples=3,
                  seed=0, steps=2, cfg=7.5, threshold=0.04)
    request, progress = SimpleNamespace(session_hash="s1", username=None), lambda *a, **k: None
    picture, summary = section.probe(values, request, progress)
    assert picture.width > 0 and "of 3 samples" in summary and "nearest other one" in summary
    for bad, message in [(dict(folder=str(tmp_path)), "outside the folders"), (dict(reference="lora"), "Pick a LoRA"),
                         (dict(n_samples=0), "n samples")]:
        with pytest.raises(gr.Error, match=message):
            section.probe({**values, **bad}, request, progress)
