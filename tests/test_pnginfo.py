"""Parameters in every output PNG: each tab's result, read back, makes the same pixels again through the app's API;
A1111 and ComfyUI PNGs (built here in their formats) restore their settings; bad files get clear messages."""

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.pnginfo import IMAGE_REF, Recipe, from_infotext, infotext, read_png, save_png

A1111 = ("a photo of a cat <lora:catstyle:0.8>, (masterpiece:1.2)\n"
         "Negative prompt: blurry, lowres\n"
         "Steps: 23, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, "
         'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "catstyle: 0123456789", '
         'Hires upscale: 2, Version: v1.10.1')

COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 30, "cfg": 6.0, "sampler_name": "dpmpp_2m",
                                                "scheduler": "karras", "denoise": 1.0, "model": ["10", 0],
                                                "positive": ["6", 0], "negative": ["7", 0],
                                                "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill, sunset", "clip": ["10", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["10", 1]}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "castles.safetensors", "strength_model": 0.7,
                                                  "strength_clip": 0.7, "model": ["4", 0], "clip": ["4", 1]}},
}

COMFY_WORKFLOW = {  # the editor's format: widget values in order, links apart
    "nodes": [
        {"id": 3, "type": "KSampler", "widgets_values": [77, "fixed", 12, 4.5, "euler_ancestral", "normal", 1],
         "inputs": [{"name": "model", "link": 1}, {"name": "positive", "link": 2}, {"name": "negative", "link": 3},
                    {"name": "latent_image", "link": 4}]},
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["dreamshaper_8.safetensors"]},
        {"id": 5, "type": "EmptyLatentImage", "widgets_values": [448, 320, 1]},
        {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["a lighthouse in a storm"]},
        {"id": 7, "type": "CLIPTextEncode", "widgets_values": [""]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 6, 0, 3, 1, "CONDITIONING"], [3, 7, 0, 3, 2, "CONDITIONING"],
              [4, 5, 0, 3, 3, "LATENT"]],
}


def png_with(path: Path, **chunks: str) -> Path:
    info = PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    Image.new("RGB", (16, 16), "white").save(path, pnginfo=info)
    return path


# 1. Other tools' PNGs
def test_an_a1111_png_restores_prompt_lora_sampler_and_numbers(tmp_path):
    recipe = read_png(png_with(tmp_path / "a1111.png", parameters=A1111))
    s = recipe.settings
    assert (recipe.tab, recipe.source) == ("generate", "AUTOMATIC1111")
    assert s["prompt"] == "a photo of a cat, (masterpiece:1.2)" and "<lora" not in s["prompt"]
    assert s["negative_prompt"] == "blurry, lowres"
    assert (s["steps"], s["cfg"], s["seed"], s["width"], s["height"]) == (23, 6.5, 1234, 512, 768)
    assert s["scheduler"] == "DPM++ 2M Karras", "newer A1111 writes the schedule type apart"
    assert recipe.loras == [{"name": "catstyle", "weight": 0.8, "hash": "0123456789"}]
    assert (recipe.model, recipe.model_hash) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert any("Hires upscale" in note and "Version" in note for note in recipe.notes), "what is not used is said"


def test_older_a1111_sampler_names_and_img2img_go_where_they_belong():
    old = from_infotext("a dog\nSteps: 8, Sampler: Euler a, CFG scale: 3, Seed: 5, Size: 64x64")
    assert old.settings["scheduler"] == "Euler a" and old.settings["negative_prompt"] == ""
    karras = from_infotext("x\nSteps: 8, Sampler: DPM++ 2M SDE Karras, CFG scale: 3, Seed: 5, Size: 64x64")
    assert karras.settings["scheduler"] == "DPM++ 2M SDE Karras"
    unknown = from_infotext("x\nSteps: 8, Sampler: Restart, CFG scale: 3, Seed: 5, Size: 64x64")
    assert "scheduler" not in unknown.settings and any("Restart" in n for n in unknown.notes)
    img2img = from_infotext("a cat\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 9, Size: 512x512, "
                            "Denoising strength: 0.45")
    assert img2img.tab == "sdedit" and img2img.settings["t0"] == 0.45
    assert from_infotext("just a prompt, with: a colon").settings["prompt"] == "just a prompt, with: a colon"


def test_a_comfyui_prompt_graph_restores_the_ksampler_and_the_texts_wired_to_it(tmp_path):
    recipe = read_png(png_with(tmp_path / "comfy.png", prompt=json.dumps(COMFY_PROMPT),
                               workflow=json.dumps(COMFY_WORKFLOW)))
    s = recipe.settings
    assert (recipe.tab, recipe.source) == ("generate", "ComfyUI")
    assert (s["prompt"], s["negative_prompt"]) == ("a castle on a hill, sunset", "fog")
    assert (s["seed"], s["steps"], s["cfg"], s["scheduler"]) == (42, 30, 6.0, "DPM++ 2M Karras")
    assert (s["width"], s["height"]) == (512, 640)
    assert recipe.model == "v1-5-pruned-emaonly.safetensors"
    assert recipe.loras == [{"name": "castles", "weight": 0.7, "hash": ""}]


