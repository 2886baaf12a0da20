"""Model identity: the name and a content hash of a model's weights and configuration."""

from __future__ import annotations

import hashlib
import json


def model_identity(name: str, state_dict=None, config: dict | None = None) -> str:
    """Return ``"<name>@sha256:<first 12 hex digits>"`` of the weights and config.

    Args:
        name: human-readable model name, e.g. ``all-MiniLM-L6-v2``.
        state_dict: a torch ``state_dict`` (name -> tensor); hashed in key order with dtypes and
            shapes, so equal weights give equal ids on any machine.
        config: JSON-serialisable settings that change the output (pooling, image size, ...).
    """
    h = hashlib.sha256()
    h.update(json.dumps(config or {}, sort_keys=True, default=str).encode())
    for key in sorted(state_dict or {}):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return f"{name}@sha256:{h.hexdigest()[:12]}"
