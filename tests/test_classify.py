"""The diffusion classifier on the tiny model: determinism, the adaptive schedule vs exhaustive, costs, bad input,
batch evaluation with resume."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from studio.classify import ClassifyParams, check_classes, classify, classify_batch, plan, timesteps
from studio.jobs import Cancelled

CLASSES = ["red circle", "blue square", "green star", "yellow heart"]


def image(seed: int = 0, size=(64, 64), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def run(manager, img=None, classes=CLASSES, **kwargs):
    with manager.lend("tiny") as pipe:
        return classify(pipe, img or image(), classes, ClassifyParams(**kwargs))


def test_ranking_is_deterministic_for_a_seed(manager):
    a, b = run(manager, seed=3), run(manager, seed=3)
    assert a.ranking == b.ranking
    c = run(manager, seed=4)
    assert [e for _, e in a.ranking] != [e for _, e in c.ranking]


def test_adaptive_schedule_keeping_every_class_ranks_as_exhaustive(manager):
    adaptive = run(manager, stages=[(5, len(CLASSES)), (20, len(CLASSES))])
    exhaustive = run(manager, stages=[(20, 1)])
    assert [c for c, _ in adaptive.ranking] == [c for c, _ in exhaustive.ranking]
    assert adaptive.unet_calls == exhaustive.unet_calls == 20 * len(CLASSES)  # stage 1's samples are reused


def test_cost_estimate_matches_the_calls_spent_and_pruning_saves_calls(manager):
    params = dict(stages=[(5, 2), (20, 1)], templates=["a {}", "a photo of a {}"])
    calls, sizes = plan(len(CLASSES), ClassifyParams(**params))
    assert sizes == [4, 2] and calls == 2 * (4 * 5 + 2 * 15)
    result = run(manager, **params)
    assert result.unet_calls == calls
    assert [len(s.evaluated) for s in result.history] == [4, 2] and len(result.history[-1].kept) == 1
    assert result.label == result.history[-1].kept[0] and len(result.ranking) == len(CLASSES)
    # a pruned class was measured at stage 1's timesteps only
    pruned = next(c for c in CLASSES if c not in result.history[1].evaluated)
    assert len(result.errors[pruned]) == 5


def test_stage_timesteps_are_evenly_spaced_and_nested():
    every, per_stage = timesteps([(10, 5), (50, 1)])
    assert len(every) == 50 and every[0] == 10 and np.all(np.diff(every) == 20)
    assert set(per_stage[0]) <= set(per_stage[1]) and len(per_stage[0]) == 10


@pytest.mark.parametrize("loss", ["l1", "l2", "huber"])
def test_every_loss_runs(manager, loss):
    assert len(run(manager, loss=loss, stages=[(4, 1)]).ranking) == len(CLASSES)


@pytest.mark.parametrize("img", [image(size=(200, 90)), image(mode="L"), image(mode="RGBA"), image(size=(30, 30))])
def test_any_image_shape_and_mode_is_accepted(manager, img):
    assert run(manager, img=img, stages=[(2, 1)]).label in CLASSES


@pytest.mark.parametrize("classes, match", [(["cat"], "at least two"), (["cat", "dog", "Cat"], "repeated: Cat, cat"),
                                            (["", " ", "cat"], "at least two")])
def test_bad_class_lists_are_refused(classes, match):
    with pytest.raises(ValueError, match=match):
        check_classes(classes)


@pytest.mark.parametrize("kwargs, match", [(dict(templates=["a photo"]), "needs a"), (dict(loss="l3"), "Unknown loss"),
                                           (dict(stages=[(10, 2), (5, 1)]), "at least as many"),
                                           (dict(stages=[(0, 1)]), "at least one")])
def test_bad_settings_are_refused(manager, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(manager, **kwargs)


def test_cancel_stops_between_batches(manager):
    with manager.lend("tiny") as pipe, pytest.raises(Cancelled):
        classify(pipe, image(), CLASSES, ClassifyParams(batch=4), should_stop=lambda: True)


def dataset(path):
    with zipfile.ZipFile(path, "w") as z:
        for i, cls in enumerate(["red_circle", "blue_square"]):
            for j in range(2):
                buffer = io.BytesIO()
                image(10 * i + j).save(buffer, "PNG")
                z.writestr(f"{cls}/{j}.png", buffer.getvalue())
        z.writestr("blue_square/notes.txt", "not an image")
        z.writestr("red_circle/broken.png", b"\x89PNG not really")
    return path


def test_batch_over_a_zip_gives_accuracy_confusion_and_resumes(manager, tmp_path):
    source = dataset(tmp_path / "shapes.zip")
    params = ClassifyParams(stages=[(4, 1)])
    with manager.lend("tiny") as pipe:
        first = classify_batch(pipe, source, params, tmp_path / "results")
        assert first.classes == ["blue square", "red circle"] and len(first.rows) == 4
        assert sorted(first.skipped) == ["blue_square/notes.txt", "red_circle/broken.png"]
        assert first.confusion().sum() == 4 and first.accuracy == np.trace(first.confusion()) / 4
        # an interrupted run resumes: drop the last result, and only that image is classified again
        log = next((tmp_path / "results").glob("*.jsonl"))
        log.write_text("\n".join(log.read_text().splitlines()[:-1]) + "\n")
        calls = []
        second = classify_batch(pipe, source, params, tmp_path / "results",
                                should_stop=lambda: calls.append(1) and False)
    assert second.rows == first.rows and len(calls) == 1


def test_batch_without_class_folders_is_refused(manager, tmp_path):
    (tmp_path / "flat").mkdir()
    image().save(tmp_path / "flat" / "a.png")
    with manager.lend("tiny") as pipe, pytest.raises(ValueError, match="sub-folder"):
        classify_batch(pipe, tmp_path / "flat", ClassifyParams(), tmp_path / "results")
