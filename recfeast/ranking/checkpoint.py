"""The ranking checkpoint format: two files that rebuild the model and its input transform alone,
and that load without running any code from disk.

Written by training (``recfeast train``), read by serving (:class:`recfeast.serving.ranker.Ranker`).

- ``ranking_model.pt``: the tensors only, ``{"format": FORMAT, "state_dict": {name: tensor}}``,
  written with ``torch.save`` and read with ``torch.load(..., weights_only=True)`` (PyTorch's
  restricted unpickler: tensors, dicts, lists, strings and numbers, never an arbitrary object, so a
  pickle carrying a code payload is refused instead of run).
- ``ranking_model.pt.json`` (the manifest, :func:`manifest_path`): every non-tensor part as JSON
  (config, fitted transform, feature list, embedding model identities, genre selection,
  normalisation statistics, test metrics, model shape) plus the size and sha256 of the tensor file.
  It is written after the tensor file, so it is the commit point: a tensor file without a manifest
  (a killed writer, or a checkpoint of the old single-pickle format) is refused, and so is a tensor
  file whose bytes differ from the recorded hash (changed, truncated or swapped).

Checkpoints written before this format (one pickle with ``weights_only=False``) are refused with a
message to retrain: loading them would mean unpickling arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recfeast.errors import ModelError
from recfeast.io import atomic_write_bytes
from recfeast.ranking.features import FeatureSpec
from recfeast.ranking.model import RankingModel

FORMAT = "recfeast-ranking-v2"


def manifest_path(path: Path) -> Path:
    """The JSON manifest beside the tensor file ``path`` (``<path>.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def save_checkpoint(path: Path, model: RankingModel, cfg, spec: FeatureSpec, features: list[str],
                    normalization: dict, metrics: dict, model_ids: dict | None = None,
                    feature_selection: dict | None = None) -> None:
    """Write the tensor file ``path`` and its JSON manifest (each atomically, the manifest last).

    The manifest holds config, fitted transform, feature list, the embedding models' identities the
    model was trained on (serving must read features from the same encoders), the kept genre
    columns, normalisation statistics, test metrics, the model shape, and the tensor file's size and
    sha256."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    import torch

    atomic_write_bytes(path, lambda p: torch.save({"format": FORMAT, "state_dict": state}, p))
    meta = {"format": FORMAT, "tensors": {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)},
            "config": asdict(cfg) if not isinstance(cfg, dict) else cfg, "spec": spec.to_dict(), "features": features,
            "normalization": normalization, "metrics": metrics, "embedding_models": model_ids or {},
            "feature_selection": feature_selection or {}, "dense_dim": model.dense_dim,
            "vector_dims": model.vector_dims, "proj_dim": model.proj_dim}
    text = json.dumps(meta, indent=1, sort_keys=True, default=_json_default, allow_nan=True) + "\n"
    atomic_write_bytes(manifest_path(path), lambda p: p.write_text(text))


def load_checkpoint(path: Path) -> tuple[RankingModel, FeatureSpec, dict]:
    """Rebuild ``(model, spec, checkpoint dict)`` from :func:`save_checkpoint`'s files alone.

    The checkpoint dict is the manifest plus ``state_dict``. Nothing is unpickled beyond tensors.

    Raises:
        ModelError: no manifest (an old-format checkpoint or an interrupted write: retrain), a
            manifest that is not this format, a tensor file whose size or sha256 differs from the
            manifest's (tampered or replaced), a file ``torch.load(weights_only=True)`` refuses (a
            pickle with code in it), or tensors that do not fit the recorded model shape.
    """
    import torch

    path = Path(path)
    mpath = manifest_path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no ranking model checkpoint; run `recfeast train` first")
    if not mpath.is_file():
        raise ModelError(f"{path}: no manifest {mpath.name} beside it: an old-format checkpoint (a pickle, no longer "
                         "loaded because loading it could run code) or an interrupted write; retrain with `recfeast train`")
    try:
        meta = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{mpath}: unreadable checkpoint manifest ({exc}); retrain with `recfeast train`") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{mpath}: checkpoint format {got!r}, expected {FORMAT!r}; retrain with `recfeast train`")
    want = meta.get("tensors", {})
    size, digest = path.stat().st_size, file_sha256(path)
    if size != want.get("bytes") or digest != want.get("sha256"):
        raise ModelError(f"{path}: sha256 {digest[:12]}... ({size} bytes) differs from the manifest's "
                         f"{str(want.get('sha256'))[:12]}... ({want.get('bytes')} bytes): the file was changed or replaced "
                         "after training; refusing to load it (retrain, or restore the file written with the manifest)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for anything beyond tensors and plain containers
        raise ModelError(f"{path}: refused by torch.load(weights_only=True) ({type(exc).__name__}): "
                         "not a tensor-only checkpoint") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("state_dict"), dict):
        raise ModelError(f"{path}: not a {FORMAT} tensor file; retrain with `recfeast train`")
    cfg = meta["config"]
    try:
        model = RankingModel(meta["dense_dim"], meta["vector_dims"], tuple(cfg["hidden"]), cfg["dropout"],
                             meta.get("proj_dim", 32))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: tensors do not fit the model recorded in {mpath.name}: {exc}") from exc
    ckpt = {**meta, "state_dict": blob["state_dict"]}
    return model.eval(), FeatureSpec.from_dict(meta["spec"]), ckpt
