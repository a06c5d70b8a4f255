"""What a Space, a Docker host and a fresh machine need: a Python and torch that every pinned library accepts, front
matter a Space can build from, an image that runs as a user with its data on volumes, settings from the environment,
and the two Space flavours."""

import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from importlib.metadata import distribution, requires
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from app import parse_args
from deploy.space import ZEROGPU_PAIR, ZEROGPU_TORCH, make_space

ROOT = Path(__file__).resolve().parents[1]


def front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n"), f"{readme} has no front matter"
    return yaml.safe_load(text.split("---\n")[1])


def requirement_lines(path: Path) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def floor(spec: SpecifierSet) -> Version:
    return max(Version(s.version) for s in spec if s.operator in (">=", "=="))


def test_the_python_floor_is_one_every_pinned_library_accepts():
    """README front matter, Dockerfile and the start-up check name one floor, and each installed requirement's
    Requires-Python admits it."""
    import studio

    version = front_matter(ROOT / "README.md")["python_version"]
    assert Version(version) == Version(".".join(map(str, studio.PYTHON)))
    assert re.search(rf"^FROM python:{re.escape(version)}-slim$", (ROOT / "Dockerfile").read_text(), re.M)
    for requirement in requirement_lines(ROOT / "requirements.txt"):
        floor_of_dep = distribution(requirement.name).metadata.get("Requires-Python") or ""
        assert SpecifierSet(floor_of_dep).contains(version), f"{requirement.name} needs Python {floor_of_dep}"
    assert "Python 3.11" in (ROOT / "README.md").read_text()


def test_the_torch_floor_is_what_transformers_and_diffusers_enforce():
    ours = {r.name: r for r in requirement_lines(ROOT / "requirements.txt")}
    needed = max(floor(Requirement(r.split(";")[0]).specifier) for lib in ("transformers", "diffusers")
                 for r in requires(lib) if re.match(r"torch\s*>=", r))
    assert floor(ours["torch"].specifier) >= needed >= Version("2.6")
    # A matching pair: torchvision 0.21 is torch 2.6's (the minor versions move together, 0.15 with 2.0).
    assert floor(ours["torchvision"].specifier).minor == floor(ours["torch"].specifier).minor + 15


def test_an_old_python_gets_a_clear_message(monkeypatch):
    import importlib

    import studio

    monkeypatch.setattr(sys, "version_info", (3, 10, 13))
    with pytest.raises(ImportError, match="needs Python 3.11 or newer"):
        importlib.reload(studio)
    monkeypatch.undo()
    importlib.reload(studio)


def test_environment_variables_reach_the_same_settings_as_the_flags(monkeypatch, tmp_path):
    flags = parse_args(["--model", "sd15", "--device", "cpu", "--offline", "--compile", "--allow-pickle",
                        "--annotators", str(tmp_path), "--memory-budget", "3.5", "--outputs", str(tmp_path / "o"),
                        "--preload", "controlnet-canny", "--share", "--gpu-seconds", "90"])
    for name, value in {"STUDIO_MODEL": "sd15", "STUDIO_DEVICE": "cpu", "STUDIO_OFFLINE": "1", "STUDIO_COMPILE": "1",
                        "STUDIO_ALLOW_PICKLE": "true", "STUDIO_ANNOTATORS": str(tmp_path),
                        "STUDIO_MEMORY_BUDGET": "3.5", "STUDIO_OUTPUTS": str(tmp_path / "o"),
                        "STUDIO_PRELOAD": "controlnet-canny", "STUDIO_SHARE": "yes",
                        "STUDIO_GPU_SECONDS": "90"}.items():
        monkeypatch.setenv(name, value)
    assert vars(parse_args([])) == vars(flags)
    assert parse_args(["--model", "tiny"]).model == "tiny", "a flag wins over the environment"


