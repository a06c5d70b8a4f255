"""Many people on one studio (a classroom, a public Space), through gradio_client against the real app: bad input of
every kind gets a clear message and the app keeps answering; each session owns its work; files are never served
from the outputs folder; limits name themselves; one job per session in a fair queue; the teacher's view."""

import io
import json
import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import free_port
from studio.limits import Limits
from studio.preprocess import PREPROCESSORS, Knobs
from tabs import Deployment
from tabs.control import KNOB_FIELDS

KNOBS = [Knobs.default(name) for name in KNOB_FIELDS]

GENERATE = dict(prompt="a red circle", negative="", seed=7, steps=2, cfg=7.5, width=64, height=64,
                scheduler="DDIM", n_images=1)


def launch(manager, outputs: Path, where: Deployment, auth=None):
    from app import build_app, queued

    demo = build_app(manager, "tiny", outputs, where=where)
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=auth)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def public(manager, tmp_path_factory):
    """A public studio: sessions own their work, public limits (a short timeout, so the test of it is quick)."""
    root = tmp_path_factory.mktemp("public")
    for pet, colour in (("cat", "orange"), ("dog", "brown")):
        (root / "data" / "pets" / pet).mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(root / "data" / "pets" / pet / "1.png")
    where = Deployment("public", Limits(**{**Limits.public().__dict__, "timeout": 20.0}),
                       data_roots=(root / "data",))
    demo, url = launch(manager, root / "outputs", where)
    yield url, root, demo
    demo.close()


def ctx_of(demo):
    """The app's StudioContext (its unload handler is a method of it)."""
    return next(d.fn for d in demo.fns.values() if any(t[1] == "unload" for t in d.targets)).__self__


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, "PNG")
    files = {"text named .png": b"hello, not a picture", "truncated PNG": good.getvalue()[:60]}
    for name, data in files.items():
        (folder / f"{name.split()[0]}.png").write_bytes(data)
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png", optimize=True)  # 400 megapixels in ~60 kB
    assert (folder / "bomb.png").stat().st_size < 200_000
    return {"text named .png": str(folder / "text.png"), "truncated PNG": str(folder / "truncated.png"),
            "decompression bomb": str(folder / "bomb.png")}


EXPECTED = {"text named .png": "is not a readable image", "truncated PNG": "is not a readable image",
            "decompression bomb": "megapixels"}


def editor(path: str) -> dict:
    return {"background": handle_file(path), "layers": [], "composite": handle_file(path), "id": None}


def answers_quickly(url: str) -> None:
    started = time.perf_counter()
    Client(url, verbose=False).predict(*GENERATE.values(), api_name="/generate")
    assert time.perf_counter() - started < 30, "the app still answers after the bad input"


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_every_image_input_refuses_a_bad_file_with_its_name_and_why(app_url, bad_files, kind):
    client, path = Client(app_url, verbose=False), bad_files[kind]
    calls = {
        "/classify": lambda: client.predict(handle_file(path), "a\nb", "a {}", "fast", "", "l2", 0, 64,
                                            api_name="/classify"),
        "/sdedit": lambda: client.predict(editor(path), True, "a red circle", "", 0.5, 10, 7.5, 0, 1, 0, 0,
                                          api_name="/sdedit"),
        "/control_preview": lambda: client.predict(handle_file(path), PREPROCESSORS["canny"].label, True, 64, 64, 64,
                                                   *KNOBS, api_name="/control_preview"),
        "/restore": lambda: client.predict(handle_file(path), api_name="/restore"),
    }
    for endpoint, call in calls.items():
        with pytest.raises(AppError) as error:
            call()
        message = str(error.value)
        wanted = ("not a PNG", "carries no parameters", "far too large") \
            if endpoint == "/restore" else \
            (EXPECTED[kind],)
        assert any(w in message for w in wanted), (endpoint, message)
    answers_quickly(app_url)


