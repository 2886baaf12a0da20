"""The ranking checkpoint format: one file that rebuilds the model and its input transform alone.

Written by training (``recfeast train``), read by serving (:class:`recfeast.serving.ranker.Ranker`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from recfeast.io import atomic_write_bytes

from recfeast.ranking.features import FeatureSpec
from recfeast.ranking.model import RankingModel


def save_checkpoint(path: Path, model: RankingModel, cfg, spec: FeatureSpec, features: list[str],
                    normalization: dict, metrics: dict, model_ids: dict | None = None,
                    feature_selection: dict | None = None) -> None:
    """One file holding everything needed to rebuild and use the model (atomic write): config,
    fitted transform, feature list, the embedding models' identities the model was trained on
    (serving must read features from the same encoders), the kept genre columns, normalisation
    statistics and test metrics."""
    ckpt = {"config": asdict(cfg) if not isinstance(cfg, dict) else cfg, "spec": spec.to_dict(), "features": features, "normalization": normalization,
            "metrics": metrics, "embedding_models": model_ids or {}, "feature_selection": feature_selection or {},
            "dense_dim": model.dense_dim, "vector_dims": model.vector_dims, "proj_dim": model.proj_dim,
            "state_dict": model.state_dict()}
    atomic_write_bytes(path, lambda p: torch.save(ckpt, p))


def load_checkpoint(path: Path) -> tuple[RankingModel, FeatureSpec, dict]:
    """Rebuild ``(model, spec, checkpoint dict)`` from :func:`save_checkpoint`'s file alone."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ckpt["config"]
    model = RankingModel(ckpt["dense_dim"], ckpt["vector_dims"], tuple(cfg["hidden"]), cfg["dropout"], ckpt.get("proj_dim", 32))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), FeatureSpec.from_dict(ckpt["spec"]), ckpt
