"""A person's path through the app in a real browser (Debian chromium driven by Playwright)."""

import io
import re
import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")
from docs.screenshots import CHROMIUM, FLAGS, set_number  # noqa: E402  (needs playwright: after the skip)
SCREENSHOTS = Path(os.environ.get("SCREENSHOTS", Path(__file__).parent.parent / "outputs" / "screenshots"))


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see README, Running the tests)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_type_a_prompt_click_generate_and_see_an_image(page, app_url):
    page.goto(app_url)
    page.get_by_text("its pictures are noise").first.wait_for(timeout=30_000)
    page.locator("#gen-prompt textarea").fill("a red circle on the left")
    page.locator("#gen-run").click()
    page.locator("#gen-info").get_by_text(re.compile(r"^Seed \d")).wait_for(timeout=60_000)  # done
    page.locator("#gen-gallery img").first.wait_for(timeout=10_000)
    page.wait_for_function("() => document.querySelector('#gen-gallery img').complete")
    rendering = page.locator("#gen-gallery img").first.evaluate("img => getComputedStyle(img).imageRendering")
    assert rendering == "pixelated", "a small picture is enlarged with crisp pixels, not smeared"
    shot(page, "generate")
    page.get_by_role("button", name="Send to SDEdit ➜").click()
    sdedit_prompt = page.locator("#sdedit-prompt textarea, #sdedit-prompt input").first
    sdedit_prompt.wait_for(timeout=10_000)
    assert page.get_by_role("tab", name="SDEdit").get_attribute("aria-selected") == "true"
    assert sdedit_prompt.input_value() == "a red circle on the left"
    page.wait_for_timeout(1000)
    shown = np.asarray(Image.open(io.BytesIO(page.locator("#sdedit-editor").screenshot())).convert("HSV"))
    assert (shown[..., 1] > 100).sum() > 2000, "the generated (colourful) image is on the SDEdit canvas"


def test_send_to_another_tab_carries_image_prompt_and_seed(page, manager, tmp_path):
    from tabs import SendTarget, StudioContext, wire_send_to
    from tabs.generate import GenerateTab
    from tests.conftest import free_port

    ctx = StudioContext(manager, "tiny", tmp_path, send_to={"target": "Target"})
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            GenerateTab(ctx)
            with gr.Tab("Target", id="target"):
                image = gr.Image(label="Received", elem_id="received")
                prompt, seed = gr.Textbox(label="Received prompt"), gr.Number(label="Received seed")
        ctx.send_targets.append(SendTarget("Target", "target", image, prompt, seed))
        wire_send_to(ctx, tabs)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(tmp_path)])
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#gen-prompt textarea").fill("a blue star")
        page.locator("#gen-seed input").fill("1234")
        page.locator("#gen-run").click()
        page.get_by_text("Seed 1234").wait_for(timeout=60_000)
        assert page.locator("[role=tab]").all_inner_texts() == ["Generate", "Target"]
        page.get_by_role("button", name="Send to Target ➜").click()
        page.get_by_label("Received prompt").wait_for(timeout=10_000)
        assert page.get_by_label("Received prompt").input_value() == "a blue star"
        assert page.get_by_label("Received seed").input_value() == "1234"
        assert page.locator("[role=tab]").all_inner_texts() == ["Generate", "Target"]
        shot(page, "send-to")
        page.locator("#received img").wait_for(timeout=10_000)
    finally:
        demo.close()


def test_paint_a_stroke_and_run_sdedit(page, app_url):
    page.goto(app_url)
    page.get_by_role("tab", name="SDEdit").click()
    page.get_by_role("button", name="Blank white canvas").click()
    editor = page.locator("#sdedit-editor")
    editor.get_by_role("button", name="Brush", exact=True).click()
    canvas = editor.locator("canvas").last
    canvas.wait_for()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.4)
    page.mouse.down()
    for i in range(12):
        page.mouse.move(box["x"] + box["width"] * (0.25 + 0.02 * i), box["y"] + box["height"] * (0.4 + 0.02 * i))
    page.mouse.up()
    painted = np.asarray(Image.open(io.BytesIO(editor.screenshot())).convert("RGB")).astype(int)
    red = (painted[..., 0] > 150) & (painted[..., 1] < 90) & (painted[..., 2] < 90)
    assert red.sum() > 50, "the brush stroke should be on the canvas"
    page.locator("#sdedit-prompt textarea, #sdedit-prompt input").first.fill("a red circle on the left")
    page.locator("#sdedit-run").click()
    page.locator("#sdedit-info").get_by_text("→ timestep").wait_for(timeout=60_000)  # done, after the previews
    page.locator("#sdedit-output img").wait_for(timeout=10_000)
    shot(page, "sdedit")
    page.locator("#sdedit-send-classify").click()  # every output goes on to every tab that takes an image
    page.locator("#classify-image img").wait_for(timeout=10_000)
    assert page.get_by_role("tab", name="Classify").get_attribute("aria-selected") == "true"


