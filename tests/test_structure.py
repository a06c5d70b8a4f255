"""The structure new tabs copy: parameters valid from birth, techniques that don't import each other, handlers that
take their inputs by name, one seed policy, and session state cleaned when a browser tab closes."""

import ast
import importlib
import inspect
import pkgutil
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

import studio
import tabs
from studio.params import Params
from studio.sampling import MAX_SEED, pick_seed, snap_size
from tabs import Form, StudioContext, build

ROOT = Path(__file__).resolve().parents[1]
TECHNIQUES = {"generate", "sdedit", "p2p", "control", "classify", "trainer", "ddib", "diffedit", "imagic"}
# What a params class needs beyond its defaults to be built at all.
REQUIRED = {"P2PParams": dict(source_prompt="a red circle", target_prompt="a blue circle"),
            "ControlUnit": dict(model=None, condition=Image.new("RGB", (8, 8))),
            "LoraUse": dict(source="some-lora"),
            "DDIBParams": dict(source_prompt="a red circle", target_prompt="a blue circle"),
            "DiffEditParams": dict(source_prompt="a red circle", target_prompt="a blue circle"),
            "ImagicParams": dict(target_prompt="a blue circle")}


def params_classes() -> list[type]:
    for info in pkgutil.iter_modules(studio.__path__):
        importlib.import_module(f"studio.{info.name}")
    found, todo = [], list(Params.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__name__)


def test_every_params_class_is_found():
    assert {c.__name__ for c in params_classes()} >= {
        "GenerateParams", "SDEditParams", "CompositeParams", "P2PParams", "ControlParams", "ControlUnit",
        "ClassifyParams", "TrainParams", "Knobs", "LoraUse", "DDIBParams", "DiffEditParams", "ImagicParams"}


@pytest.mark.parametrize("cls", params_classes(), ids=lambda c: c.__name__)
def test_params_refuse_out_of_range_values_and_unknown_choices_when_built(cls):
    base = REQUIRED.get(cls.__name__, {})
    cls(**base)  # the defaults are valid
    checked = 0
    for f in fields(cls):
        meta = f.metadata
        if "min" in meta:
            for bad in (meta["min"] - 1, meta["max"] + 1):
                with pytest.raises(ValueError, match=f.name.replace("_", " ")):
                    cls(**{**base, f.name: bad})
            checked += 1
        if "choices" in meta:
            with pytest.raises(ValueError, match=f"Unknown {f.name.replace('_', ' ')}"):
                cls(**{**base, f.name: "no-such-choice"})
            checked += 1
    assert checked, f"{cls.__name__} has no checked field"


def test_whole_numbers_are_whole():
    from studio.generate import GenerateParams

    assert GenerateParams(steps=25.0).steps == 25 and isinstance(GenerateParams(steps=25.0).steps, int)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        GenerateParams(steps=25.5)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studio."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("studio.")}
    return names


def test_no_technique_imports_another_and_shared_helpers_import_no_technique():
    for path in (ROOT / "studio").glob("*.py"):
        imported = imports_of(path)
        others = imported & (TECHNIQUES - {path.stem})
        assert not others, f"studio/{path.name} imports the technique(s) {others}"


def test_studio_never_imports_gradio():
    for path in (ROOT / "studio").rglob("*.py"):
        assert "gradio" not in path.read_text(), path


def test_no_tab_handler_takes_more_than_a_dozen_positional_parameters():
    for info in pkgutil.iter_modules(tabs.__path__):
        module = importlib.import_module(f"tabs.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name, fn in inspect.getmembers(cls, inspect.isfunction):
                if fn.__module__ != module.__name__:  # inherited, e.g. a Gradio component's own methods
                    continue
                params = inspect.signature(fn).parameters.values()
                assert not any(p.kind is p.VAR_POSITIONAL for p in params), f"{cls.__name__}.{name} takes *args"
                positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
                assert len(positional) <= 12, f"{cls.__name__}.{name} takes {len(positional)} positional values"


def test_a_form_hands_its_values_by_name_and_keeps_the_api_order():
    with gr.Blocks():
        a, b, c = gr.Number(), gr.Number(), gr.Number()
    form = Form(first=a, rest=[b, c])
    assert form.components == [a, b, c]
    seen = {}
    handler = form.bind(lambda values, request, progress: seen.update(values, request=request))
    params = list(inspect.signature(handler).parameters.values())
    assert [p.name for p in params][-2:] == ["request", "progress"] and len(params) == 5
    assert isinstance(params[-1].default, gr.Progress) and handler.__annotations__["request"] is gr.Request
    handler(1, 2, 3, "req", None)
    assert seen == {"first": 1, "rest": [2, 3], "request": "req"}


def test_build_takes_widget_values_by_keyword():
    from studio.sdedit import SDEditParams

    params = build(SDEditParams, {"t0": 0.3, "steps": 20.0, "seed": None, "prompt": None, "editor": {}}, cfg=3)
    assert (params.t0, params.steps, params.seed, params.prompt, params.cfg) == (0.3, 20, -1, "", 3)


def test_one_seed_policy():
    assert pick_seed(7) == 7
    seeds = {pick_seed(-1, n=8) for _ in range(50)}
    assert len(seeds) > 40 and all(0 <= s <= MAX_SEED - 7 for s in seeds)


def test_size_bounds_are_the_callers():
    warnings = []
    assert snap_size(1500, "width", warnings, hi=2048) == 1504 and "rounded" in warnings[0]
    with pytest.raises(ValueError, match="between 64 and 1024"):
        snap_size(1500, "width", [], hi=1024)


def test_a_closed_session_leaves_nothing_behind(manager, tmp_path):
    ctx = StudioContext(manager, "tiny", tmp_path)
    request = SimpleNamespace(session_hash="abc")
    flag = ctx.cancel.arm("abc")
    ctx.loras["abc"] = [(tmp_path / "x", 1.0)]
    ctx.end_session(request)
    assert flag.is_set(), "a job still running for the closed tab is told to stop"
    assert "abc" not in ctx.loras


def test_the_app_cleans_up_when_a_tab_closes(manager, tmp_path):
    from app import build_app

    demo = build_app(manager, "tiny", tmp_path)
    unload = [d.fn for d in demo.fns.values() if any(t[1] == "unload" for t in d.targets)]
    assert len(unload) == 1 and unload[0].__func__ is StudioContext.end_session


def test_catalog_families_pick_presets_and_controls(manager):
    assert manager.family("shapes") == manager.family(str(ROOT / "models/shapes/sd")) == "shapes"
    assert manager.family("tiny") == "tiny" and manager.family("someone/some-sd15-finetune") == "sd15"
    assert manager.controls_for("shapes") == ["shapes-controlnet", "shapes-t2i-adapter"]
    assert "controlnet-canny" in manager.controls_for("someone/some-sd15-finetune")
