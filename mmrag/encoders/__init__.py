"""Encoders: images and texts into one vector space. Registry names -> implementations."""

from mmrag.encoders.base import ENCODERS, Encoder, create_encoder

__all__ = ["ENCODERS", "Encoder", "create_encoder"]

# Registering imports: each module adds itself to ENCODERS.
from mmrag.encoders import effnet_minilm  # noqa: E402,F401

try:  # the CLIP encoder needs only onnxruntime at run time
    from mmrag.encoders import clip_onnx  # noqa: E402,F401
except ImportError:  # pragma: no cover - onnxruntime missing
    pass
