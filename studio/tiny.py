"""A tiny random-weight Stable Diffusion family, saved in the exact diffusers folder layout.

Tests and the first launch use it so that every code path, `from_pretrained` included, runs offline in seconds.
Its pictures are noise: the weights are random. Sizes follow diffusers' own tiny test models: every component is
the real class (UNet2DConditionModel, AutoencoderKL with the /8 latent factor, CLIPTextModel with the real CLIP
tokenizer), only narrow and shallow.
"""

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from studio.ip2p import widen_conv_in

TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"

# Stable Diffusion 1.x's noise schedule, so timesteps and scheduler maths match the real model.
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False)

TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8)


def load_tokenizer() -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (49,408 tokens, 77 positions) from the vendored vocabulary."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def build_tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, latent_channels=4, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2,
                                                max_position_embeddings=77, projection_dim=32,
                                                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_tiny_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))


def build_tiny_adapter(unet: UNet2DConditionModel) -> T2IAdapter:
    """A full T2I-Adapter whose feature maps match the tiny UNet's down blocks (pixel-unshuffle by the /8 VAE)."""
    return T2IAdapter(in_channels=3, channels=list(unet.config.block_out_channels), num_res_blocks=1,
                      downscale_factor=8, adapter_type="full_adapter")


def build_tiny_ip2p(pipe: StableDiffusionPipeline) -> StableDiffusionInstructPix2PixPipeline:
    """An InstructPix2Pix pipeline over the tiny model's VAE and text encoder: its UNet widened as the paper
    initialises one, with random weights on the image channels too, so that the input image matters."""
    unet = widen_conv_in(pipe.unet)
    with torch.no_grad():
        unet.conv_in.weight[:, pipe.unet.config.in_channels:].normal_(0, 0.05)
    return StableDiffusionInstructPix2PixPipeline(**{**pipe.components, "unet": unet})


def save_tiny_family(root: Path, seed: int = 0) -> Path:
    """Write `root/sd`, `root/controlnet`, `root/t2i-adapter` and `root/ip2p` as safetensors; returns `root`."""
    pipe = build_tiny_sd(seed)
    root.mkdir(parents=True, exist_ok=True)
    build_tiny_controlnet(pipe.unet).save_pretrained(root / "controlnet")
    build_tiny_adapter(pipe.unet).save_pretrained(root / "t2i-adapter")
    build_tiny_ip2p(pipe).save_pretrained(root / "ip2p")
    # The pipeline goes last: its model_index.json marks the family as complete for `ensure_tiny_family`.
    pipe.save_pretrained(root / "sd")
    return root


def ensure_tiny_family(root: Path) -> Path:
    if not all((root / part / "model_index.json").exists() for part in ("sd", "ip2p")):  # ip2p came later
        save_tiny_family(root)
    return root