def test_restore_refuses_damaged_or_incomplete_parameters(app_url, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    client = Client(app_url, verbose=False)
    for text, wanted in (("[1, 2]", "not a set of named values"), ('{"prompt": "x"}', "lack"),
                         ("{not json", "not JSON")):
        info = PngInfo()
        info.add_text("diffusion-studio", text)
        Image.new("RGB", (8, 8)).save(tmp_path / "p.png", pnginfo=info)
        with pytest.raises(AppError, match=wanted):
            client.predict(handle_file(str(tmp_path / "p.png")), api_name="/restore")


def test_bad_classify_batches_and_templates_get_messages(public, tmp_path):
    url, root, _ = public
    client = Client(url, verbose=False)
    settings = ("cat\ndog", "a photo of a {}", "fast", "", "l2", 0, 64)
    with zipfile.ZipFile(tmp_path / "escape.zip", "w") as z:
        z.writestr("../outside/cat/1.png", b"x")
    with zipfile.ZipFile(tmp_path / "damaged.zip", "w") as z:
        z.writestr("cat/1.png", b"x" * 100)
        z.writestr("dog/1.png", b"y" * 100)
    data = bytearray((tmp_path / "damaged.zip").read_bytes())
    data[40:60] = b"\0" * 20  # inside the first member: it no longer decompresses or checks
    (tmp_path / "damaged.zip").write_bytes(bytes(data))
    for archive, folder, wanted in ((str(tmp_path / "escape.zip"), "", "outside its own folder"),
                                    (None, "/", "outside the folders this studio may read"),
                                    (None, str(root / "data" / ".." / "outputs"), "outside the folders"),
                                    (None, "/etc", "outside the folders")):
        with pytest.raises(AppError, match=wanted):
            client.predict(handle_file(archive) if archive else None, folder, *settings, api_name="/classify_batch")
    try:
        client.predict(handle_file(str(tmp_path / "damaged.zip")), "", *settings, api_name="/classify_batch")
    except AppError as error:  # either refused whole, or its members skipped with a reason
        assert "zip" in str(error) or "No images" in str(error) or "readable" in str(error)
    accuracy, _, _ = client.predict(None, str(root / "data" / "pets"), "cat\ndog", "a photo of a {}", "fast", "",
                                    "l2", 0, 64, api_name="/classify_batch")
    assert "on 2 images" in accuracy  # inside the data root: read
    with pytest.raises(AppError, match="a single \\{\\}"):
        client.predict(handle_file(str(root / "data" / "pets" / "cat" / "1.png")), "cat\ndog",
                       "{.__class__.__name__} {}", "fast", "", "l2", 0, 64, api_name="/classify")


def test_requests_above_a_limit_are_refused_naming_it(public):
    url, _, _ = public
    client = Client(url, verbose=False)
    for change, wanted in ((dict(steps=60), "limit of 50"), (dict(width=1024), "limit of 768"),
                           (dict(n_images=8), "limit of 4")):
        with pytest.raises(AppError, match=f"{wanted}.*--max-"):
            client.predict(*{**GENERATE, **change}.values(), api_name="/generate")


def test_a_job_past_the_time_limit_is_stopped_and_the_next_one_runs(manager, tmp_path):
    where = Deployment("public", Limits(timeout=1.0))
    demo, url = launch(manager, tmp_path / "out", where)
    try:
        client = Client(url, verbose=False)
        started = time.perf_counter()
        with pytest.raises(AppError, match="Stopped after 1 s"):
            client.predict(*{**GENERATE, "steps": 150, "width": 1024, "height": 1024}.values(), api_name="/generate")
        assert time.perf_counter() - started < 30, "stopped inside a step, not after it"
        client.predict(*GENERATE.values(), api_name="/generate")  # the GPU is free again
    finally:
        demo.close()


def test_outputs_are_never_served_from_the_outputs_folder(public):
    url, root, _ = public
    gallery, _ = Client(url, verbose=False).predict(*GENERATE.values(), api_name="/generate")
    saved = next((root / "outputs" / "users").rglob("*.png"))
    assert requests.get(f"{url}gradio_api/file={saved}", timeout=10).status_code in (403, 404)
    served = gallery[0]["image"]["url"] if isinstance(gallery[0]["image"], dict) else None
    assert served is None or str(root / "outputs") not in served


def test_two_sessions_same_seed_same_second_never_overwrite(public):
    url, root, _ = public
    clients = [Client(url, verbose=False) for _ in range(10)]
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda client: client.predict(*GENERATE.values(), api_name="/generate"), clients))
    assert len(list((root / "outputs" / "users").rglob("*.png"))) >= 10


