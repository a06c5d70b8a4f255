"""The batch runner without a cluster (studio/batch): sweeps here (grid, library LoRAs, resume, other people's LoRAs
left alone, the Train tab's Sweep through gradio_client), the CLI's local path and the paper command, and that
without Ray installed or configured nothing changes."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from app import build_app
from studio.batch import Cluster, SweepParams
from studio.batch.__main__ import main as cli
from studio.batch.dataset import shapes_folder
from studio.batch.sweep import NO_JUDGE, SweepRun, grid, parse_setting
from studio.classify import ClassifyParams, batch_log, classify_batch, labelled_images, read_log
from studio.lora import library
from studio.shapes.concepts import concept_images
from studio.trainer import TrainParams
from tabs.train import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(instance_prompt="a sks star", class_prompt="a star", resolution=64, steps=2, validate_every=0,
            checkpoint_every=0, validation_prompts=["a sks star"])


def outcomes(rows: list[dict]) -> list[dict]:
    """A sweep's rows without their timings."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_settings_parse_as_their_fields_and_a_sweep_refuses_what_it_cannot_run():
    assert parse_setting("lr=1e-3, 2e-3") == ("lr", [0.001, 0.002])
    assert parse_setting("seed=0,1,2") == ("seed", [0, 1, 2]) and isinstance(parse_setting("steps=20")[1][0], int)
    assert parse_setting("lr_schedule=constant, cosine") == ("lr_schedule", ["constant", "cosine"])
    assert parse_setting("train_text_encoder=true") == ("train_text_encoder", [True])
    for bad, match in [("lr", "field=value"), ("colour=red", "field=value"), ("lr=fast", "takes numbers")]:
        with pytest.raises(ValueError, match=match):
            parse_setting(bad)
    for axes, match in [([], "one or two"), ([("seed", [0])] * 2, "one or two"),
                        ([("seed", [0]), ("lr", [1e-3]), ("rank", [4])], "one or two"),
                        ([("instance_prompt", ["a"])], "cannot be swept"), ([("seed", [0, 0])], "different values"),
                        ([("seed", list(range(5))), ("lr", [1e-3, 2e-3, 3e-3, 4e-3])], "more than a sweep")]:
        with pytest.raises(ValueError, match=match):
            SweepParams(axes=axes)
    points = grid("cross", TrainParams(**TINY), SweepParams(axes=[("seed", [0, 1]), ("lr", [1e-3, 2e-3])]))
    assert [p.name for p in points] == ["cross-seed0-lr0.001", "cross-seed0-lr0.002", "cross-seed1-lr0.001",
                                        "cross-seed1-lr0.002"]
    assert (points[3].params.seed, points[3].params.lr, points[3].params.steps) == (1, 2e-3, 2)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        grid("cross", TrainParams(**TINY), SweepParams(axes=[("steps", [1.5])]))


def test_a_sweep_here_makes_library_loras_and_rows_resumes_and_leaves_other_loras_alone(manager, tmp_path):
    sweep = SweepParams(axes=[("lr", [1e-3, 2e-3])], eval_seeds=2, eval_steps=2)
    images = concept_images("green cross")
    run = SweepRun("tiny", tmp_path, "s", TrainParams(**TINY), sweep, images)
    assert run.run_here(manager).done == 2
    assert sorted(library(tmp_path)) == ["s-lr0.001", "s-lr0.002"]
    rows = run.rows()
    assert [r["point"] for r in rows] == ["s-lr0.001", "s-lr0.002"] and all(0 <= r["success"] <= 2 for r in rows)
    header, body = run.table()
    assert header == ["lr", "result"] and [line[0] for line in body] == ["0.001", "0.002"]
    assert body[0][1] == f"{rows[0]['success']}/2"
    # stopped after its first point (the second one's row lost): run again, only the second point trains
    run.log.write_text(run.log.read_text().splitlines()[0] + "\n")
    again = SweepRun("tiny", tmp_path, "s", TrainParams(**TINY), sweep, images)
    assert [p.name for p in again.pending()] == ["s-lr0.002"]
    assert again.run_here(manager).done == 1
    assert outcomes(again.rows()) == outcomes(rows)  # same seeds, same point: the same result
    # a LoRA of the same name that this sweep did not make is never replaced
    (tmp_path / "t-lr0.001").mkdir()
    with pytest.raises(ValueError, match="exists already and is not a point of this sweep"):
        SweepRun("tiny", tmp_path, "t", TrainParams(**TINY), sweep, images).run_here(manager)
    no_judge = SweepRun("tiny", tmp_path, "u", TrainParams(**TINY), SweepParams(axes=[("seed", [3])],
                                                                                concept=NO_JUDGE), images)
    no_judge.run_here(manager)
    assert no_judge.rows()[0]["success"] is None and no_judge.table()[1][0][1].startswith("loss ")


