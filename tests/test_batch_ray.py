"""The batch runner on a local Ray cluster of two workers (CPU), on Shapes: a 24-image Classify batch gives the local
run's rows image for image; a worker killed mid-run costs nothing but a retry; a cancelled run stops every worker
and resumes with only the missing images; each worker loads the model once; the Classify tab's batch and the Train
tab's sweep run there with the cluster's progress; a 2×2 DreamBooth sweep on the cluster matches the same points
trained here."""

import os
import re
import signal
import sys
import time
import zipfile

import pytest
import torch
from gradio_client import Client, handle_file
from safetensors.torch import load_file

from conftest import free_port
from studio.batch.cluster import Cluster, Pool, Shard
from studio.batch.dataset import classify_here, classify_on_cluster, shapes_folder
from studio.batch.sweep import SweepParams, SweepRun
from studio.classify import ClassifyParams, batch_log, labelled_images
from studio.jobs import Cancelled
from studio.lora import WEIGHTS
from studio.shapes.concepts import concept_images
from studio.trainer import TrainParams, presets
from tabs.train import SETTINGS
from tests.test_batch import outcomes
from tests.test_multiuser import ctx_of

ray = pytest.importorskip("ray")
PARAMS = ClassifyParams(templates=["a {}"], stages=[(2, 1)], batch=64)  # 4 classes x 2 samples: one UNet call


@pytest.fixture(scope="module")
def cluster(model_cache):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="studio-tests")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's tasks, without importing it there
    yield Cluster(address="local", workers=2, cpus=1, cache_dir=str(model_cache))
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    """Two workers of the Shapes model, kept between the tests' runs as the studio keeps them between its own."""
    with Pool(cluster, "shapes") as workers:
        yield workers


