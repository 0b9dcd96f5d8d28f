"""The toy CLIP's text tower as a transformers `CLIPTextModel`, the class Stable Diffusion conditions on.

Stable Diffusion's text encoder is a CLIP text tower trained first and then frozen; the toy model
follows suit. open_clip and transformers lay out the same transformer differently (a fused q/k/v
projection against three), so the weights are renamed and split here.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel

__all__ = ["text_encoder_from_open_clip"]


def text_encoder_from_open_clip(model) -> CLIPTextModel:
    """A `CLIPTextModel` whose last_hidden_state equals open_clip's `ln_final` output token by token."""
    width = model.token_embedding.weight.shape[1]
    blocks = model.transformer.resblocks
    heads = blocks[0].attn.num_heads
    act = model.transformer.resblocks[0].mlp.gelu
    if not isinstance(act, torch.nn.GELU) or getattr(act, "approximate", "none") != "none":
        raise ValueError(f"only exact-GELU open_clip text towers convert; this one uses {act}")
    config = CLIPTextConfig(
        vocab_size=model.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="gelu",
        layer_norm_eps=model.ln_final.eps,
        projection_dim=model.text_projection.shape[1] if model.text_projection is not None else width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    state = {
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
    }
    for i, block in enumerate(blocks):
        prefix = f"text_model.encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        state |= {
            prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.q_proj.bias": qb,
            prefix + "self_attn.k_proj.weight": k, prefix + "self_attn.k_proj.bias": kb,
            prefix + "self_attn.v_proj.weight": v, prefix + "self_attn.v_proj.bias": vb,
            prefix + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            prefix + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            prefix + "layer_norm1.weight": block.ln_1.weight, prefix + "layer_norm1.bias": block.ln_1.bias,
            prefix + "layer_norm2.weight": block.ln_2.weight, prefix + "layer_norm2.bias": block.ln_2.bias,
            prefix + "mlp.fc1.weight": block.mlp.c_fc.weight, prefix + "mlp.fc1.bias": block.mlp.c_fc.bias,
            prefix + "mlp.fc2.weight": block.mlp.c_proj.weight, prefix + "mlp.fc2.bias": block.mlp.c_proj.bias,
        }
    encoder = CLIPTextModel(config)
    # transformers v5 drops the `text_model.` level that v4 checkpoints carry; follow the model's own keys
    if not any(k.startswith("text_model.") for k in encoder.state_dict()):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    missing, unexpected = encoder.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> CLIPTextModel conversion left keys unmatched: {missing} {unexpected}")
    return encoder.eval()
