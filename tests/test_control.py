"""ControlNet / T2I-Adapter loop on the tiny model: it is diffusers' own pipelines step for step, scale 0 is the
plain image, windows, guess mode, composition, img2img and the errors a user can hit."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionAdapterPipeline, StableDiffusionControlNetPipeline
from PIL import Image

from studio.control import ControlParams, ControlUnit, control_scales, fit_condition, run_control
from studio.generate import GenerateParams, run_generate
from studio.sampling import make_scheduler
from studio.jobs import Cancelled
from studio.models import ModelUnavailable

PROMPT = "a red circle on the left"
CONDITION = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
PARAMS = ControlParams(PROMPT, steps=5, width=64, height=64, seed=3)


@pytest.fixture(scope="module")
def controlnet(manager, tiny_root, tmp_path_factory):
    """The tiny ControlNet with its zero convolutions made non-zero (as after training), loaded from a folder."""
    model = ControlNetModel.from_pretrained(tiny_root / "controlnet")
    torch.manual_seed(1)
    for block in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
        for p in block.parameters():
            p.data.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("controlnet")
    model.save_pretrained(folder)
    return manager.component(str(folder))


@pytest.fixture(scope="module")
def adapter(manager):
    return manager.component("tiny-t2i-adapter")


@pytest.fixture
def pipe(manager):
    with manager.lend("tiny") as pipe:
        pipe.set_progress_bar_config(disable=True)
        yield pipe


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def same(a: Image.Image, b: Image.Image | np.ndarray, tol: float = 1.0) -> bool:
    """Equal up to the 8-bit rounding of two decodes."""
    return np.abs(pixels(a) - (b if isinstance(b, np.ndarray) else pixels(b))).max() <= tol


def diffusers_image(manager, cls, components: dict, **scale) -> np.ndarray:
    """The same request (prompt, condition, seed 3, 5 UniPC steps) through diffusers' own pipeline, 0–255."""
    with manager.lend("tiny", cls, **components) as reference:
        reference.set_progress_bar_config(disable=True)
        reference.scheduler = make_scheduler("UniPC", reference.scheduler.config)
        out = reference(PROMPT, image=CONDITION, num_inference_steps=5, width=64, height=64, output_type="np",
                        generator=torch.Generator("cpu").manual_seed(3), **scale)
    return out.images[0] * 255


def test_no_control_and_scale_zero_are_the_plain_text_to_image_loop(pipe, controlnet, adapter):
    plain = run_generate(pipe, GenerateParams(PROMPT, steps=5, width=64, height=64, seed=3, scheduler="UniPC"))
    assert same(run_control(pipe, [], PARAMS).image, plain.images[0], tol=0)
    off = run_control(pipe, [ControlUnit(controlnet, CONDITION, 0.0), ControlUnit(adapter, CONDITION, 0.0)], PARAMS)
    assert same(off.image, plain.images[0], tol=0)


def test_controlnet_unit_matches_diffusers_controlnet_pipeline(manager, pipe, controlnet):
    ours = run_control(pipe, [ControlUnit(controlnet, CONDITION, 0.8)], PARAMS).image
    assert not same(ours, run_control(pipe, [], PARAMS).image, tol=8)  # the control does something
    theirs = diffusers_image(manager, StableDiffusionControlNetPipeline, dict(controlnet=controlnet),
                             controlnet_conditioning_scale=0.8)
    assert same(ours, theirs)


def test_adapter_unit_matches_diffusers_adapter_pipeline_and_runs_the_adapter_once(manager, pipe, adapter):
    calls = []
    hook = adapter.register_forward_hook(lambda *_: calls.append(1))
    try:
        ours = run_control(pipe, [ControlUnit(adapter, CONDITION, 0.8)], PARAMS).image
    finally:
        hook.remove()
    assert len(calls) == 1  # features once per image, never per step (5 steps here)
    theirs = diffusers_image(manager, StableDiffusionAdapterPipeline, dict(adapter=adapter),
                             adapter_conditioning_scale=0.8)
    assert same(ours, theirs)


def test_start_and_end_window_the_control(pipe, controlnet):
    plain = run_control(pipe, [], PARAMS).image
    full = run_control(pipe, [ControlUnit(controlnet, CONDITION)], PARAMS).image
    late = run_control(pipe, [ControlUnit(controlnet, CONDITION, start=0.6)], PARAMS).image
    assert not same(late, full, tol=4) and not same(late, plain, tol=4)
    # A window shorter than one step (0.1 of 5 steps) covers no step at all.
    assert same(run_control(pipe, [ControlUnit(controlnet, CONDITION, end=0.1)], PARAMS).image, plain, tol=0)


def test_guess_mode_controls_only_the_conditional_branch(pipe, controlnet):
    unit = [ControlUnit(controlnet, CONDITION)]
    normal = run_control(pipe, unit, PARAMS).image
    assert not same(run_control(pipe, unit, replace(PARAMS, guess_mode=True)).image, normal, tol=4)


