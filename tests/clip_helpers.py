"""The tiny random CLIP shared by the CLIP tests and the any-encoder tests."""

from __future__ import annotations


def tiny_clip_model(eos_token_id: int | None = None, seed: int = 0, image_size: int = 64):
    """A randomly initialised CLIP small enough to export and run in seconds (no CLIP weights are
    reachable offline: exactness is tested against this reference instead)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=49408, max_position_embeddings=77)
    if eos_token_id is not None:
        text["eos_token_id"] = eos_token_id
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=16)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    return transformers.CLIPModel(cfg).eval()
