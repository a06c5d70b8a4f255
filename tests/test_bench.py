"""The benchmark scripts run end to end (on the tiny model here; their real numbers come from a GPU)."""

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
