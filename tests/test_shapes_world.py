"""The Shapes world and its detector: deterministic scenes, faithful captions, and a detector that reads them back."""

import numpy as np
import pytest

from studio.shapes.detect import detect
from studio.shapes.world import COLOURS, HELD_OUT, SHAPES, caption_for, sample_scene


def test_scenes_are_a_pure_function_of_the_seed():
    a, b = sample_scene(42), sample_scene(42)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.caption == b.caption
    assert not np.array_equal(np.asarray(a.image), np.asarray(sample_scene(43).image))


def test_caption_names_every_shape_with_its_attributes():
    scene = sample_scene(5, n_shapes=3)
    for spec in scene.shapes:
        assert f"{spec.size} {spec.colour} {spec.shape}" in scene.caption
    assert scene.caption.endswith(f"on a {' and '.join(scene.background)} background")


def test_short_captions_vary_but_always_keep_colour_and_shape():
    import random

    scene = sample_scene(9, n_shapes=1)
    spec = scene.shapes[0]
    variants = {caption_for(scene.shapes, scene.background, random.Random(i)) for i in range(40)}
    assert len(variants) >= 4
    assert f"{spec.colour} {spec.shape}" in min(variants, key=len)


def test_training_split_never_shows_a_held_out_triple_and_held_out_split_always_does():
    for seed in range(300):
        assert not {s.triple for s in sample_scene(seed).shapes} & HELD_OUT
        assert sample_scene(seed, split="held_out").shapes[0].triple in HELD_OUT
    assert 0 < len(HELD_OUT) < len(COLOURS) * len(SHAPES) * 9 / 5


def test_masks_are_exact_ground_truth():
    scene = sample_scene(3, n_shapes=2)
    pixels = np.asarray(scene.image).astype(int)
    for spec, mask in zip(scene.shapes, scene.masks):
        inside = pixels[mask & ~np.any([m for m in scene.masks if m is not mask], axis=0)]
        assert np.abs(inside.mean(0) - COLOURS[spec.colour]).max() < 40
    assert not np.logical_and(*scene.masks).any(), "shapes never overlap"


def test_detector_reads_ground_truth_renders():
    """The bar the model is measured with must itself be right: every shape of 400 scenes, all attributes."""
    wrong = []
    for seed in range(400):
        scene = sample_scene(seed)
        found = {d.position: d for d in detect(scene.image)}
        assert len(found) == len(scene.shapes), scene.caption
        for spec in scene.shapes:
            d = found[spec.position]
            if (d.shape, d.colour) != (spec.shape, spec.colour):
                wrong.append((scene.caption, d.shape, d.colour))
    assert len(wrong) <= 2, wrong


def test_detector_finds_nothing_on_a_blank_image_and_survives_noise():
    from PIL import Image

    assert detect(Image.new("RGB", (64, 64), "white")) == []
    noisy = np.clip(np.asarray(sample_scene(1, n_shapes=1).image) + np.random.default_rng(0).normal(0, 12, (64, 64, 3)),
                    0, 255).astype(np.uint8)
    spec = sample_scene(1, n_shapes=1).shapes[0]
    best = detect(noisy)[0]
    assert (best.colour, best.shape, best.position) == (spec.colour, spec.shape, spec.position)


@pytest.mark.slow
def test_training_stages_run_resume_and_export(tmp_path):
    """Every stage of the training script, a few steps each, on a few scenes: resumable, exportable, loadable."""
    from diffusers import ControlNetModel, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, T2IAdapter
    from PIL import Image

    from studio.shapes.train import main
    import torch

    common = ["--batch", "2", "--scenes", "16", "--work", str(tmp_path / "work"), "--save-every", "2"]
    for stage in ("vae", "unet", "controlnet", "adapter", "ip2p"):
        main([stage, "--steps", "2", *common])
    main(["unet", "--steps", "4", *common])  # resumes at step 2
    assert len((tmp_path / "work" / "unet.csv").read_text().splitlines()) == 4
    main(["export", *common, "--out", str(tmp_path / "out")])
    main(["export", *common, "--out", str(tmp_path / "out")])  # again, over its own links
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out" / "sd", use_safetensors=True, dtype=torch.float32)
    assert pipe("a red circle", num_inference_steps=2, height=64, width=64).images[0].size == (64, 64)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ControlNetModel.from_pretrained(tmp_path / "out" / "controlnet")
    T2IAdapter.from_pretrained(tmp_path / "out" / "t2i-adapter")
    edit = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "out" / "ip2p", dtype=torch.float32)
    assert edit.unet.config.in_channels == 8 and (tmp_path / "out" / "ip2p" / "vae").is_symlink()
    assert edit("make it blue", image=Image.new("RGB", (64, 64)), num_inference_steps=2).images[0].size == (64, 64)
    # A fresh machine goes on from the shipped family: the step count continues from the export.
    fresh = ["--batch", "2", "--scenes", "16", "--work", str(tmp_path / "fresh"), "--init", str(tmp_path / "out")]
    main(["unet", "--steps", "6", *fresh])
    assert len((tmp_path / "fresh" / "unet.csv").read_text().splitlines()) == 2  # steps 4 and 5 only
    main(["ip2p", "--steps", "3", *fresh])  # the edit UNet too, from its exported 8-channel weights
    assert len((tmp_path / "fresh" / "ip2p.csv").read_text().splitlines()) == 1
    # ...and can re-export it untouched: the family's prediction type comes along with its weights.
    main(["export", "--work", str(tmp_path / "seeded"), "--init", str(tmp_path / "out"),
          "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "sd" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    # Checkpoints from before the recipe recorded its prediction type were ε: export must not label them v.
    checkpoint = tmp_path / "work" / "unet.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state["prediction_type"]
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit, match="predicts epsilon"):
        main(["export", *common, "--out", str(tmp_path / "stale")])


@pytest.mark.slow
def test_evaluation_script_runs_end_to_end_and_writes_the_card(tmp_path, model_cache, monkeypatch):
    """On the tiny random family (scores near chance): every row, both IoU lines, and the card block replaced."""
    from functools import partial

    from studio.models import ModelManager
    from studio.shapes import evaluate

    monkeypatch.setattr(evaluate, "ModelManager", partial(ModelManager, cache_dir=model_cache))
    card = tmp_path / "README.md"
    card.write_text(f"# card\n{evaluate.CARD_START}\nold\n{evaluate.CARD_END}\ntail\n")
    evaluate.main(["--model", "tiny", "--n", "4", "--steps", "2", "--controlnet", "tiny-controlnet",
                   "--adapter", "tiny-t2i-adapter", "--card", str(card)])
    text = card.read_text()
    assert "| 1 shape | 4 |" in text and "ControlNet silhouette IoU" in text and "T2I-Adapter silhouette IoU" in text
    assert "old" not in text and text.endswith("tail\n")
