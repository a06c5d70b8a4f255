"""Train the Shapes model family: VAE, then UNet + text encoder, then a Canny ControlNet, a T2I-Adapter and an
InstructPix2Pix UNet.

    python -m studio.shapes.train vae --steps 1500
    python -m studio.shapes.train unet --steps 4000
    python -m studio.shapes.train controlnet --steps 1500
    python -m studio.shapes.train adapter --steps 1500
    python -m studio.shapes.train ip2p --steps 4000     # the InstructPix2Pix UNet, from the text-to-image one
    python -m studio.shapes.train export          # fp16 safetensors into models/shapes/

Every stage is reproducible (seeded data and weights) and resumable: it checkpoints to `<work>/<stage>.pt` every
`--save-every` steps and continues from there when run again; losses go to `<work>/<stage>.csv`. It runs on CUDA
when present, else on the CPU. The scenes come from `studio.shapes.world` (held-out triples never appear).
"""

import argparse
import csv
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from studio.device import pick_device
from studio.sampling import make_scheduler
from studio.ip2p import widen_conv_in
from studio.shapes.edits import sample_edit
from studio.shapes.world import caption_for, sample_scene, vocabulary
from studio.tiny import SD_SCHEDULER, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SIDE = 64  # image size; the VAE's /4 factor gives 16x16 latents
VAE = dict(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
           up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
           sample_size=SIDE)
UNET = dict(sample_size=SIDE // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
            attention_head_dim=8, norm_num_groups=16)
TEXT = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=128, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407)
# The folder's scheduler, what a plain diffusers pipeline uses: DPM++ 2M as in the studio. (With PNDM, SD 1.x's
# default, the model named the right colour in 60% of 40 held-out captions at 20 steps instead of 93%.)
DEFAULT_SCHEDULER = "DPM++ 2M"
# SD 1.x's betas rescaled to zero terminal SNR, v-prediction and "trailing" timesteps (Lin et al., "Common Diffusion
# Noise Schedules and Sample Steps are Flawed", WACV 2024). With SD's own schedule the last training step still shows
# 7% of the image and ε-prediction weighs the clean image by SNR, about 0.005 there: the UNet never learned to place a
# shape from the words and took the layout from the starting noise (position at chance). At zero SNR the first step
# must draw the layout from the prompt alone, and v-prediction weighs that as much as the rest. Stated in full: a
# scheduler made from a config takes its own class's default for anything the config leaves implicit.
SCHEDULER_CONFIG = {**SD_SCHEDULER, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
                    "prediction_type": "v_prediction"}
# InstructPix2Pix drops the instruction, the input image, or both, each for 5% of examples (Brooks et al. 2023,
# Sec. 3.4), so that the UNet also learns the two unconditional predictions its two guidance scales need.
IP2P_DROPOUT = 0.05
CAPTION_DROPOUT = 0.1  # empty captions teach the unconditional branch that classifier-free guidance needs
WORD_LOSS = 0.1  # weight of the text encoder's word loss (see `encode`)


def canny(image: np.ndarray) -> np.ndarray:
    """The ControlNet/adapter condition: Canny edges, white on black, 3 channels."""
    edges = cv2.Canny(image, 100, 200)
    return np.repeat(edges[..., None], 3, axis=-1)


class Scenes:
    """`n` training scenes rendered once (64x64 scenes take about a millisecond each) plus their edge maps."""

    def __init__(self, n: int, seed: int = 0):
        scenes = [sample_scene(seed * 10_000_000 + i, side=SIDE) for i in range(n)]
        self.specs = [(s.shapes, s.background) for s in scenes]
        images = np.stack([np.asarray(s.image) for s in scenes])
        self.pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.edges = torch.from_numpy(np.stack([canny(im) for im in images])).permute(0, 3, 1, 2).float() / 255

    def captions(self, index: torch.Tensor, rng: np.random.Generator) -> list[str]:
        """Captions are re-drawn every time: full, randomly shortened, or empty (dropout)."""
        out = []
        for i in index.tolist():
            draw = rng.random()
            shorten = random.Random(int(rng.integers(2**31))) if draw < 0.6 else None
            out.append("" if draw > 1 - CAPTION_DROPOUT else caption_for(*self.specs[i], shorten))
        return out