def seen(pipe, model, params, unit_scale=1.0):
    """What one step gives: the ControlNet's own outputs, and the residuals the UNet receives from them."""
    found = {}

    def net(module, args, kwargs, out):
        found.setdefault("net", (args[0].shape[0], out))  # the batch it saw, what it made

    def unet(module, args, kwargs):
        found.setdefault("unet", kwargs)

    hooks = [model.register_forward_hook(net, with_kwargs=True),
             pipe.unet.register_forward_pre_hook(unet, with_kwargs=True)]
    try:
        run_control(pipe, [ControlUnit(model, CONDITION, unit_scale)], replace(params, steps=1))
    finally:
        for hook in hooks:
            hook.remove()
    return found["net"], found["unet"]


def test_control_modes_scale_the_residuals_as_sd_webui_controlnet_defines_them(pipe, controlnet):
    """Balanced: the ControlNet's residuals as they are, on both branches. "My prompt is more important": residual i
    of n scaled by 0.825^(n−1−i) (middle block 1, shallowest least). "ControlNet is more important": those scales,
    and the ControlNet sees only the conditional branch, the unconditional one gets no residual at all."""
    assert control_scales("prompt", 13)[0] == pytest.approx(0.825 ** 12) and control_scales("prompt", 13)[-1] == 1
    assert control_scales("balanced", 13) == [1.0] * 13
    assert control_scales("control", 4, adapter=True) == pytest.approx([0.25, 0.62, 0.825, 1.0])
    for mode in ("balanced", "prompt", "control"):
        (batch, (down, mid)), unet_in = seen(pipe, controlnet, replace(PARAMS, control_mode=mode), 0.8)
        given = [*unet_in["down_block_additional_residuals"], unet_in["mid_block_additional_residual"]]
        made = [*down, mid]
        scales = control_scales(mode, len(made))
        assert batch == (1 if mode == "control" else 2)  # the conditional branch (and the unconditional one)
        for r, g, s in zip(made, given, scales):
            cond = g[1:] if mode == "control" else g
            torch.testing.assert_close(cond, r * s)  # conditioning_scale 0.8 is applied inside the ControlNet
            if mode == "control":
                assert not g[:1].any()  # the unconditional branch is uncontrolled
    assert not same(run_control(pipe, [ControlUnit(controlnet, CONDITION)], replace(PARAMS, control_mode="prompt")
                                ).image, run_control(pipe, [ControlUnit(controlnet, CONDITION)], PARAMS).image, tol=2)
    with pytest.raises(ValueError, match="Guess mode sets its own"):
        replace(PARAMS, guess_mode=True, control_mode="prompt")


def test_units_compose_controlnet_and_adapter_together(pipe, controlnet, adapter):
    other = CONDITION.transpose(Image.FLIP_LEFT_RIGHT)
    one = run_control(pipe, [ControlUnit(controlnet, CONDITION)], PARAMS).image
    two = run_control(pipe, [ControlUnit(controlnet, CONDITION), ControlUnit(adapter, other)], PARAMS)
    assert not same(two.image, one, tol=4) and len(two.conditions) == 2
    with pytest.raises(ValueError, match="At most 3"):
        run_control(pipe, [ControlUnit(controlnet, CONDITION)] * 4, PARAMS)


def test_img2img_runs_the_strength_fraction_of_the_steps(pipe, controlnet):
    steps = []
    params = replace(PARAMS, steps=10, strength=0.3)
    result = run_control(pipe, [ControlUnit(controlnet, CONDITION)], params, init_image=CONDITION.convert("RGBA"),
                         on_step=lambda i, n: steps.append((i, n)))
    assert steps[-1] == (3, 3) and result.image.size == (64, 64)


@pytest.mark.parametrize("mode, corner, centre", [("resize", 255, 255), ("crop and resize", 255, 255),
                                                   ("resize and fill", 0, 255)])
def test_resize_modes_fit_a_wide_map_to_a_square(mode, corner, centre):
    wide = Image.new("RGB", (128, 64), "white")
    fitted = np.asarray(fit_condition(wide, (64, 64), mode))
    assert fitted.shape == (64, 64, 3) and fitted[0, 32, 0] == corner and fitted[32, 32, 0] == centre


def test_a_control_model_of_another_base_model_is_refused(pipe, tiny_root):
    wrong = ControlNetModel(block_out_channels=(16, 32), cross_attention_dim=32, layers_per_block=1,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=2,
                            norm_num_groups=8, conditioning_embedding_out_channels=(8, 16, 16, 16))
    with pytest.raises(ValueError, match="another base model"):
        run_control(pipe, [ControlUnit(wrong, CONDITION, name="wrong")], PARAMS)


@pytest.mark.parametrize("unit, message", [
    (dict(scale=2.5), "between 0 and 2"), (dict(start=0.8, end=0.5), "start before it ends")])
def test_bad_unit_settings_get_a_clear_message(pipe, controlnet, unit, message):
    with pytest.raises(ValueError, match=message):
        run_control(pipe, [ControlUnit(controlnet, CONDITION, **unit)], PARAMS)


def test_cancel_stops_between_steps(pipe, controlnet):
    with pytest.raises(Cancelled):
        run_control(pipe, [ControlUnit(controlnet, CONDITION)], PARAMS, should_stop=lambda: True)


def test_components_resolve_by_catalog_name_or_folder(manager, tiny_root):
    assert manager.component_kind("shapes-controlnet") == "controlnet"
    assert manager.component_kind(str(tiny_root / "t2i-adapter")) == "t2i_adapter"
    with pytest.raises(ModelUnavailable, match="not a ControlNet or T2I-Adapter"):
        manager.component(str(tiny_root / "sd"))