def test_one_session_cannot_see_cancel_or_use_another_sessions_work(public):
    url, root, demo = public
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    files = a.predict("green cross", api_name="/train_concept")[0][:3]
    from test_train_app import start

    start(a, files, "mine", steps=2)
    deadline = time.time() + 120
    while "done" not in a.predict("mine", api_name="/train_status")[0]:
        assert time.time() < deadline
        time.sleep(0.5)
    assert b.predict("mine", api_name="/train_status")[0] == "", "B does not see A's job"
    with pytest.raises(AppError, match="no job named"):
        b.predict("mine", 10, api_name="/train_resume")
    with pytest.raises(AppError, match="No finished LoRA named mine"):
        b.predict("mine", 1.0, None, 1.0, api_name="/loras_pick")
    assert "mine" in a.predict("mine", 1.0, None, 1.0, api_name="/loras_pick")
    ctx = ctx_of(demo)
    published = ctx.storage.library / "everyones"
    published.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(ctx.storage.loras(ctx.sessions[a.session_hash]) / "mine", published)
    for client in (a, b):
        assert "shared/everyones" in client.predict("shared/everyones", 1.0, None, 1.0, api_name="/loras_pick")


def test_a_second_job_of_one_session_is_refused_and_turns_are_fair(public):
    """One job per session waits or runs (a second is refused); the sessions are served first come, first served,
    and a waiting job is told its place in the line."""
    url, _, demo = public
    ctx = ctx_of(demo)
    order, lock = [], threading.Lock()
    real = ctx.queue.turn

    def recording(session, **kwargs):
        turn = real(session, **kwargs)

        class Recorded:
            def __enter__(self):
                turn.__enter__()
                with lock:
                    order.append(session)

            def __exit__(self, *exc):
                return turn.__exit__(*exc)

        return Recorded()

    ctx.queue.turn = recording
    try:
        clients = [Client(url, verbose=False) for _ in range(6)]
        slow = {**GENERATE, "steps": 40}
        jobs = [c.submit(*slow.values(), api_name="/generate") for c in clients]
        twice = clients[-1].submit(*slow.values(), api_name="/generate")  # the last session, again
        seen_waiting = False
        for job in [*jobs, twice]:
            while not job.done():
                seen_waiting |= "Waiting for the GPU" in str(job.status())
                time.sleep(0.02)
        outcomes = []
        for job in (jobs[-1], twice):
            try:
                job.result()
                outcomes.append("ran")
            except AppError as error:
                assert "already have a job" in str(error)
                outcomes.append("refused")
        assert sorted(outcomes) == ["ran", "refused"], "one job per session at a time"
        for job in jobs[:-1]:
            job.result()
        assert len(order) == 6 and len(set(order)) == 6, "every session had exactly one turn"
        assert seen_waiting, "a waiting job is told its place in the line"
    finally:
        ctx.queue.turn = real


def test_twenty_sessions_with_mixed_tabs_all_finish_as_their_solo_runs(public, tmp_path):
    """Generate, SDEdit and Classify from 20 sessions at once, with a training job running: every result equals
    the same request made alone."""
    url, _, _ = public
    Image.new("RGB", (64, 64), "white").save(tmp_path / "guide.png")
    guide = editor(str(tmp_path / "guide.png"))
    classify = (handle_file(str(tmp_path / "guide.png")), "cat\ndog", "a photo of a {}", "fast", "", "l2", 0, 64)

    def run(kind: str, client: Client | None = None):
        client = client or Client(url, verbose=False)
        if kind == "generate":
            return np.asarray(Image.open(client.predict(*GENERATE.values(), api_name="/generate")[0][0]["image"]))
        if kind.startswith("sdedit"):  # each its own seed: Gradio caches identical outputs under one name
            seed = int(kind.split()[1])
            result = client.predict(guide, True, "a red circle", "", 0.5, 10, 7.5, 0, 1, seed, 0, api_name="/sdedit")
            return np.asarray(Image.open(result[0]))
        return client.predict(*classify, api_name="/classify")[0]

    kinds = ["generate"] * 14 + [f"sdedit {seed}" for seed in range(3)] + ["classify"] * 3
    solo = {kind: run(kind) for kind in dict.fromkeys(kinds)}
    trainer = Client(url, verbose=False)
    files = trainer.predict("green cross", api_name="/train_concept")[0][:3]
    from test_train_app import start

    start(trainer, files, "busy", steps=40)
    clients = [Client(url, verbose=False) for _ in kinds]  # one at a time: each first reads the whole app's API
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(run, kinds, clients))
    for kind, result in zip(kinds, results):
        if kind == "classify":
            assert result.split("UNet")[0] == solo[kind].split("UNet")[0]  # same prediction and cost
        else:
            assert np.array_equal(result, solo[kind]), kind
    trainer.predict("busy", api_name="/train_cancel")


