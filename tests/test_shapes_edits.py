"""The Shapes world's instruction edits (InstructPix2Pix's training data): each changes exactly what it says, the
held-out combinations never reach training, and the judge that scores a model's edits is right on the ground truth."""

import random
from collections import Counter

import numpy as np
import pytest

from studio.shapes.edits import EDITS, HELD_OUT_EDITS, judge, make_edit, sample_edit
from studio.shapes.world import Scene, ShapeSpec, render

EDITS_SAMPLE = [sample_edit(seed) for seed in range(240)]


def test_every_kind_of_edit_is_drawn_and_the_same_seed_gives_the_same_edit():
    assert set(Counter(e.kind for e in EDITS_SAMPLE)) == set(EDITS)
    again = sample_edit(17)
    assert again.instruction == EDITS_SAMPLE[17].instruction
    assert np.array_equal(np.asarray(again.after.image), np.asarray(EDITS_SAMPLE[17].after.image))


@pytest.mark.parametrize("kind", EDITS)
def test_an_edit_changes_only_what_its_instruction_names(kind):
    for edit in [e for e in EDITS_SAMPLE if e.kind == kind][:20]:
        before, after = edit.before.shapes, edit.after.shapes
        if kind == "background":
            assert before == after and edit.after.background == (edit.value,) != edit.before.background
            assert edit.value in edit.instruction
            continue
        assert edit.after.background == edit.before.background
        if kind == "add":
            assert after[:-1] == before and after[-1].colour == edit.value and after[-1].shape in edit.instruction
        elif kind == "remove":
            assert len(after) == len(before) - 1 and before[edit.target] not in after
        else:
            changed = [i for i, (b, a) in enumerate(zip(before, after)) if b != a]
            assert changed == [edit.target] and edit.value in edit.instruction
            field = {"recolour": "colour", "reshape": "shape", "move": "position"}[kind]
            assert getattr(after[edit.target], field) == edit.value != getattr(before[edit.target], field)
        if kind != "add":  # the shape it names is named unambiguously
            assert before[edit.target].shape in edit.instruction


def test_held_out_combinations_never_reach_training_and_the_held_out_split_draws_only_them():
    assert all(e.combination not in HELD_OUT_EDITS for e in EDITS_SAMPLE)
    held = [sample_edit(1_000_000 + i, kind=kind, split="held_out") for i in range(5) for kind in EDITS[:-1]]
    assert all(e.combination in HELD_OUT_EDITS for e in held)
    assert len(HELD_OUT_EDITS) == 21 and {c[0] for c in HELD_OUT_EDITS} >= {"recolour", "reshape", "move"}


def test_an_edit_finds_room_or_says_there_is_none():
    stars = [ShapeSpec("star", "red", p, "small") for p in ("top left", "top right", "bottom left")]
    crowded = Scene(render(stars, ("white",))[0], "", stars, ("white",), [])
    assert make_edit(crowded, "add", random.Random(0)) is None, "three shapes: no room for a fourth"
    alone = [e for e in EDITS_SAMPLE if len(e.before.shapes) == 1]
    assert alone and all(e.kind != "remove" for e in alone), "the world has no empty scenes"


def test_the_judge_passes_the_ground_truth_and_fails_the_unedited_input():
    for edit in EDITS_SAMPLE[:120]:
        truth, unchanged = judge(edit, edit.after.image), judge(edit, edit.before.image)
        assert truth.done and truth.kept and (truth.iou is None or truth.iou > 0.8), edit.instruction
        assert not unchanged.done, edit.instruction


def test_the_judge_sees_a_shape_that_was_not_kept():
    edit = next(e for e in EDITS_SAMPLE if e.kind == "recolour" and len(e.before.shapes) > 1)
    only_target, _ = render([edit.after.shapes[edit.target]], edit.after.background)
    verdict = judge(edit, only_target)
    assert verdict.done and not verdict.kept and verdict.iou < 0.2, verdict
