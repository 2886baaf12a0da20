"""Encoders that turn items and behaviour into embedding features.

- :class:`TextEncoder`: BERT-family text model (default all-MiniLM-L6-v2), ``(n, 384) float32``.
- :class:`ImageEncoder`: pooled CNN features (EfficientNet-Lite0 1280-d, ResNet-18 512-d, ResNet-50 2048-d).
- :class:`SequenceEncoder`: GRU/LSTM over a user's last N item text embeddings.

Each has ``model_id`` (``name@sha256:<12 hex>``), the identity stored beside every embedding row.
Heavy libraries (torch, transformers, torchvision) are imported when an encoder is first used.
"""

from recfeast.encoders.identity import model_identity

__all__ = ["ImageEncoder", "SequenceEncoder", "TextEncoder", "model_identity"]


def __getattr__(name):
    if name == "TextEncoder":
        from recfeast.encoders.text import TextEncoder
        return TextEncoder
    if name == "ImageEncoder":
        from recfeast.encoders.image import ImageEncoder
        return ImageEncoder
    if name == "SequenceEncoder":
        from recfeast.encoders.sequence import SequenceEncoder
        return SequenceEncoder
    raise AttributeError(name)