def test_outputs_go_to_persistent_storage_when_a_space_has_it(monkeypatch, tmp_path):
    import app

    monkeypatch.delenv("STUDIO_OUTPUTS", raising=False)
    monkeypatch.setattr(app, "PERSISTENT", tmp_path)
    assert parse_args([]).outputs == tmp_path / "outputs"
    monkeypatch.setattr(app, "PERSISTENT", tmp_path / "absent")
    assert parse_args([]).outputs == Path("outputs")


def test_the_dockerfile_runs_as_a_user_with_data_on_volumes_and_a_health_check():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER studio$", text, re.M) and "useradd" in text
    volumes = json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M).group(1))
    env = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^ENV (.*?)(?=^\w)", text, re.M | re.S).group(1)))
    assert sorted(volumes) == sorted([env["HF_HOME"], env["STUDIO_OUTPUTS"]])
    assert "EXPOSE 7860" in text and "HEALTHCHECK" in text and "7860" in text.split("HEALTHCHECK")[1]
    # The header shows the two commands; the torch it installs satisfies the floor, as a pair.
    assert "docker build -t diffusion-studio ." in text and "docker run --gpus all" in text
    assert '"torch>=2.6" "torchvision>=0.21"' in text
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:2] == ["python", "app.py"]
    parse_args(cmd[2:])  # every flag of the CMD exists


def test_the_image_leaves_out_history_outputs_and_checkpoints():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(fnmatch(path, p) or fnmatch(path, p.removeprefix("**/")) or any(
            fnmatch("/".join(parts[:i]), p.removeprefix("**/")) for i in range(1, len(parts)))
                   for p in patterns)

    for path in (".git/config", "outputs/loras/x/instance/00.png", "models/shapes-work/unet.pt",
                 "studio/__pycache__/models.cpython-311.pyc", "tests/test_app.py"):
        assert ignored(path), path
    for path in ("app.py", "studio/models.py", "tabs/gpu.py", "presets/models.yaml", "requirements.txt",
                 "models/shapes/sd/unet/diffusion_pytorch_model.safetensors", "studio/assets/sd15/unet/config.json"):
        assert not ignored(path), path


@pytest.mark.parametrize("flavour", ["cpu", "zerogpu"])
def test_each_space_flavour_builds_from_its_folder(flavour, tmp_path):
    out = make_space(flavour, tmp_path / flavour)
    meta = front_matter(out / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (out / "app.py").is_file()
    import gradio

    assert meta["sdk_version"] == gradio.__version__
    assert Version(str(meta["python_version"])) >= Version("3.11")
    assert not (out / "tests").exists() and not (out / ".git").exists() and (out / "models/shapes/sd").is_dir()
    pins = {r.name: r for r in requirement_lines(out / "requirements.txt")}
    if flavour == "cpu":
        assert meta["suggested_hardware"] == "cpu-basic" and "preload_from_hub" not in meta
        return
    assert meta["suggested_hardware"] == "zero-a10g"
    torch, vision = (str(pins[n].specifier).removeprefix("==") for n in ("torch", "torchvision"))
    assert (torch, vision) == ZEROGPU_PAIR and torch in ZEROGPU_TORCH and Version(torch) >= Version("2.6")
    preloaded = {line.split()[0]: line.split()[1].split(",") for line in meta["preload_from_hub"]}
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in preloaded["stable-diffusion-v1-5/stable-diffusion-v1-5"]
    catalog = yaml.safe_load((ROOT / "presets/models.yaml").read_text())
    import app

    for name in app.ZEROGPU_DEFAULTS["STUDIO_PRELOAD"].split(","):  # what the Space loads at start-up is preloaded
        entry = next(catalog[section][name] for section in ("controlnet", "t2i_adapter", "instruct_pix2pix")
                     if name in catalog[section])
        assert entry["repo"] in preloaded
    assert catalog["base"][app.ZEROGPU_DEFAULTS["STUDIO_MODEL"]]["repo"] in preloaded


def test_the_quick_start_names_the_commands_ci_runs():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci/run").read_text()
    command = "python -m pytest -q -n 2 --dist loadfile"
    assert command in readme and command in ci
    assert "pip install -r requirements.txt && python app.py" in readme
    subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], check=True, capture_output=True, timeout=120)
