"""The benchmark scripts run end to end (on the tiny model here; their real numbers come from a GPU)."""

import numpy as np

from bench.generate import main


def test_generate_benchmark_prints_both_paths(tmp_path, capsys):
    table = main(["--model", "tiny", "--repeats", "1", "--steps", "2", "--device", "cpu", "--workdir", str(tmp_path)])
    assert [row["path"] for row in table] == ["studio", "plain diffusers"]
    assert all(row["seconds"] > 0 for row in table)
    assert "| studio |" in capsys.readouterr().out


def test_classify_benchmark_counts_the_same_calls_on_both_paths(tmp_path, capsys):
    from bench.classify import main as classify_bench

    table = classify_bench(["--model", "tiny", "--device", "cpu", "--schedule", "fast", "--workdir", str(tmp_path)])
    assert [row["path"] for row in table] == ["studio (batched)", "plain loop"]
    assert "| studio (batched) |" in capsys.readouterr().out


def test_p2p_benchmark_times_plain_and_edits(tmp_path):
    from bench.p2p import main as p2p_bench

    table = p2p_bench(["--model", "tiny", "--device", "cpu", "--steps", "3", "--repeats", "1", "--workdir",
                       str(tmp_path)])
    assert [row["path"] for row in table] == ["plain image", "replace edit", "replace + LocalBlend",
                                              "replace edit, classic attention"]
    assert table[0]["ratio"] == 1


def test_the_classic_attention_baseline_draws_the_same_edit(manager):
    """The baseline row times the same computation, only with self-attention materialised."""
    from bench.p2p import SOURCE, TARGET, classic_edit
    from studio.p2p import P2PParams, run_p2p

    params = P2PParams(SOURCE, TARGET, steps=3)
    with manager.lend("tiny") as pipe:
        fast, classic = run_p2p(pipe, params), classic_edit(pipe, params)
    diff = np.abs(np.asarray(fast.edited, float) - np.asarray(classic.edited, float))
    assert diff.max() <= 2, diff.max()


def test_control_benchmark_times_plain_controlnet_and_adapter(tmp_path):
    from bench.control import main as control_bench

    table = control_bench(["--model", "tiny", "--device", "cpu", "--steps", "3", "--repeats", "1", "--workdir",
                           str(tmp_path)])
    assert [row["path"].split(" (")[0] for row in table] == ["plain image", "ControlNet", "T2I-Adapter",
                                                              "ControlNet", "T2I-Adapter"]
    assert table[0]["ratio"] == 1 and all(row["seconds"] > 0 for row in table)


def test_train_benchmark_times_the_studio_job_and_the_plain_loop(tmp_path, capsys):
    from bench.train import main as train_bench

    table = train_bench(["--model", "tiny", "--device", "cpu", "--steps", "3", "--resolution", "64", "--workdir",
                         str(tmp_path)])
    assert [row["path"] for row in table] == ["studio", "plain peft loop"]
    assert all(row["ms_per_step"] > 0 for row in table) and table[0]["job_seconds"] > 0
    assert "| studio |" in capsys.readouterr().out
