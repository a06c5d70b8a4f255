"""The benchmark harness interleaves honestly, and every script runs end to end on it (tiny model here; the real
numbers come from a GPU)."""

import argparse
import json

import numpy as np
import pytest
import torch

from bench.common import Timing, interleave, report
from bench.generate import main


def test_variants_alternate_round_robin_with_a_rotating_order():
    order = []
    interleave({name: (lambda name=name: order.append(name)) for name in "abc"}, torch.device("cpu"), rounds=3,
               warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")


def test_ratios_are_per_round_and_survive_a_slow_round(tmp_path, capsys):
    """A background burst that slows one round slows both variants in it: the per-round ratio stays put, while the
    ratio of totals, as sequential timing would give, does not."""
    base, other = Timing("base", [1.0, 1.0, 5.0]), Timing("other", [1.5, 1.5, 7.5])
    assert other.ratio(base) == (1.5, 1.5, 1.5)
    args = argparse.Namespace(json=tmp_path / "out.json", warmup=1)
    rows = report("title", torch.device("cpu"), [other, base], args, baseline="base")
    assert rows[0]["ratio"] == 1.5 and rows[0]["seconds"] == 1.5 and rows[0]["ratio_range"] == [1.5, 1.5]
    printed = capsys.readouterr().out
    assert "| other | 1.500 (1.500–7.500) | 1.50× (1.50–1.50) |" in printed and "torch " in printed
    assert json.loads((tmp_path / "out.json").read_text())["rows"][1]["path"] == "base"


def test_generate_benchmark_prints_both_paths(tmp_path, capsys):
    table = main(["--model", "tiny", "--rounds", "2", "--steps", "2", "--device", "cpu", "--workdir", str(tmp_path)])
    assert [row["path"] for row in table] == ["studio", "plain diffusers"]
    assert all(row["seconds"] > 0 for row in table) and table[1]["ratio"] == 1
    assert "| studio |" in capsys.readouterr().out


def test_classify_benchmark_counts_the_same_calls_on_both_paths(tmp_path, capsys):
    from bench.classify import main as classify_bench

    table = classify_bench(["--model", "tiny", "--device", "cpu", "--schedule", "fast", "--rounds", "1",
                            "--workdir", str(tmp_path)])
    assert [row["path"] for row in table] == ["studio (batched)", "plain loop"]
    assert "| studio (batched) |" in capsys.readouterr().out


def test_p2p_benchmark_times_plain_and_edits(tmp_path):
    from bench.p2p import main as p2p_bench

    table = p2p_bench(["--model", "tiny", "--device", "cpu", "--steps", "5", "--rounds", "1", "--workdir",
                       str(tmp_path)])
    assert [row["path"] for row in table] == ["plain image", "replace edit", "replace + LocalBlend",
                                              "replace edit, classic attention"]
    assert table[0]["ratio"] == 1


def test_the_classic_attention_baseline_draws_the_same_edit(manager):
    """The baseline row times the same computation, only with self-attention materialised."""
    from bench.p2p import SOURCE, TARGET, classic_edit
    from studio.p2p import P2PParams, run_p2p

    params = P2PParams(SOURCE, TARGET, steps=5)
    with manager.lend("tiny") as pipe:
        fast, classic = run_p2p(pipe, params), classic_edit(pipe, params)
    diff = np.abs(np.asarray(fast.edited, float) - np.asarray(classic.edited, float))
    assert diff.max() <= 2, diff.max()


def test_control_benchmark_times_plain_controlnet_and_adapter(tmp_path):
    from bench.control import main as control_bench

    table = control_bench(["--model", "tiny", "--device", "cpu", "--steps", "3", "--rounds", "1", "--workdir",
                           str(tmp_path)])
    assert [row["path"].split(" (")[0] for row in table] == ["plain image", "ControlNet", "T2I-Adapter",
                                                              "ControlNet", "T2I-Adapter"]
    assert table[0]["ratio"] == 1 and all(row["seconds"] > 0 for row in table)


def test_train_benchmark_interleaves_the_studio_job_and_the_plain_loop(tmp_path, capsys):
    from bench.train import main as train_bench

    table = train_bench(["--model", "tiny", "--device", "cpu", "--steps", "5", "--resolution", "64", "--workdir",
                         str(tmp_path)])
    assert [row["path"] for row in table] == ["studio", "plain peft loop"]
    assert all(row["ms_per_step"] > 0 for row in table) and table[0]["job_seconds"] > 0
    assert len(table[0]["seconds_all"]) == len(table[1]["seconds_all"]) == 3  # 4 pairs, 1 warm-up
    assert "| studio |" in capsys.readouterr().out


def test_edit_benchmark_counts_and_times_every_method_against_a_plain_image(tmp_path):
    from bench.edit import main as edit_bench

    table = edit_bench(["--model", "tiny", "--device", "cpu", "--steps", "5", "--imagic-steps", "2", "--rounds", "1",
                        "--workdir", str(tmp_path)])
    rows = {row["path"]: row for row in table}
    assert list(rows)[0] == "plain image" and rows["plain image"]["ratio"] == 1
    evaluations = {name: int(row["UNet evaluations"]) for name, row in rows.items()}
    assert evaluations["plain image"] == 10 and evaluations["DDIM inversion + check"] == 10  # 5 guided steps; 5 + 5
    assert evaluations["Imagic A+B+C"] == 2 + 2 + 10 and evaluations["Imagic C only (new η)"] == 10
    assert evaluations["DDIB (inversion cached)"] == 5  # unguided, the paper's bridge


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_part_and_writes_one_table(tmp_path, capsys):
    from bench.gpu import GOALS
    from bench.gpu import main as gpu_bench

    out = gpu_bench(["--device", "cpu", "--quick", "--model", "tiny", "--workdir", str(tmp_path), "--json",
                     str(tmp_path / "gpu.json")])
    assert set(out["parts"]) == {"generate", "p2p", "control", "classify", "edit", "train"}
    assert set(out["figures"]) == set(GOALS) and (tmp_path / "gpu.json").is_file()
    assert "| P2P edit ÷ plain image |" in capsys.readouterr().out