def test_a_comfyui_workflow_alone_is_read_through_its_links(tmp_path):
    recipe = read_png(png_with(tmp_path / "wf.png", workflow=json.dumps(COMFY_WORKFLOW)))
    s = recipe.settings
    assert (s["prompt"], s["negative_prompt"]) == ("a lighthouse in a storm", "")
    assert (s["seed"], s["steps"], s["cfg"], s["scheduler"]) == (77, 12, 4.5, "Euler a")
    assert (s["width"], s["height"]) == (448, 320)


@pytest.mark.parametrize("chunks, message", [
    ({}, "carries no parameters"),
    ({"diffusion-studio": "{not json"}, "not JSON"),
    ({"diffusion-studio": "[1, 2]"}, "not a set of named values"),
    ({"diffusion-studio": '{"prompt": "x"}'}, "lack"),
    ({"prompt": json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}})}, "no KSampler"),
    ({"workflow": "{oops"}, "not JSON"),
])
def test_files_without_usable_parameters_are_refused_with_the_reason(tmp_path, chunks, message):
    with pytest.raises(ValueError, match=message):
        read_png(png_with(tmp_path / "p.png", **chunks))


def test_a_jpeg_or_a_broken_file_is_not_taken_for_a_png(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for name in ("x.jpg", "broken.png"):
        with pytest.raises(ValueError, match="not a PNG"):
            read_png(tmp_path / name)


def test_the_infotext_a_studio_png_carries_reads_back_in_a1111s_terms(tmp_path):
    recipe = Recipe("sdedit", {"prompt": "a red circle", "negative_prompt": "", "t0": 0.6, "steps": 20, "cfg": 3.0,
                               "seed": 7, "eta": 0.0, "editor": {"background": {IMAGE_REF: "editor-1"}},
                               "word_windows": "blue:0-0.4, circle:0-1"},
                    model="sd15", model_hash="abcdef0123", loras=[{"name": "dog", "weight": 0.75, "hash": "1" * 10}])
    text = infotext(recipe, (512, 384))
    assert text.splitlines()[0] == "a red circle <lora:dog:0.75>"
    assert "Denoising strength: 0.6" in text and "Size: 512x384" in text and "Model hash: abcdef0123" in text
    assert 'Word windows: "blue:0-0.4, circle:0-1"' in text and "Editor" not in text
    back = from_infotext(text)  # what A1111's PNG Info would show, read the way A1111 reads it
    assert (back.settings["prompt"], back.settings["t0"], back.settings["seed"]) == ("a red circle", 0.6, 7)
    assert back.loras == [{"name": "dog", "weight": 0.75, "hash": "1" * 10}]
    save_png(Image.new("RGB", (8, 8)), recipe, tmp_path / "s.png")
    assert read_png(tmp_path / "s.png").settings == recipe.settings


def test_an_older_generate_png_still_restores(tmp_path):
    old = {"prompt": "a red circle", "negative_prompt": "", "seed": 3, "steps": 4, "cfg": 5.0, "width": 64,
           "height": 64, "scheduler": "Euler a", "n_images": 2, "index": 1, "image_seed": 4, "model": "tiny"}
    recipe = read_png(png_with(tmp_path / "old.png", **{"diffusion-studio": json.dumps(old)}))
    assert recipe.tab == "generate" and recipe.settings["seed"] == 4 and recipe.settings["n_images"] == 1


# 2. Every tab's output makes itself again
@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def parameters(client, api: str) -> list[dict]:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"][api]["parameters"]


def predict(client, api: str, **given):
    """`api` called by argument name: the UI's defaults, and `given` over them."""
    args = []
    for parameter in parameters(client, api):
        name = parameter["parameter_name"]
        args.append(given[name] if name in given else parameter.get("parameter_default"))
    return client.predict(*args, api_name=api)


def settings_of(client, api: str, recipe: Recipe, folder: Path) -> dict:
    """The recipe's settings by the API's argument names, its images written out from the PNG."""
    def image(ref):
        if not (isinstance(ref, dict) and ref.get(IMAGE_REF)):
            return None
        path = folder / f"{ref[IMAGE_REF]}.png"
        path.write_bytes(recipe.images[ref[IMAGE_REF]])
        return handle_file(str(path))

    out = {}
    for parameter in parameters(client, api):
        name = parameter["parameter_name"]
        base, _, index = name.rpartition("_")
        if name not in recipe.settings and index.isdigit() and isinstance(recipe.settings.get(base), list):
            out[name] = recipe.settings[base][int(index)]  # one of a list of sliders (P2P's word weights)
            continue
        value = recipe.settings[name]
        if isinstance(value, dict) and "layers" in value:
            value = {"background": image(value["background"]), "layers": [image(v) for v in value["layers"]],
                     "composite": image(value.get("composite"))}
        elif isinstance(value, dict):
            value = image(value)
        out[name] = value
    return out


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def strokes(tmp_path: Path) -> dict:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "bg.png")
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((220, 30, 30, 255), (10, 10, 30, 40))
    layer.save(tmp_path / "strokes.png")
    return {"background": handle_file(str(tmp_path / "bg.png")),
            "layers": [handle_file(str(tmp_path / "strokes.png"))], "composite": None}


