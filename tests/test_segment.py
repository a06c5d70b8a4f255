"""The ADE20K seg preprocessor: palette data, a tiny random-weight UperNet, and the OpenCV fallback."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import SegformerImageProcessor

from studio.segment import (ADE20K_PALETTE, PALETTE_PATH, Segmenter, colour_regions, colourise, load_segmenter,
                            segment, segment_ids)
from tests.random_annotators import save_tiny_upernet


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    return load_segmenter(save_tiny_upernet(tmp_path_factory.mktemp("upernet")), local_files_only=True)


def palette_set() -> set[tuple[int, ...]]:
    return {tuple(c) for c in ADE20K_PALETTE.tolist()}


def test_palette_is_mmsegmentations_ade20k() -> None:
    assert ADE20K_PALETTE.shape == (150, 3) and ADE20K_PALETTE.dtype == np.uint8
    assert ADE20K_PALETTE[:5].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3]]
    assert ADE20K_PALETTE[149].tolist() == [92, 0, 255]
    # The original palette repeats one colour (road and skyscraper); every other class has its own.
    assert len(palette_set()) == 149
    assert ADE20K_PALETTE[6].tolist() == ADE20K_PALETTE[48].tolist() == [140, 140, 140]
    data = json.loads(PALETTE_PATH.read_text())
    assert "MMSegmentation" in data["source"] and data["license"] == "Apache-2.0"
    assert [c["id"] for c in data["classes"]] == list(range(150))
    assert data["classes"][0]["name"] == "wall" and data["classes"][149]["name"] == "flag"


@pytest.mark.parametrize("size", [(97, 130), (64, 64), (33, 201)])
def test_segment_returns_palette_colours_at_input_size(segmenter: Segmenter, size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    seg = segment(image, segmenter)
    assert seg.shape == (*size, 3) and seg.dtype == np.uint8
    assert {tuple(c) for c in seg.reshape(-1, 3).tolist()} <= palette_set()


def test_segment_ids_match_the_processors_post_processing(segmenter: Segmenter) -> None:
    image = np.random.default_rng(1).integers(0, 256, (97, 130, 3), dtype=np.uint8)
    ids = segment_ids(image, segmenter)
    with torch.no_grad():
        outputs = segmenter.model(**segmenter.processor(images=image, return_tensors="pt"))
    expected = segmenter.processor.post_process_semantic_segmentation(outputs, target_sizes=[(97, 130)])[0]
    assert ids.shape == (97, 130)
    np.testing.assert_array_equal(ids, expected.numpy())
    np.testing.assert_array_equal(colourise(ids), ADE20K_PALETTE[ids])


def test_missing_processor_config_falls_back_to_upernets_processor(tmp_path: Path) -> None:
    segmenter = load_segmenter(save_tiny_upernet(tmp_path, with_processor=False), local_files_only=True)
    assert isinstance(segmenter.processor, SegformerImageProcessor)
    assert segmenter.processor.size == {"height": 512, "width": 512}
    assert segment(np.zeros((40, 30, 3), np.uint8), segmenter).shape == (40, 30, 3)


def test_load_from_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_segmenter(tmp_path, local_files_only=True)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3))])
def test_bad_images_raise(segmenter: Segmenter, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        segment(bad, segmenter)
    with pytest.raises(ValueError):
        colour_regions(bad)


def test_colour_regions_uses_at_most_k_distinct_palette_colours_deterministically() -> None:
    image = np.random.default_rng(2).integers(0, 256, (61, 87, 3), dtype=np.uint8)
    regions = colour_regions(image, k=5, seed=3)
    assert regions.shape == image.shape and regions.dtype == np.uint8
    colours = {tuple(c) for c in regions.reshape(-1, 3).tolist()}
    assert len(colours) <= 5 and colours <= palette_set()
    np.testing.assert_array_equal(regions, colour_regions(image, k=5, seed=3))


def test_colour_regions_splits_two_colours_along_their_boundary() -> None:
    image = np.zeros((40, 61, 3), np.uint8)
    image[:, :30] = (255, 0, 0)
    image[:, 30:] = (0, 0, 255)
    regions = colour_regions(image, k=2)
    # The larger (blue) half gets the first palette colour, the red half the second.
    assert (regions[:, 30:] == ADE20K_PALETTE[0]).all()
    assert (regions[:, :30] == ADE20K_PALETTE[1]).all()


def test_colour_regions_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        colour_regions(np.zeros((8, 8, 3), np.uint8), k=0)