@pytest.fixture(scope="module")
def one_thread():
    """The workers run one torch thread each (cpus=1): so does every local run they are compared with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes24(tmp_path_factory):
    return shapes_folder(tmp_path_factory.mktemp("data") / "shapes24", per_class=6)


@pytest.fixture(scope="module")
def local(manager, shapes24, one_thread, tmp_path_factory):
    return classify_here(manager, "shapes", shapes24, PARAMS, tmp_path_factory.mktemp("local"))


def log_of(source, results):
    classes, items, _ = labelled_images(source)
    return batch_log(source, classes, [n for n, _, _ in items], PARAMS, results)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_24_image_batch_on_the_cluster_gives_the_local_rows_image_for_image(pool, shapes24, local, tmp_path):
    seen = []
    result = classify_on_cluster(pool, shapes24, PARAMS, tmp_path, shard_images=3,
                                 on_progress=lambda progress, _: seen.append(progress.describe()))
    assert len(local.rows) == 24 and result.rows == local.rows  # file, truth, prediction, error: all equal
    assert result.accuracy == local.accuracy and (result.confusion() == local.confusion()).all()
    assert log_of(shapes24, tmp_path).read_text().count("\n") == 24
    assert seen[-1].startswith("24 of 24 images · worker 1 (pid") and "worker 2 (pid" in seen[-1]


def count_loads(station, payload, context):
    """A task that reports who ran it and how often that worker has loaded a model."""
    time.sleep(0.3)
    return os.getpid(), station.manager.load_count


def test_each_worker_loads_the_model_once_for_all_its_runs(pool):
    """The workers of the batch above are still up: they load nothing more, and each ran some of these shards."""
    seen = []
    pool.run(count_loads, None, [Shard(i, 1, lambda: None) for i in range(8)],
             on_result=lambda shard, result: seen.append(result))
    assert len(seen) == 8 and {loads for _, loads in seen} == {1} and len({pid for pid, _ in seen}) == 2


def test_a_killed_worker_has_its_shard_retried_and_nothing_is_lost_or_repeated(pool, shapes24, local, tmp_path):
    killed, last = [], []

    def kill_one(progress, _):
        last[:] = [progress]
        if progress.done >= 4 and not killed:
            killed.append(progress.workers[0].pid)
            os.kill(killed[0], signal.SIGKILL)

    result = classify_on_cluster(pool, shapes24, PARAMS, tmp_path, shard_images=2, on_progress=kill_one)
    assert killed and last[0].retried >= 1 and not last[0].workers[0].alive
    assert result.rows == local.rows
    lines = log_of(shapes24, tmp_path).read_text().splitlines()
    assert len(lines) == 24 == len(set(lines)), "every image once: none lost, none written twice"


@pytest.mark.slow
def test_a_cancel_stops_every_worker_and_the_run_resumes_with_only_the_missing_images(pool, shapes24, local,
                                                                                     tmp_path):
    state = {}

    def watch(progress, _):
        state.update(done=progress.done, pids=[w.pid for w in progress.workers], total=state.get("total",
                                                                                                 progress.total))

    with pytest.raises(Cancelled, match="every worker"):
        classify_on_cluster(pool, shapes24, PARAMS, tmp_path, shard_images=2, on_progress=watch,
                            should_stop=lambda: state.get("done", 0) >= 8)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in state["pids"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in state["pids"]), "Cancel stops every worker"
    written = log_of(shapes24, tmp_path).read_text().count("\n")
    assert 8 <= written < 24
    state.clear()
    result = classify_on_cluster(pool, shapes24, PARAMS, tmp_path, on_progress=watch)
    assert state["total"] == 24 - written, "only the missing images are sent"
    assert result.rows == local.rows and log_of(shapes24, tmp_path).read_text().count("\n") == 24


def test_the_classify_batch_and_the_train_sweep_run_on_the_cluster_with_its_progress(manager, pool, shapes24, local,
                                                                                     tmp_path):
    from app import build_app, queued

    demo = build_app(manager, "shapes", tmp_path / "outputs", cluster=pool.cluster)
    ctx_of(demo).cluster.pools["shapes"] = pool  # the workers already up (the cluster has room for two)
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with zipfile.ZipFile(tmp_path / "shapes24.zip", "w") as archive:
            for path in sorted(shapes24.rglob("*.png")):
                archive.write(path, str(path.relative_to(shapes24)))
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        accuracy, confusion, rows = client.predict(
            handle_file(str(tmp_path / "shapes24.zip")), "", "", "a {}", "custom", "2:1", "l2", 0, 64,
            api_name="/classify_batch")
        # Train → Sweep: one point (a training seed), trained and judged by a worker, its LoRA in this library
        files = client.predict("green cross", api_name="/train_concept")[0]
        values = {**{name: getattr(TrainParams(), name) for name in SETTINGS}, "resolution": 64, "steps": 1,
                  "validate_every": 0, "checkpoint_every": 0, "prior_preservation": False}
        status, grid, points = client.predict(
            [handle_file(f if isinstance(f, str) else f["path"]) for f in files], "ray-sweep", "a sks star", "sks",
            "a star", "a sks star", *[values[name] for name in SETTINGS], "seed=3", "", "green cross", 2, 2,
            api_name="/train_sweep")
    finally:
        demo.close()
    assert f"**Accuracy: {100 * local.accuracy:.1f}%** on 24 images" in accuracy
    assert re.search(r"\*\*Cluster:\*\* 24 of 24 images · worker \d+ \(pid \d+ on .+\) [\d.]+/min, worker", accuracy)
    assert [dict(zip(rows["headers"], r)) for r in rows["data"]] == local.rows
    assert re.fullmatch(r"1 of 1 points done\.\n\n\*\*Cluster:\*\* 1 of 1 points · worker \d+ .+/min.*", status, re.S)
    assert grid["headers"] == ["seed", "result"] and re.fullmatch(r"[0-2]/2", grid["data"][0][1])
    assert [row[0] for row in points["data"]] == ["ray-sweep-seed3"]
    assert (ctx_of(demo).lora_root(None) / "ray-sweep-seed3" / WEIGHTS).is_file()


@pytest.mark.slow
def test_a_2x2_dreambooth_sweep_on_the_cluster_matches_the_same_points_trained_here(manager, pool, one_thread,
                                                                                    tmp_path):
    """All four points on the cluster; two of them, differing in both settings, trained here to compare (a point's
    cost is mostly its validation images, which the trainer always draws)."""
    base = TrainParams(**{**presets()["shapes-concept"], "resolution": 64, "instance_prompt": "a sks star",
                          "class_prompt": "a star", "steps": 4, "prior_preservation": False,
                          "validation_prompts": ["a sks star"], "validate_every": 0, "checkpoint_every": 0})
    sweep = SweepParams(axes=[("seed", [0, 1]), ("lr", [1e-3, 2e-3])], eval_seeds=3, eval_steps=4)
    images = concept_images("green cross")
    there = SweepRun("shapes", tmp_path / "there", "cross", base, sweep, images)
    progress = there.run_on(pool)
    assert progress.done == 4 and len(progress.workers) == 2 and len(there.rows()) == 4
    header, body = there.table()
    assert header == ["seed", "lr = 0.001", "lr = 0.002"] and [line[0] for line in body] == ["0", "1"]
    assert all(re.fullmatch(r"[0-3]/3", cell) for line in body for cell in line[1:])
    here = SweepRun("shapes", tmp_path / "here", "cross", base, sweep, images)
    for point in (here.points[0], here.points[3]):  # seed 0 at lr 1e-3, seed 1 at lr 2e-3
        here.record(here.train(manager, point))
        assert outcomes([there.done[point.name]]) == outcomes([here.done[point.name]]), point.name
        a, b = load_file(tmp_path / "here" / point.name / WEIGHTS), load_file(tmp_path / "there" / point.name / WEIGHTS)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), point.name
    assert not any((tmp_path / "there" / p.name / "checkpoints").exists() for p in there.points)