def photo(tmp_path: Path) -> str:
    """A real photo (not the model's own picture), as a JPEG: the PNG carries the very file."""
    from skimage import data

    Image.fromarray(data.astronaut()).resize((64, 64)).save(tmp_path / "astronaut.jpg", quality=90)
    return str(tmp_path / "astronaut.jpg")


def made(api: str, outputs) -> str:
    """The path of the picture a tab's API returned."""
    return {"/generate": lambda: outputs[0][0]["image"], "/p2p": lambda: outputs[1],
            "/edit": lambda: outputs[0][1], "/classify": lambda: outputs[4]}.get(api, lambda: outputs[0])()


@pytest.mark.slow
def test_every_tab_writes_a_png_whose_recipe_makes_the_same_pixels_again(client, tmp_path):
    fast = dict(steps=5, cfg=3.0, seed=-1)
    runs = {
        "/generate": dict(prompt="a red circle", negative_prompt="blurry", scheduler="Euler a", **fast),
        "/sdedit": dict(editor=strokes(tmp_path), prompt="a red circle", t0=0.6, **{**fast, "steps": 10}),
        "/p2p": dict(source_prompt="a red circle", target_prompt="a blue circle", **fast),
        "/control": dict(prompt="a red circle", map1={"background": handle_file(photo(tmp_path)), "layers": [],
                                                      "composite": handle_file(photo(tmp_path))},
                         scheduler="DPM++ 2M Karras", **fast),
        "/edit": dict(image=handle_file(photo(tmp_path)), method="DiffEdit", steps=5, seed=-1, n_noise=2),
        "/classify": dict(image=handle_file(photo(tmp_path)), classes="red circle\nblue square", schedule="custom",
                          custom="2:1"),
    }
    for api, given in runs.items():
        first = made(api, predict(client, api, **given))
        recipe = read_png(first)
        assert recipe.tab == api[1:], api
        assert recipe.settings["seed"] >= 0, f"{api}: the PNG holds the seed the job drew, not -1"
        assert recipe.model == "tiny" and len(recipe.model_hash) == 10, api
        again = made(api, predict(client, api, **settings_of(client, api, recipe, tmp_path)))
        assert np.array_equal(pixels(first), pixels(again)), f"{api}: the PNG's recipe makes the same picture"
    with Image.open(first) as report:  # Classify's report: the photo, its settings and the prediction
        assert "Studio tab: Classify" in report.info["parameters"]
    assert read_png(first).extra["prediction"] in ("red circle", "blue square")


def test_restore_names_the_tab_and_what_it_could_not_take(client, tmp_path):
    summary, found = client.predict(handle_file(str(png_with(tmp_path / "a.png", parameters=A1111))),
                                    api_name="/restore")
    assert "**Generate** settings from a PNG made by AUTOMATIC1111" in summary
    assert "v1-5-pruned-emaonly" in summary, "a model other than the studio's is pointed out"
    assert found["settings"]["seed"] == 1234 and found["tab"] == "generate"
    with pytest.raises(Exception, match="carries no parameters"):
        client.predict(handle_file(str(png_with(tmp_path / "plain.png"))), api_name="/restore")


def test_restoring_a_png_picks_the_loras_it_names_that_this_owner_has(manager, tmp_path):
    import gradio as gr

    from studio.lora import METADATA, WEIGHTS
    from tabs import StudioContext
    from tabs.generate import GenerateTab
    from tabs.loras import LoraBar
    from tabs.restore import RestoreBar

    (tmp_path / "loras" / "dog").mkdir(parents=True)
    for name in (WEIGHTS, METADATA):
        (tmp_path / "loras" / "dog" / name).write_text("{}")
    ctx = StudioContext(manager, "tiny", tmp_path)
    with gr.Blocks():
        bar = LoraBar(ctx)
        restore = RestoreBar(ctx, bar)
        with gr.Tabs() as tabs:
            generate = GenerateTab(ctx)
        restore.wire(tabs)
    recipe = from_infotext("a dog <lora:dog:0.6> <lora:cat:0.9>\nSteps: 8, Sampler: Euler, CFG scale: 3, Seed: 5, "
                           "Size: 64x64")
    updates = restore.apply(recipe, None)
    assert updates[generate.prompt] == "a dog" and updates[generate.seed] == 5
    assert (updates[bar.slots[0][0]], updates[bar.slots[0][1]]) == ("dog", 0.6)
    assert updates[bar.slots[1][0]] is None, "cat is not in this library"
    assert ctx.loras["api"] == [(tmp_path / "loras" / "dog", 0.6)], "applied for the session's next jobs"
    assert "**dog** × 0.6" in updates[bar.active]