def _resume(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> tuple[int, bool]:
    """The step to go on from, and whether the optimizer's moments came back with the weights."""
    if not path.exists():
        return 0, False
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    moments = "optimizer" in state  # absent when seeded from a shipped model (`--init`): AdamW starts afresh
    if moments:
        optimizer.load_state_dict(state["optimizer"])
    print(f"resumed {path.name} at step {state['step']}")
    return state["step"], moments


def _loop(stage: str, work: Path, modules: dict[str, torch.nn.Module], params: list[torch.nn.Parameter],
          loss_fn: Callable[[int, np.random.Generator], torch.Tensor], *, steps: int, lr: float,
          save_every: int, recipe: dict | None = None) -> None:
    """The shared loop: AdamW with warm-up, gradient clipping, CSV log, checkpoint and resume. `recipe` is saved in
    the checkpoint for `export` to check."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    checkpoint = work / f"{stage}.pt"
    start, moments = _resume(checkpoint, modules, optimizer)
    for group in optimizer.param_groups:  # the rate asked for now wins over the resumed one (a cool-down stage)
        group["lr"] = group["initial_lr"] = lr
    # Warm-up over the first 200 steps of the whole run, and again when AdamW's moments start afresh.
    warmed = start if moments else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (warmed + s + 1) / 200))
    log = (work / f"{stage}.csv").open("a", newline="")
    writer = csv.writer(log)
    started = time.perf_counter()
    for step in range(start, steps):
        rng = np.random.default_rng(step)
        loss = loss_fn(step, rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        writer.writerow([step, f"{loss.item():.5f}"])
        if (step + 1) % 50 == 0:
            rate = (time.perf_counter() - started) / (step + 1 - start)
            print(f"{stage} step {step + 1}/{steps} loss {loss.item():.4f} ({rate:.2f} s/step)", flush=True)
            log.flush()
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = {name: m.state_dict() for name, m in modules.items()}
            torch.save({**state, **(recipe or {}), "optimizer": optimizer.state_dict(), "step": step + 1}, checkpoint)
    log.close()


def _load(work: Path, stage: str, modules: dict[str, torch.nn.Module]) -> None:
    state = torch.load(work / f"{stage}.pt", map_location="cpu", weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(state[name])


def build() -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    torch.manual_seed(0)
    return AutoencoderKL(**VAE), UNet2DConditionModel(**UNET), CLIPTextModel(CLIPTextConfig(**TEXT))


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([vae.encode(pixels[i : i + 256].to(device)).latent_dist.mean
                          for i in range(0, len(pixels), 256)]) * vae.config.scaling_factor


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["vae", "unet", "controlnet", "adapter", "ip2p", "export"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--scenes", type=int, default=20_000, help="training scenes rendered up front")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--work", type=Path, default=ROOT / "models" / "shapes-work", help="checkpoints and logs")
    p.add_argument("--out", type=Path, default=ROOT / "models" / "shapes", help="where `export` writes")
    p.add_argument("--init", type=Path, help="continue from an exported family (models/shapes) when --work is empty")
    p.add_argument("--device")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    vae, unet, text_encoder = build()
    if args.init:
        seed_from_export(args.init, args.work)
    if args.stage == "export":
        return export(args.work, args.out, vae, unet, text_encoder)
    tokenizer = load_tokenizer()
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k in (
        "beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "rescale_betas_zero_snr", "prediction_type")})
    if args.stage == "ip2p":
        return train_ip2p(args, vae, unet, text_encoder, tokenizer, noise_scheduler, device)
    data = Scenes(args.scenes)

    def batch_index(rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, len(data.pixels), args.batch))

    if args.stage == "vae":
        vae.to(device).train()

        def vae_loss(step: int, rng: np.random.Generator) -> torch.Tensor:
            x = data.pixels[batch_index(rng)].to(device)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            # L1 keeps edges sharp; a small KL keeps the latent smooth enough to diffuse in.
            return F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()

        _loop("vae", args.work, {"vae": vae}, list(vae.parameters()), vae_loss, steps=args.steps,
              lr=args.lr or 1e-3, save_every=args.save_every)
        return

    _load(args.work, "vae", {"vae": vae})
    vae.to(device).eval().requires_grad_(False)
    raw = encode_latents(vae, data.pixels, device) / vae.config.scaling_factor
    # SD's trick: scale latents to unit variance so the noise schedule fits them; the factor goes in the VAE config.
    vae.register_to_config(scaling_factor=float(1 / raw.std()))
    (args.work / "scaling.txt").write_text(str(vae.config.scaling_factor))
    latents = raw * vae.config.scaling_factor

    # Every word a caption can hold, for the word loss below.
    words = sorted({i for caption in vocabulary() for i in tokenizer(caption).input_ids} - set(tokenizer("").input_ids))
    word_index = torch.full((len(tokenizer),), -100, device=device)  # token id -> class; -100: not a word
    word_index[words] = torch.arange(len(words), device=device)

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's context and the text encoder's own losses. With CLIP's causal mask the end token and every
        padding position after it see the whole prompt, and a UNet trained on those 70-odd copies of the sentence
        ignores the words (diffuse word maps, no positions). So from the end token on the UNet sees the empty prompt's
        embedding, and the padding loss teaches the text encoder to output that by itself, as it must inside a plain
        diffusers pipeline; the words themselves are then the only place the UNet can read the prompt from.
        The word loss asks each word's output to still name that word (logits against the world's token embeddings):
        an encoder trained only through the UNet had let words the UNet did not use yet fade into each other ("top"
        and "bottom" came out 0.1 apart, at norm 10.6), and then the UNet could never learn them."""
        ids = tokenizer(["", *captions], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = text_encoder(ids).last_hidden_state
        null, hidden, ids = hidden[:1].detach(), hidden[1:], ids[1:]
        end = (ids == tokenizer.eos_token_id).int().argmax(1)  # the end token
        padding = (torch.arange(ids.shape[1], device=device)[None] >= end[:, None])[..., None]
        context = torch.where(padding, null, hidden)
        padding_loss = ((hidden - null) ** 2 * padding).sum() / (padding.sum() * hidden.shape[-1])
        logits = hidden @ text_encoder.get_input_embeddings().weight[words].T
        word_loss = F.cross_entropy(logits.flatten(0, 1), word_index[ids].flatten(), ignore_index=-100)
        return context, padding_loss + WORD_LOSS * word_loss

    def embed(captions: list[str]) -> torch.Tensor:
        return encode(captions)[0]

    def noisy(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A noised batch, the UNet's target (v = √ᾱ·ε − √(1−ᾱ)·x0) and the timesteps."""
        x0 = latents[index]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), device=device)
        return noise_scheduler.add_noise(x0, noise, t), noise_scheduler.get_velocity(x0, noise, t), t

    if args.stage == "unet":
        unet.to(device).train()
        text_encoder.to(device).train()

        def unet_loss(step: int, rng: np.random.Generator) -> torch.Tensor:
            index = batch_index(rng)
            x_t, target, t = noisy(index.to(device))
            context, text_loss = encode(data.captions(index, rng))
            return F.mse_loss(unet(x_t, t, context).sample, target) + text_loss

        _loop("unet", args.work, {"unet": unet, "text_encoder": text_encoder},
              [*unet.parameters(), *text_encoder.parameters()], unet_loss, steps=args.steps, lr=args.lr or 5e-4,
              save_every=args.save_every, recipe={"prediction_type": SCHEDULER_CONFIG["prediction_type"]})
        return

    _load(args.work, "unet", {"unet": unet, "text_encoder": text_encoder})
    for frozen in (unet, text_encoder):
        frozen.to(device).eval().requires_grad_(False)

    if args.stage == "controlnet":
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64)).to(device)

        def controlnet_loss(step: int, rng: np.random.Generator) -> torch.Tensor:
            index = batch_index(rng)
            x_t, target, t = noisy(index.to(device))
            with torch.no_grad():
                context = embed(data.captions(index, rng))
            down, mid = controlnet(x_t, t, context, controlnet_cond=data.edges[index].to(device), return_dict=False)
            pred = unet(x_t, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            return F.mse_loss(pred, target)

        _loop("controlnet", args.work, {"controlnet": controlnet}, list(controlnet.parameters()), controlnet_loss,
              steps=args.steps, lr=args.lr or 3e-4, save_every=args.save_every)
        return

    adapter = make_adapter().to(device)

    def adapter_loss(step: int, rng: np.random.Generator) -> torch.Tensor:
        index = batch_index(rng)
        x_t, target, t = noisy(index.to(device))
        with torch.no_grad():
            context = embed(data.captions(index, rng))
        features = adapter(data.edges[index].to(device))
        pred = unet(x_t, t, context, down_intrablock_additional_residuals=[f.clone() for f in features]).sample
        return F.mse_loss(pred, target)

    _loop("adapter", args.work, {"adapter": adapter}, list(adapter.parameters()), adapter_loss, steps=args.steps,
          lr=args.lr or 3e-4, save_every=args.save_every)


def train_ip2p(args: argparse.Namespace, vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
               tokenizer, noise_scheduler: DDPMScheduler, device: torch.device) -> None:
    """InstructPix2Pix on the world's exact edit triples (`studio.shapes.edits`); the VAE and text encoder stay
    frozen, so the edit pipeline shares them with the text-to-image one."""
    for stage, modules in (("vae", {"vae": vae}), ("unet", {"unet": unet, "text_encoder": text_encoder})):
        _load(args.work, stage, modules)
        for module in modules.values():
            module.to(device).eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=float((args.work / "scaling.txt").read_text()))
    edits = [sample_edit(i, side=SIDE) for i in range(args.scenes)]

    def pixels(scenes: list) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1

    # What diffusers' pipeline feeds the UNet: the input image's latent mode, unscaled, beside the scaled noisy one.
    image_latents = encode_latents(vae, pixels([e.before for e in edits]), device) / vae.config.scaling_factor
    latents = encode_latents(vae, pixels([e.after for e in edits]), device)
    instructions = [e.instruction for e in edits]
    edit = widen_conv_in(unet).to(device).train()

    def embed(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids.to(device)).last_hidden_state

    null = embed([""])

    def ip2p_loss(step: int, rng: np.random.Generator) -> torch.Tensor:
        index = torch.from_numpy(rng.integers(0, len(edits), args.batch)).to(device)
        x0, noise = latents[index], torch.randn_like(latents[index])
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), device=device)
        x_t, target = noise_scheduler.add_noise(x0, noise, t), noise_scheduler.get_velocity(x0, noise, t)
        draw = torch.from_numpy(rng.random(len(index))).to(device)
        no_text = (draw < 2 * IP2P_DROPOUT)[:, None, None]  # [0, 5%): text only, [5%, 10%): both
        no_image = ((draw >= IP2P_DROPOUT) & (draw < 3 * IP2P_DROPOUT))[:, None, None, None]
        context = torch.where(no_text, null, embed([instructions[i] for i in index.tolist()]))
        image = torch.where(no_image, 0.0, image_latents[index])
        return F.mse_loss(edit(torch.cat([x_t, image], 1), t, context).sample, target)

    _loop("ip2p", args.work, {"unet": edit}, list(edit.parameters()), ip2p_loss, steps=args.steps, lr=args.lr or 2e-4,
          save_every=args.save_every, recipe={"prediction_type": SCHEDULER_CONFIG["prediction_type"]})


