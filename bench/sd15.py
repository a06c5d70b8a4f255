"""The Stable Diffusion 1.5 architecture with random weights, for timing without a download.

Timing does not depend on weight values, so benchmarks build SD1.5's exact shapes (860M-parameter UNet, KL VAE with
the /8 factor, CLIP ViT-L/14 text encoder) and save them in diffusers layout, then load them the way users do.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from studio.tiny import SD_SCHEDULER, load_tokenizer

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def save_random_sd15(folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        tokenizer=load_tokenizer(), unet=UNet2DConditionModel(**SD15_UNET), scheduler=PNDMScheduler(**SD_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(folder)
    return folder
