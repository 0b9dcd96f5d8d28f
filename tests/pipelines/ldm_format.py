"""Write a diffusers pipeline as one single-file checkpoint in the original (CompVis/LDM/SGM) layout.

This is the inverse of diffusers' single-file conversion (loaders/single_file_utils.py:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
convert_open_clip_checkpoint), for the structures the tiny pipelines have: any number of UNet
blocks and layers, SDXL's added embedding, VAE mid-block attention as 1x1 convolutions, OpenAI
CLIP text encoders as transformers modules, OpenCLIP ones with fused qkv ``in_proj`` and a
transposed ``text_projection``. test_checkpoints.py proves it: tiny pipeline -> this file ->
``from_single_file`` gives back every tensor unchanged.

Layout of the file, as in the real checkpoints:
  model.diffusion_model.*               UNet
  first_stage_model.*                   VAE
  cond_stage_model.transformer.*        SD 1.x text encoder (OpenAI CLIP, transformers names)
  cond_stage_model.model.*              SD 2.x text encoder (OpenCLIP)
  conditioner.embedders.0.transformer.* SDXL first text encoder (OpenAI CLIP)
  conditioner.embedders.1.model.*       SDXL second text encoder (OpenCLIP, with projection)
Left out: what diffusers ignores (EMA weights, the noise schedule buffers, the VAE's loss, and
SD 2.x's unused last OpenCLIP layer and text_projection, which it drops by name).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["ldm_state_dict", "save_ldm_checkpoint"]

# diffusers name -> LDM name, whole leading components of a key.
UNET_TOP = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's size/crop + pooled-text embedding
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = {  # inside a ResBlock
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
# Attention (SpatialTransformer) keys keep their names below the block prefix.
VAE_TOP = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
}
VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}  # norm1, conv1, norm2, conv2 keep their names
VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.": "ln_final.",
}
OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def _rename_start(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def unet_key(key: str, layers_per_block: int, up_block_types: tuple[str, ...]) -> str:
    """LDM name of a diffusers UNet2DConditionModel key.

    LDM numbers the UNet's layers flat: input_blocks 0 is conv_in, then each down block has
    ``layers_per_block`` (ResBlock, SpatialTransformer) pairs and a downsampler; output_blocks
    hold ``layers_per_block + 1`` pairs per up block, the upsampler after the last pair's
    transformer (index 2) or after its ResBlock (index 1) in blocks without attention.
    """
    per_up = layers_per_block + 1
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", key):
        block, part, layer = int(m[1]), m[2], int(m[3])
        prefix = f"input_blocks.{1 + block * per_up + layer}.{0 if part == 'resnets' else 1}."
    elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.", key):
        part, prefix = "downsampler", f"input_blocks.{(int(m[1]) + 1) * per_up}.0.op."
    elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.", key):
        part = m[1]  # ResBlock, SpatialTransformer, ResBlock
        prefix = f"middle_block.{2 * int(m[2]) if part == 'resnets' else 1}."
    elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", key):
        block, part, layer = int(m[1]), m[2], int(m[3])
        prefix = f"output_blocks.{block * per_up + layer}.{0 if part == 'resnets' else 1}."
    elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.", key):
        block, part = int(m[1]), "upsampler"
        position = 2 if up_block_types[block].startswith("CrossAttn") else 1
        prefix = f"output_blocks.{block * per_up + layers_per_block}.{position}."
    else:
        return _rename_start(key, UNET_TOP)
    rest = key[m.end():]
    return prefix + (_rename_start(rest, UNET_RESNET) if part == "resnets" else rest)


def vae_key(key: str, num_up_blocks: int) -> str:
    """LDM name of a diffusers AutoencoderKL key (the decoder's up blocks count backwards)."""
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", key):
        return f"encoder.down.{m[1]}.block.{m[2]}." + _rename_start(key[m.end():], VAE_RESNET)
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", key):
        return f"encoder.down.{m[1]}.downsample." + key[m.end():]
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", key):
        ldm_block = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{ldm_block}.block.{m[2]}." + _rename_start(key[m.end():], VAE_RESNET)
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample." + key[m.end():]
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}." + _rename_start(key[m.end():], VAE_RESNET)
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.", key):
        return f"{m[1]}.mid.attn_1." + _rename_start(key[m.end():], VAE_ATTENTION)
    return _rename_start(key, VAE_TOP)  # conv_in, conv_out, quant_conv, post_quant_conv: same


def _vae_state(vae) -> dict[str, torch.Tensor]:
    num_up_blocks = len(vae.config.up_block_types)
    state = {}
    for key, value in vae.state_dict().items():
        ldm = vae_key(key, num_up_blocks)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's q, k, v, proj_out are 1x1 convolutions
        state[ldm] = value
    return state


def _text_state(text_encoder) -> dict[str, torch.Tensor]:
    """The encoder's state dict without transformers' optional ``text_model.`` prefix."""
    return {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}


def _openai_clip_state(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    # The original checkpoints hold the transformers CLIPTextModel itself, nested once.
    return {f"{prefix}text_model.{key}": value for key, value in _text_state(text_encoder).items()}


def _open_clip_state(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    state = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}  # "resblocks.i.attn.in_proj_weight" -> q, k, v
    for key, value in _text_state(text_encoder).items():
        if key == "text_projection.weight":  # nn.Linear weight (proj, hidden); OpenCLIP: x @ P
            state[prefix + "text_projection"] = value.T
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused = f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"
            qkv.setdefault(fused, {})[m[2]] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.", key):
            state[f"{prefix}transformer.resblocks.{m[1]}." + _rename_start(key[m.end():], OPEN_CLIP_LAYER)] = value
        else:
            state[prefix + _rename_start(key, OPEN_CLIP_TOP)] = value
    for fused, parts in qkv.items():  # in_proj stacks q, k, v along the output dimension
        state[prefix + fused] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return state


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Every weight of ``pipe`` (SD 1.x/2.x or SDXL) under its original single-file name.

    SD 2.x is told from SD 1.x by its text encoder's activation: OpenCLIP uses GELU where
    OpenAI CLIP uses QuickGELU.
    """
    unet_config = pipe.unet.config
    state = {
        "model.diffusion_model." + unet_key(key, unet_config.layers_per_block, tuple(unet_config.up_block_types)): value
        for key, value in pipe.unet.state_dict().items()
    }
    state |= {"first_stage_model." + key: value for key, value in _vae_state(pipe.vae).items()}
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        state |= _openai_clip_state(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= _open_clip_state(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    elif pipe.text_encoder.config.hidden_act == "gelu":  # SD 2.x
        state |= _open_clip_state(pipe.text_encoder, "cond_stage_model.model.")
    else:
        state |= _openai_clip_state(pipe.text_encoder, "cond_stage_model.transformer.")
    return state


def save_ldm_checkpoint(pipe, path: str | Path) -> Path:
    """Write ``ldm_state_dict(pipe)`` as one .safetensors file, or as a .ckpt (a torch pickle
    with the weights under "state_dict", as PyTorch Lightning saved the originals); returns its path."""
    path = Path(path)
    state = {key: value.detach().contiguous() for key, value in ldm_state_dict(pipe).items()}
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, path)
    else:
        save_file(state, str(path))
    return path