@pytest.mark.browser
def test_a_closed_tab_takes_its_files_and_jobs_with_it(public):
    from playwright.sync_api import sync_playwright

    from docs.screenshots import CHROMIUM, FLAGS

    url, root, demo = public
    ctx = ctx_of(demo)
    before = set(ctx.sessions)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(url)
        page.locator("#gen-prompt textarea").fill("a red circle")
        page.locator("#gen-run").click()
        page.locator("#gen-info").get_by_text(re.compile(r"^Seed \d")).wait_for(timeout=60_000)  # done
        session = next(s for s in ctx.sessions if s not in before)
        home = ctx.storage.home(ctx.sessions[session])
        assert any(home.glob("*.png"))
        page.close()
        browser.close()
    deadline = time.time() + 30
    while home.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert not home.exists() and session not in ctx.sessions


def test_safety_checker_withholds_flagged_images(manager):
    """With the checker on (public studios), an image it flags comes back grey and the job says so."""
    from transformers import CLIPConfig, CLIPImageProcessor

    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from studio.sampling import txt2img

    config = CLIPConfig(text_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
                                     "intermediate_size": 8},
                        vision_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
                                       "intermediate_size": 8, "image_size": 32, "patch_size": 16},
                        projection_dim=8)
    checker = StableDiffusionSafetyChecker(config).eval()
    checker.forward = lambda images, clip_input: (images, [True] * len(images))  # flags everything
    with manager.lend("tiny") as pipe:
        pipe.safety_checker, pipe.feature_extractor = checker, CLIPImageProcessor(size=32, crop_size=32)
        pipe.screen = True
        images = txt2img(pipe, "a red circle", seed=0, n=2, steps=2, width=64, height=64)
        assert pipe.withheld == 2
        assert all(np.all(np.asarray(image) == 128) for image in images)
        pipe.screen, pipe.withheld = False, 0
        assert not all(np.all(np.asarray(image) == 128)
                       for image in txt2img(pipe, "a red circle", seed=0, n=2, steps=2, width=64, height=64))


def test_a_classroom_needs_a_login_and_only_the_teacher_sees_everyone(manager, tmp_path):
    from app import logins, parse_args

    args = parse_args(["--classroom", "--password", "class", "--admin", "teacher", "--admin-password", "boss"])
    check = logins(args)
    assert check("ann", "class") and not check("ann", "wrong") and not check("teacher", "class")
    assert check("teacher", "boss") and not check("", "class")
    where = Deployment("classroom", Limits.public(), admins=frozenset({"teacher"}), data_roots=())
    demo, url = launch(manager, tmp_path / "out", where, auth=check)
    try:
        assert requests.get(f"{url}config", timeout=10).status_code in (401, 403) or "login" in \
            requests.get(url, timeout=10).text.lower()
        ann, teacher = Client(url, auth=("ann", "class"), verbose=False), Client(url, auth=("teacher", "boss"),
                                                                                 verbose=False)
        ann.predict(*GENERATE.values(), api_name="/generate")
        line, latest, _, _ = teacher.predict(api_name="/classroom_overview")
        assert "On the GPU" in line and len(latest) == 1 and "ann" in json.dumps(latest)
        empty = ann.predict(api_name="/classroom_overview")
        assert empty[0] == "" and empty[1] == [], "a student sees nothing of the others"
        with pytest.raises(AppError, match="Only the teacher"):
            ann.predict("user:ann", api_name="/classroom_stop")
        assert "on every page" in teacher.predict("Today: word swaps", api_name="/classroom_notes")
        assert ctx_of(demo).notes == "Today: word swaps"
    finally:
        demo.close()