def make_adapter() -> T2IAdapter:
    """Features for each UNet down block: pixel-unshuffle by the VAE's factor 4, then halve per block."""
    return T2IAdapter(in_channels=3, channels=list(UNET["block_out_channels"]), num_res_blocks=1, downscale_factor=4,
                      adapter_type="full_adapter")


def seed_from_export(folder: Path, work: Path) -> None:
    """Turn an exported family back into weight-only checkpoints at the step counts it records, so training goes on
    from a shipped model on a machine that never had the checkpoints. Stages already in `work` are left alone."""
    steps = json.loads((folder / "training.json").read_text())
    scheduler = json.loads((folder / "sd/scheduler/scheduler_config.json").read_text())
    stages = {"vae": {"vae": (AutoencoderKL, "sd/vae")},
              "unet": {"unet": (UNet2DConditionModel, "sd/unet"), "text_encoder": (CLIPTextModel, "sd/text_encoder")},
              "controlnet": {"controlnet": (ControlNetModel, "controlnet")},
              "adapter": {"adapter": (T2IAdapter, "t2i-adapter")},
              "ip2p": {"unet": (UNet2DConditionModel, "ip2p/unet")}}
    for stage, parts in stages.items():
        if stage in steps and not (work / f"{stage}.pt").exists():
            state = {name: cls.from_pretrained(folder / sub, dtype=torch.float32).state_dict()
                     for name, (cls, sub) in parts.items()}
            if stage in ("unet", "ip2p"):  # what `export` checks against the recipe
                state["prediction_type"] = scheduler.get("prediction_type", "epsilon")
            torch.save({**state, "step": steps[stage]}, work / f"{stage}.pt")
    if not (work / "scaling.txt").exists():
        (work / "scaling.txt").write_text(str(steps["scaling_factor"]))


