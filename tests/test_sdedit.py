"""SDEdit on the tiny model: sizes, seeds, t0 mapping, exact masks of any size and mode, bad input, cancel."""

import numpy as np
import pytest
from PIL import Image

from studio.jobs import Cancelled
from studio.sdedit import MAX_SIDE, SDEditParams, run_sdedit

FAST = dict(prompt="a red circle on the left", steps=10, t0=0.6, seed=1)


def guide(size=(64, 64), mode="RGB"):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return image.convert(mode)


def edit(manager, image=None, mask=None, **kwargs):
    with manager.lend("tiny") as pipe:
        return run_sdedit(pipe, image or guide(), SDEditParams(**{**FAST, **kwargs}), mask=mask)


def test_same_seed_same_pixels(manager):
    a, b, c = edit(manager), edit(manager), edit(manager, seed=2)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("t0, steps, timestep", [(1.0, 50, 981), (0.5, 50, 481), (0.6, 10, 501), (0.05, 10, 1)])
def test_t0_maps_to_the_timestep_where_denoising_starts(manager, t0, steps, timestep):
    assert edit(manager, t0=t0, steps=steps).t0_timestep == timestep


def test_runs_t0_fraction_of_the_steps_times_k_passes(manager):
    counts = []
    with manager.lend("tiny") as pipe:
        run_sdedit(pipe, guide(), SDEditParams(**{**FAST, "repeats": 3}), on_step=lambda i, n: counts.append((i, n)))
    assert counts[-1] == (18, 18)  # round(10 * 0.6) = 6 steps, 3 times


def test_outputs_and_intermediate_views(manager):
    result = edit(manager, image=guide((96, 72)))
    assert result.image.size == result.noised.size == (96, 72)
    assert 1 <= len(result.previews) <= 4 and result.previews[-1][0] == 6
    assert not result.warnings


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
@pytest.mark.parametrize("feather", [0, 6])
def test_pixels_outside_the_mask_are_exactly_the_input(manager, mode, feather):
    source = guide((80, 64))
    mask = np.zeros((64, 80), np.uint8)
    mask[10:40, 20:60] = 255
    result = edit(manager, image=source, mask=Image.fromarray(mask).convert(mode), feather=feather)
    out, inp = np.asarray(result.image), np.asarray(source)
    assert np.array_equal(out[mask == 0], inp[mask == 0])
    assert not np.array_equal(out[mask > 0], inp[mask > 0]), "inside the mask the model did edit"


def test_mask_of_another_size_is_stretched_with_a_note(manager):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255  # the right half
    result = edit(manager, mask=mask)
    assert any("stretched to fit" in w for w in result.warnings)
    assert np.array_equal(np.asarray(result.image)[:, :32], np.asarray(guide())[:, :32])


def test_rgba_grayscale_odd_and_huge_guides(manager):
    assert "transparency" in edit(manager, image=guide(mode="RGBA")).warnings[0]
    assert edit(manager, image=guide(mode="L")).image.mode == "RGB"
    odd = edit(manager, image=guide((70, 100)))
    assert odd.image.size == (72, 96) and any("rounded" in w for w in odd.warnings)
    huge = edit(manager, image=guide((MAX_SIDE * 2, 600)), steps=5, t0=0.2)
    assert max(huge.image.size) <= MAX_SIDE and any("scaled down" in w for w in huge.warnings)


@pytest.mark.parametrize("bad, match", [(dict(t0=0.0), "t0 must be between 0.05 and 1"), (dict(t0=1.5), "t0 must be"),
                                        (dict(repeats=0), "repeats must be between 1 and 5")])
def test_bad_parameters(manager, bad, match):
    with pytest.raises(ValueError, match=match):
        edit(manager, **bad)


def test_tiny_and_empty_masks_are_refused(manager):
    with pytest.raises(ValueError, match="at least 64 pixels"):
        edit(manager, image=guide((32, 32)))
    with pytest.raises(ValueError, match="mask is empty"):
        edit(manager, mask=np.zeros((64, 64), np.uint8))


def test_cancel(manager):
    with manager.lend("tiny") as pipe, pytest.raises(Cancelled):
        run_sdedit(pipe, guide(), SDEditParams(**FAST), should_stop=lambda: True)
