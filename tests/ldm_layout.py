"""A diffusers Stable Diffusion 1.x pipeline written as one checkpoint in the original CompVis/LDM key layout (what
A1111 and civitai files use), for testing single-file loading offline on a small model of the same shape.

The key names follow the original repository's modules: `model.diffusion_model.input_blocks.{n}.{0 resnet | 1
attention}`, `first_stage_model.encoder.down.{i}.block.{j}`, `cond_stage_model.transformer.text_model...`. Block
indices are derived from the model's own config, so the tiny test model and SD1.5 map the same way.
"""

import torch

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _rename(key: str, prefixes: list[tuple[str, str]], parts: list[tuple[str, str]] = ()) -> str:
    for ours, theirs in prefixes:
        if key.startswith(ours):
            rest = key[len(ours):]
            for a, b in parts:
                rest = rest.replace(a + ".", b + ".")
            return theirs + rest
    return key


def unet_keys(unet) -> dict[str, str]:
    """diffusers UNet key -> LDM key."""
    config, blocks = unet.config, len(unet.config.block_out_channels)
    per = config.layers_per_block
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(blocks):
        for j in range(per):
            n = i * (per + 1) + j + 1
            prefixes += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0."),
                         (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")]
        if i < blocks - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op."))
        for j in range(per + 1):
            n = i * (per + 1) + j
            prefixes += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0."),
                         (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")]
        if i < blocks - 1:
            has_attention = "CrossAttn" in config.up_block_types[i]
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}."
                                                             f"{2 if has_attention else 1}."))
    return {k: _rename(k, prefixes, RESNET if "resnets" in k else []) for k in unet.state_dict()}


def vae_keys(vae) -> dict[str, str]:
    """diffusers VAE key -> LDM key (the decoder's up blocks are numbered from the bottom in LDM)."""
    blocks, per = len(vae.config.block_out_channels), vae.config.layers_per_block
    prefixes = [("encoder.mid_block.resnets.0.", "encoder.mid.block_1."),
                ("encoder.mid_block.resnets.1.", "encoder.mid.block_2."),
                ("decoder.mid_block.resnets.0.", "decoder.mid.block_1."),
                ("decoder.mid_block.resnets.1.", "decoder.mid.block_2."),
                ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
                ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
                ("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(blocks):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(per)]
        prefixes += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{blocks - 1 - i}.block.{j}.")
                     for j in range(per + 1)]
        if i < blocks - 1:
            prefixes += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                         (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")]
    return {k: _rename(k, prefixes, VAE_ATTENTION if ".attentions." in k else VAE_RESNET) for k in vae.state_dict()}


def ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and CLIP text encoder as one LDM-layout state dict."""
    out = {}
    for key, ldm in unet_keys(pipe.unet).items():
        out[f"model.diffusion_model.{ldm}"] = pipe.unet.state_dict()[key]
    vae = pipe.vae.state_dict()
    for key, ldm in vae_keys(pipe.vae).items():
        value = vae[key]
        if ".attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[..., None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[f"first_stage_model.{ldm}"] = value
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{key}"] = value
    return {k: v.contiguous() for k, v in out.items()}