def export(work: Path, out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
    """Write the trained stages in diffusers layout, fp16 safetensors: out/sd, out/controlnet, out/t2i-adapter."""
    # The scheduler config written below must match what the UNet learned to predict. Checkpoints from before the
    # key existed were ε-prediction.
    trained = torch.load(work / "unet.pt", map_location="cpu", weights_only=True).get("prediction_type", "epsilon")
    if trained != SCHEDULER_CONFIG["prediction_type"]:
        raise SystemExit(f"{work / 'unet.pt'} predicts {trained}, this recipe {SCHEDULER_CONFIG['prediction_type']}: "
                         "train it on with this recipe first, or export it with the commit that trained it.")
    _load(work, "vae", {"vae": vae})
    _load(work, "unet", {"unet": unet, "text_encoder": text_encoder})
    vae.register_to_config(scaling_factor=float((work / "scaling.txt").read_text()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=make_scheduler(DEFAULT_SCHEDULER, SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=torch.float16).save_pretrained(out / "sd")
    steps = {"scaling_factor": vae.config.scaling_factor}
    if (work / "controlnet.pt").exists():
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))
        _load(work, "controlnet", {"controlnet": controlnet})
        controlnet.to(torch.float16).save_pretrained(out / "controlnet")
    if (work / "adapter.pt").exists():
        adapter = make_adapter()
        _load(work, "adapter", {"adapter": adapter})
        adapter.to(torch.float16).save_pretrained(out / "t2i-adapter")
    if (work / "ip2p.pt").exists():
        edit = widen_conv_in(unet)
        _load(work, "ip2p", {"unet": edit})
        links = [out / "ip2p" / shared for shared in ("vae", "text_encoder", "tokenizer")]
        for link in links:  # an earlier export's links: never write through them
            if link.is_symlink():
                link.unlink()
        StableDiffusionInstructPix2PixPipeline(**{**pipe.components, "unet": edit}).to(
            dtype=torch.float16).save_pretrained(out / "ip2p")
        for link in links:  # links, not copies: the family stays small
            shutil.rmtree(link)
            link.symlink_to(Path("..") / "sd" / link.name)
    for stage in ("vae", "unet", "controlnet", "adapter", "ip2p"):
        if (work / f"{stage}.pt").exists():
            steps[stage] = torch.load(work / f"{stage}.pt", map_location="cpu", weights_only=True)["step"]
    (out / "training.json").write_text(json.dumps(steps, indent=1))
    print(f"exported to {out}: {steps}")


if __name__ == "__main__":
    main()