def test_the_train_tabs_sweep_trains_each_point_and_shows_the_grid(app_url):
    client = Client(app_url, verbose=False)
    files = client.predict("green cross", api_name="/train_concept")[0]
    values = {**{name: getattr(TrainParams(), name) for name in SETTINGS}, "resolution": 64, "steps": 2,
              "validate_every": 0, "checkpoint_every": 0}
    status, table, points = client.predict(
        [handle_file(f if isinstance(f, str) else f["path"]) for f in files], "app-sweep", "a sks star", "sks",
        "a star", "a sks star", *[values[name] for name in SETTINGS], "seed=0, 1", "", "green cross", 2, 2,
        api_name="/train_sweep")
    assert status == "2 of 2 points done." and table["headers"] == ["seed", "result"]
    assert [row[0] for row in table["data"]] == ["0", "1"] and all(row[1].endswith("/2") for row in table["data"])
    assert [row[0] for row in points["data"]] == ["app-sweep-seed0", "app-sweep-seed1"]
    assert "app-sweep-seed1" in client.predict("app-sweep-seed1", api_name="/train_status")[5]["choices"][0]


def test_without_ray_nothing_changes(monkeypatch, manager, tmp_path, capsys):
    """Ray is optional: the app, the tabs and the runner import without it, no address means the local path, and
    asking for a cluster without Ray says how to install it."""
    for path in [ROOT / "app.py", *(ROOT / "studio").rglob("*.py"), *(ROOT / "tabs").glob("*.py")]:
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [n.module for n in top if isinstance(n, ast.ImportFrom)]
        assert not any(str(name).split(".")[0] == "ray" for name in names), f"{path.name} imports ray at the top"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert Cluster.configured(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert Cluster.configured(None, workers=3).workers == 3
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as when it is not installed
    with pytest.raises(ValueError, match="pip install ray"):
        Cluster().connect()
    build_app(manager, "tiny", tmp_path / "app").close()  # every tab builds
    data = shapes_folder(tmp_path / "data", per_class=1)
    assert cli(["classify", str(data), "--model", "tiny", "--outputs", str(tmp_path / "out"), "--schedule", "2:1",
                "--template", "a {}"]) == 2  # RAY_ADDRESS is set and Ray is missing: a message, no traceback
    assert "pip install ray" in capsys.readouterr().err
    monkeypatch.delenv("RAY_ADDRESS")
    assert cli(["classify", str(data), "--model", "tiny", "--outputs", str(tmp_path / "out"), "--schedule", "2:1",
                "--template", "a {}"]) == 0
    assert "Accuracy" in capsys.readouterr().out
    # the CLI's local path is the tab's: the same results file, which classify_batch resumes with nothing to do
    params = ClassifyParams(templates=["a {}"], stages=[(2, 1)])
    classes, items, _ = labelled_images(data)
    log = batch_log(data, classes, [n for n, _, _ in items], params, tmp_path / "out" / "classify")
    assert len(read_log(log)) == 4
    with manager.lend("tiny") as pipe:
        calls = []
        again = classify_batch(pipe, data, params, tmp_path / "out" / "classify",
                               should_stop=lambda: calls.append(1) and False)
    assert not calls and len(again.rows) == 4


def test_the_paper_command_reports_top1_and_cost_beside_the_papers_figure(tmp_path, capsys):
    data = shapes_folder(tmp_path / "shapes", per_class=2)
    table = tmp_path / "table.md"
    assert cli(["paper", str(data), "--model", "shapes", "--outputs", str(tmp_path / "out"), "--schedule", "4:1",
                "--template", "a {}", "--table", str(table)]) == 0
    text = table.read_text()
    assert "| Li et al. 2023, Table 1 | Stable Diffusion 2.0, 512 px | 10,000 | 88.5% | 2,750 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| this run"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1:3] == ["shapes", "8"] and cells[4] == "16"  # 4 classes x 4 samples
    assert 0 <= float(cells[3].rstrip("%")) <= 100 and float(cells[5]) > 0
    assert "8 images classified" in text and "template 'a {}', loss l1" in text
    assert json.loads(next((tmp_path / "out" / "classify").glob("*.jsonl")).read_text().splitlines()[0])["error"] > 0


def test_the_cli_sweeps_a_concept_here_and_prints_the_grid(tmp_path, capsys):
    args = ["sweep", "--concept", "green cross", "--model", "tiny", "--outputs", str(tmp_path), "--name", "cli",
            "--axis", "seed=0", "--eval-seeds", "1", "--eval-steps", "1", "--set", "steps=1",
            "--set", "prior_preservation=false", "--set", "validate_every=0", "--set", "checkpoint_every=0"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "1 points, 1 to run" in out and "| seed | result |" in out
    assert re.search(r"^\| 0 \| [01]/1 \|$", out, re.M)
    assert sorted(library(tmp_path / "loras")) == ["cli-seed0"]
    assert cli(args) == 0 and "1 points, 0 to run" in capsys.readouterr().out  # run again: nothing left to do
    assert cli([*args[:-2], "--axis", "lr=fast"]) == 2 and "takes numbers" in capsys.readouterr().err