def test_upload_an_image_and_classify_it(page, app_url, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    page.goto(app_url)
    page.get_by_role("tab", name="Classify").click()
    page.locator("#classify-image input[type=file]").set_input_files(str(tmp_path / "x.png"))
    page.locator("#classify-classes textarea").fill("red circle\nblue square\ngreen star")
    page.get_by_text("3 classes × 10 samples").wait_for(timeout=10_000)  # the cost estimate follows the list
    page.locator("#classify-run").click()
    page.get_by_text("Prediction:").wait_for(timeout=60_000)
    page.locator("#classify-ranking canvas, #classify-ranking svg").first.wait_for(timeout=10_000)
    shot(page, "classify")


def test_edit_a_prompt_see_word_sliders_and_attention_maps(page, app_url):
    page.goto(app_url)
    page.get_by_role("tab", name="Prompt-to-Prompt").click()
    page.get_by_text("smiling ×5 (reweight)").first.click()  # an example sets the weight it names on its word
    playwright.expect(page.locator("input[type=number][aria-label='number input for smiling']")).to_have_value("5")
    page.locator("#p2p-run").click()
    page.get_by_text("weights: smiling ×5").wait_for(timeout=60_000)
    page.get_by_text("+ in winter (refine)").first.click()  # an example fills the prompts
    page.get_by_label("winter").first.wait_for(timeout=10_000)  # and the word sliders follow
    page.locator("#p2p-target textarea, #p2p-target input").first.fill("a green circle today")
    page.get_by_label("today").first.wait_for(timeout=10_000)  # a weight slider per word of the edited prompt
    set_number(page, "green", "2")
    page.locator("#p2p-source textarea, #p2p-source input").first.fill("a red circle today")
    page.locator("#p2p-run").click()
    page.locator("#p2p-edited-image img").wait_for(timeout=60_000)
    page.get_by_text("weights: green ×2").wait_for()  # typing the source prompt kept the weight
    page.locator("#p2p-source-maps img").first.wait_for(timeout=30_000)
    page.get_by_label("green").first.wait_for()
    shot(page, "p2p")


def test_upload_an_image_see_its_map_and_generate_with_control(page, app_url, tmp_path):
    from tests.test_preprocess import square

    square().save(tmp_path / "square.png")
    page.goto(app_url)
    page.get_by_role("tab", name="ControlNet / T2I-Adapter").click()
    page.locator("#control-image-1 input[type=file]").set_input_files(str(tmp_path / "square.png"))
    page.locator("#control-map-1 canvas").first.wait_for(timeout=30_000)  # the Canny preview fills the editor
    page.locator("#control-pre-1 input").fill("Colour grid")
    page.locator("#control-pre-1 input").press("Enter")
    page.get_by_label("Block").first.wait_for(timeout=10_000)  # the colour grid's own knob appears
    page.locator("#control-run").click()
    page.locator("#control-output img").wait_for(timeout=60_000)
    page.get_by_text("seed 0").wait_for(timeout=10_000)
    shot(page, "control")


def test_pick_a_shapes_concept_train_a_few_steps_and_see_the_loss(page, app_url):
    page.goto(app_url)
    page.get_by_role("tab", name="Train a LoRA").click()
    page.get_by_role("button", name="Use 5 renders").click()
    page.locator("#train-files tr").nth(4).wait_for(timeout=20_000)  # five renders listed
    page.locator("#train-settings").get_by_text("Settings").first.click()
    page.locator("#train-settings").get_by_text("Learning rate").first.wait_for(timeout=10_000)
    for label, value in (("Steps", "4"), ("Resolution", "64"), ("Validate every", "0")):
        boxes = page.locator(f"input[type=number][aria-label*='{label}']")
        box = next(boxes.nth(i) for i in range(boxes.count()) if boxes.nth(i).is_visible())
        box.fill(value)
        box.press("Enter")
    page.locator("#train-name input, #train-name textarea").first.fill("browser-job")
    page.locator("#train-start").click()
    page.get_by_text("browser-job · done · step 4 of 4").wait_for(timeout=120_000)
    page.get_by_text("pytorch_lora_weights").first.wait_for(timeout=10_000)  # the downloads appear
    shot(page, "train")


def wait_for_result(page, info: str, text: str, timeout: float) -> None:
    """Wait for `text` in the `info` element; on a timeout, fail with what the page said instead (its toasts)."""
    try:
        page.locator(info).get_by_text(text).wait_for(timeout=timeout)
    except playwright.TimeoutError:
        toasts = page.locator("[data-testid='toast-body']").all_inner_texts()
        raise AssertionError(f"no {text!r} in {info} ({page.locator(info).inner_text()!r}); toasts: {toasts}")


def generate_and_send(page, app_url, tab: str) -> None:
    """Generate "a red circle on the left" and press the result's "Send to <tab>"."""
    page.goto(app_url)
    page.locator("#gen-prompt textarea").fill("a red circle on the left")
    page.locator("#gen-run").click()
    page.locator("#gen-info").get_by_text(re.compile(r"^Seed \d")).wait_for(timeout=60_000)
    page.get_by_role("button", name=f"Send to {tab} ➜").click()


def test_send_a_generated_image_to_edit_a_real_image_and_edit_it(page, app_url):
    generate_and_send(page, app_url, "Edit a real image")
    caption = page.locator("#edit-caption textarea")
    playwright.expect(caption).to_have_value("a red circle on the left", timeout=10_000)
    assert page.get_by_role("tab", name="Edit a real image").get_attribute("aria-selected") == "true"
    page.locator("#edit-target textarea").fill("a blue circle on the left")
    page.locator("#edit-method").get_by_label("DDIB (Su et al. 2023)", exact=False).check()
    page.locator("#edit-run").click()
    page.locator("#edit-info").get_by_text("DDIM inversion computed").wait_for(timeout=60_000)
    assert page.locator("#edit-result img").count() == 2, "before and after, on the slider"
    page.locator("#edit-run").click()  # the same image, caption and steps: the inversion is reused
    page.locator("#edit-info").get_by_text("DDIM inversion reused").wait_for(timeout=60_000)
    shot(page, "edit")


def test_send_a_generated_image_to_instruct_pix2pix_edit_it_and_see_the_grid(page, app_url):
    generate_and_send(page, app_url, "InstructPix2Pix")
    # The tab switches when the send's event returns, not at the click: wait for it instead of reading it at once.
    playwright.expect(page.get_by_role("tab", name="InstructPix2Pix")).to_have_attribute("aria-selected", "true",
                                                                                         timeout=20_000)
    # The tab opens with its first example's picture: Edit waits until the sent one has replaced it.
    page.wait_for_function("() => { const img = document.querySelector('#ip2p-image img');"  # a studio output's name
                           r" return img && img.complete && /\d{8}-\d{6}-[^/]*\.png$/.test(img.src); }", timeout=30_000)
    page.locator("#ip2p-instruction textarea").fill("make the circle blue")
    page.locator("#ip2p-run").click()
    wait_for_result(page, "#ip2p-info", "“make the circle blue”", timeout=120_000)
    assert page.locator("#ip2p-result img").count() == 2, "before and after, on the slider"
    page.locator("#ip2p-grid-run").click()
    playwright.expect(page.locator("#ip2p-grid img")).to_have_count(16, timeout=120_000)
    shot(page, "ip2p")


def test_drop_a_png_on_restore_and_its_tab_opens_with_its_settings(page, app_url, tmp_path):
    from studio.pnginfo import IMAGE_REF, Recipe, save_png
    from tests.test_pnginfo import A1111, png_with

    page.goto(app_url)
    page.get_by_text("Restore from a PNG").first.click()
    drop = page.locator("#restore-file input[type=file]")
    drop.set_input_files(str(png_with(tmp_path / "a1111.png", parameters=A1111)))
    page.get_by_text("settings from a PNG made by AUTOMATIC1111").wait_for(timeout=20_000)
    prompt = page.locator("#gen-prompt textarea")
    page.wait_for_function("() => document.querySelector('#gen-prompt textarea')?.value.includes('cat')",
                           timeout=10_000)
    assert prompt.input_value() == "a photo of a cat, (masterpiece:1.2)"
    assert page.locator("#gen-seed input").input_value() == "1234"
    shot(page, "restore")
    # One of the studio's own, from SDEdit: its tab opens, with the prompt and the guide image it used.
    guide = tmp_path / "guide.png"
    Image.new("RGB", (64, 64), (30, 60, 220)).save(guide)
    recipe = Recipe("sdedit", {"editor": {"background": {IMAGE_REF: "editor-1"}, "layers": [], "composite": None},
                               "prompt": "a blue square", "t0": 0.7, "seed": 11}, model="tiny",
                    images={"editor-1": guide.read_bytes()})
    save_png(Image.new("RGB", (64, 64)), recipe, tmp_path / "sdedit.png")
    page.locator("#restore-file button[aria-label='Clear']").first.click()
    drop.set_input_files(str(tmp_path / "sdedit.png"))
    page.get_by_text("**SDEdit** settings").or_(page.get_by_text("SDEdit settings")).first.wait_for(timeout=20_000)
    page.wait_for_function("() => document.querySelector('#sdedit-prompt textarea, #sdedit-prompt input')"
                           "?.value === 'a blue square'", timeout=20_000)
    assert page.get_by_role("tab", name="SDEdit").get_attribute("aria-selected") == "true"
    page.wait_for_timeout(1000)
    shown = np.asarray(Image.open(io.BytesIO(page.locator("#sdedit-editor").screenshot())).convert("RGB")).astype(int)
    blue = (shown[..., 2] > 180) & (shown[..., 0] < 80)
    assert blue.sum() > 2000, "the guide the PNG carried is on the canvas"
