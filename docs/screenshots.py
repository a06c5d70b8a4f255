"""Regenerate the README screenshots (docs/*.png): each tab of the running app, with a result.

Start the app with the built-in Shapes model, then run this script from the repository root:

    python app.py --offline --port 7899 --outputs /tmp/studio-outputs &
    python docs/screenshots.py                 # writes docs/<tab>.png for every tab, the LoRAs and Restore
    python docs/screenshots.py --out /tmp/shots --only p2p control

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` pip package (no `playwright install`).
"""

import argparse
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Locator, Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for studio.shapes.world (the Classify tab's example image)

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT = 120_000  # ms: the longest any result may take


def shown(locator: Locator) -> Locator:
    """The first visible match: hidden tabs hold components with the same labels."""
    return locator.filter(visible=True).first


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(500)


def open_accordion(page: Page, title: str) -> None:
    shown(page.get_by_role("button", name=title)).click()
    page.wait_for_timeout(300)


def field(page: Page, elem_id: str) -> Locator:
    """The text or number box of the component with this elem_id."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input")


def fill(box: Locator, value: str) -> None:
    """Type a value into a text or number box and commit it."""
    box = shown(box)
    box.fill(value)
    box.press("Tab" if box.evaluate("e => e.tagName") == "TEXTAREA" else "Enter")


def set_number(page: Page, label: str, value: str) -> None:
    """A number box, or a slider's own number box (Gradio labels it "number input for <label>")."""
    box = shown(page.locator(f"input[type=number][aria-label='{label}'], "
                             f"input[type=number][aria-label='number input for {label}']"))
    box.fill(value)
    box.press("Enter")


def run(page: Page, button_id: str, *results: Locator) -> None:
    """Click a run button and wait until every result is there."""
    page.locator(f"#{button_id}").click()
    for result in results:
        result.wait_for(timeout=WAIT)


def generate(page: Page) -> None:
    open_tab(page, "Generate")
    fill(field(page, "gen-prompt"), "a large blue star in the center, on a white background")
    fill(field(page, "gen-seed"), "0")
    run(page, "gen-run", page.get_by_text("Seed 0 ·"), page.locator("#gen-gallery img").first)


def sdedit(page: Page) -> None:
    open_tab(page, "SDEdit")
    page.get_by_role("button", name="Blank white canvas").click()
    editor = page.locator("#sdedit-editor")
    page.wait_for_timeout(1000)
    editor.get_by_role("button", name="Brush", exact=True).click()
    # A filled red disk on the left of the 64x64 canvas: horizontal strokes of the default (red, 5 px) brush.
    # The canvas is centred in the editor at the zoom it shows ("563%"); each mouse move costs a redraw, so few.
    box = editor.locator("canvas").last.bounding_box()
    zoom = float(editor.get_by_text(re.compile(r"^\d+%$")).inner_text().rstrip("%")) / 100

    def at(x: float, y: float) -> tuple[float, float]:  # canvas pixel -> screen point
        return box["x"] + box["width"] / 2 + (x - 32) * zoom, box["y"] + box["height"] / 2 + (y - 32) * zoom
    for dy in range(-8, 9, 3):
        half = math.sqrt(10 ** 2 - dy ** 2) - 2
        page.mouse.move(*at(16 - half, 32 + dy))
        page.mouse.down()
        page.mouse.move(*at(16 + half, 32 + dy), steps=2)
        page.mouse.up()
    fill(field(page, "sdedit-prompt"), "a red circle on the left")
    run(page, "sdedit-run", page.locator("#sdedit-output img"), page.get_by_text("→ timestep").first)


def p2p(page: Page) -> None:
    open_tab(page, "Prompt-to-Prompt")
    fill(field(page, "p2p-source"), "a red circle")
    fill(field(page, "p2p-target"), "a blue circle")
    shown(page.get_by_label("replace")).check()
    open_accordion(page, "Injection windows and LocalBlend")
    fill(page.get_by_label("LocalBlend words"), "circle")
    open_accordion(page, "More settings")  # guidance 3 keeps the layout on Shapes (models/shapes/README.md)
    set_number(page, "Guidance (CFG)", "3")
    set_number(page, "Seed", "3")
    run(page, "p2p-run", page.locator("#p2p-edited-image img"), page.locator("#p2p-source-maps img").first,
        page.get_by_text("seed 3 ·"))


def control(page: Page) -> None:
    open_tab(page, "ControlNet / T2I-Adapter")  # opens with a Shapes example: a green square and its Canny map
    page.locator("#control-map-1 canvas").first.wait_for(timeout=WAIT)
    run(page, "control-run", page.locator("#control-output img"), page.locator("#control-info").get_by_text("seed 0"))
    open_accordion(page, "Compare ControlNet and T2I-Adapter on condition 1")
    page.get_by_role("button", name="Compare (same map, prompt and seed)").click()
    page.get_by_text("Same map, prompt and seed").wait_for(timeout=WAIT)
    page.locator("#control-compare img").nth(2).wait_for(timeout=WAIT)


def classify(page: Page) -> None:
    from studio.shapes.world import ShapeSpec, render

    image, _ = render([ShapeSpec("diamond", "purple", "bottom right", "large")], ("gray",))
    path = Path(tempfile.mkdtemp()) / "purple-diamond.png"
    image.save(path)
    open_tab(page, "Classify")
    page.locator("#classify-image input[type=file]").set_input_files(str(path))
    page.locator("#classify-image img").first.wait_for(timeout=WAIT)
    run(page, "classify-run", page.get_by_text("Prediction:"),
        page.locator("#classify-ranking canvas, #classify-ranking svg").first)


def train(page: Page) -> None:
    """The preset concept as the preset sets it (2,000 steps, the weights averaged; about 13 minutes on a 2-core CPU,
    with a fresh --outputs folder), then tried with "a sks star"."""
    open_tab(page, "Train a LoRA")
    page.get_by_role("button", name="Use 5 renders").click()
    page.locator("#train-files tr").nth(4).wait_for(timeout=WAIT)
    page.locator("#train-settings").get_by_text("Settings").first.click()
    run(page, "train-start")
    page.locator("#train-status").get_by_text("· done ·").wait_for(timeout=10 * WAIT)
    fill(shown(page.get_by_label("Prompt", exact=True)), "a sks star")
    page.get_by_role("button", name="Generate with the LoRA").click()
    samples = page.locator(".block").filter(has_text="With the LoRA (seeds 0–3)").last
    samples.locator("img").nth(3).wait_for(timeout=WAIT)


def erase(page: Page) -> None:
    """The method picker on ESD: "a star" erased with the shapes-erase preset (about a minute on a 2-core CPU)."""
    open_tab(page, "Train a LoRA")
    page.locator("#train-method").get_by_text("Erase a concept (ESD-x)").click()
    fill(field(page, "train-name"), "no-star")
    fill(field(page, "train-erase"), "a star")
    shown(page.get_by_label("Preset")).click()
    page.get_by_role("option", name="shapes-erase").click()
    page.wait_for_timeout(500)
    run(page, "train-start")
    page.locator("#train-status").get_by_text("· done ·").wait_for(timeout=5 * WAIT)


def memorization(page: Page) -> Locator:
    """The probe on the base model against its own training set (indexing the 20,000 scenes takes half a minute)."""
    open_tab(page, "Train a LoRA")
    open_accordion(page, "Memorization probe (Carlini et al. 2023)")
    fill(shown(page.locator("#train-memorization").get_by_label("Prompt")), "a red circle")
    run(page, "memorization-run", page.locator("#memorization-picture img"))
    return page.locator("#train-memorization")


def edit(page: Page) -> None:
    """The tab's first Shapes example (DiffEdit: the blue square turns green), then every method on it side by side
    (Imagic's stages take about a minute on a 2-core CPU)."""
    open_tab(page, "Edit a real image")
    run(page, "edit-run", page.locator("#edit-result img").first, page.locator("#edit-info").get_by_text("DiffEdit"))
    page.locator("#edit-compare").click()
    page.locator("#edit-compared img").nth(5).wait_for(timeout=4 * WAIT)
    page.locator("#edit-info").get_by_role("cell", name="Prompt-to-Prompt").first.wait_for(timeout=WAIT)


def ip2p(page: Page) -> None:
    """The tab's first Shapes example (the red star made blue), then the guidance grid of the same edit."""
    open_tab(page, "InstructPix2Pix")
    run(page, "ip2p-run", page.locator("#ip2p-result img").first, page.locator("#ip2p-info").get_by_text("seed"))
    page.locator("#ip2p-grid-run").click()
    page.locator("#ip2p-grid img").nth(15).wait_for(timeout=2 * WAIT)


def loras(page: Page) -> Locator:
    """The LoRAs accordion after adding a kohya-format LoRA for the Shapes model (zero weights, kohya's tag metadata):
    its format, base model, rank and trigger words. The shot is of the accordion alone."""
    import json

    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(ROOT / "models" / "shapes" / "sd", subfolder="unet")
    state = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            stem = "lora_unet_" + name.replace(".", "_")
            state |= {f"{stem}.lora_down.weight": torch.zeros(4, module.in_features),
                      f"{stem}.lora_up.weight": torch.zeros(module.out_features, 4), f"{stem}.alpha": torch.tensor(4.)}
    path = Path(tempfile.mkdtemp()) / "pastel shapes v2.safetensors"
    tags = {"10_pastel": {"pastel shapes": 20, "soft colours": 12, "white background": 9}}
    save_file(state, path, metadata={"ss_output_name": "pastel-shapes", "ss_tag_frequency": json.dumps(tags)})
    open_accordion(page, "LoRAs and embeddings: apply them in every tab")
    open_accordion(page, "Add your own LoRA or embedding")
    page.locator("#lora-file input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#lora-name textarea, #lora-name input').value !== ''")
    page.locator("#lora-add").click()
    page.locator("#lora-detected").get_by_text("Added").wait_for(timeout=WAIT)
    return page.locator("#lora-bar")


def restore(page: Page) -> None:
    """The header's Restore after dropping a PNG written by AUTOMATIC1111 (its `parameters` text, built here):
    Generate opens with its prompt, sampler, seed and size, and the note says what was not used."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a purple diamond at the top right <lora:pastel-shapes:0.8>\nNegative prompt: "
                  "blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 1234, "
                  "Size: 64x64, Model: shapes, Hires upscale: 2, Version: v1.10.1")
    path = Path(tempfile.mkdtemp()) / "from-a1111.png"
    Image.new("RGB", (64, 64), "white").save(path, pnginfo=info)
    open_accordion(page, "Restore from a PNG")
    page.locator("#restore-file input[type=file]").set_input_files(str(path))
    page.locator("#restore-summary").get_by_text("AUTOMATIC1111").wait_for(timeout=WAIT)


SHOTS: dict[str, Callable[[Page], Locator | None]] = {"generate": generate, "sdedit": sdedit, "p2p": p2p,
                                                       "control": control, "classify": classify, "train": train,
                                                       "edit": edit, "ip2p": ip2p, "loras": loras,
                                                       "restore": restore,
                                                       "erase": erase, "memorization": memorization}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7899", help="the running app")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs")
    parser.add_argument("--only", nargs="+", choices=list(SHOTS), default=list(SHOTS), help="just these tabs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for name in args.only:
            started = time.perf_counter()
            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # a fresh session per tab
            page.goto(args.url, wait_until="load")
            page.wait_for_timeout(5000)  # Gradio renders after the load event
            area = SHOTS[name](page)  # a shot of part of the page, or None for all of it
            page.wait_for_timeout(1500)  # let images decode and plots draw
            toasts = page.locator("[data-testid='toast-body']")
            if toasts.count():
                print(f"  {name}: toast shown: {toasts.first.inner_text()!r}", file=sys.stderr)
            if area is None:
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            else:
                area.screenshot(path=str(args.out / f"{name}.png"))
            page.close()
            print(f"{args.out / name}.png  {time.perf_counter() - started:.1f} s")
        browser.close()


if __name__ == "__main__":
    main()
