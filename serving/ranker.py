"""The trained ranking model at request time: checkpoint, version checks, scores.

The checkpoint (``recfeast.ranking.checkpoint.save_checkpoint``) records the features it was trained on and the
identities of the encoders behind its embedding inputs. A request is scored only when every
embedding it carries comes from one of those encoders: an item re-embedded by another model sits in
another space, and scoring it with this model would be silently wrong.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from recfeast.errors import ModelError

#: string columns holding the identity of the model behind an embedding column
MODEL_COLUMNS = {"text_model": "text_embedding", "image_model": "image_embedding",
                 "sequence_model": "sequence_embedding"}


def _plain(key):
    """An id as a plain int or str (for messages)."""
    return key if isinstance(key, str) else int(key)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


class Ranker:
    """p(positive | user, item) from a :class:`recfeast.serving.sdk.RankingFeatures`.

    Args:
        checkpoint: path of ``ranking_model.pt`` (``recfeast train`` writes it under ``--out-dir``).

    Attributes:
        version: ``{"checkpoint", "sha256", "feature_service", "embedding_models", "test_metrics"}``.

    Raises:
        ModelError: the file is missing or cannot be loaded.
    """

    def __init__(self, checkpoint: str | Path):
        import torch

        from recfeast.ranking.checkpoint import load_checkpoint

        path = Path(checkpoint)
        if not path.is_file():
            raise ModelError(f"{path}: no ranking model checkpoint; run `recfeast train` first")
        try:
            self.model, self.spec, ckpt = load_checkpoint(path)
        except Exception as exc:
            raise ModelError(f"{path}: cannot load the ranking model: {exc}") from exc
        self.torch = torch
        self.features = [f.split(":", 1)[-1] for f in ckpt["features"]]
        self.embedding_models = {k: list(v) for k, v in ckpt.get("embedding_models", {}).items()}
        self.version = {"checkpoint": str(path.resolve()), "sha256": _sha256(path),
                        "feature_service": ckpt["config"].get("feature_service"),
                        "embedding_models": self.embedding_models,
                        "test_metrics": {k: ckpt["metrics"].get(k) for k in ("auc", "ndcg@10", "hr@10")}}

    def check_service(self, feature_names: list[str], feature_service: str) -> None:
        """Refuse a feature service that lacks a feature the model was trained on.

        Raises:
            ModelError: a feature is missing, or the service name differs from the training one.
        """
        want = self.version["feature_service"]
        if want and want != feature_service:
            raise ModelError(f"the ranking model was trained on feature service {want!r}, serving reads {feature_service!r}")
        missing = [f for f in self.features if f not in feature_names]
        if missing:
            raise ModelError(f"the ranking model needs features the service does not serve: {missing}")

    def check_versions(self, feats) -> None:
        """Every embedding in ``feats`` comes from an encoder the model was trained with.

        Raises:
            ModelError: naming the column, the items and the identities found and expected.
        """
        for col, emb in MODEL_COLUMNS.items():
            allowed = self.embedding_models.get(col)
            if not allowed or col not in feats.arrays:
                continue
            vals = feats.arrays[col]
            if {v for v in vals if v is not None} <= set(allowed):   # the usual case: one set per column
                continue
            bad = [(_plain(i), v) for i, v in zip(feats.arrays["item_id"], vals) if v is not None and v not in allowed]
            if bad:
                if col.startswith("sequence") or col.startswith("realtime"):   # a user-level embedding
                    where = f"of user {_plain(feats.arrays['user_id'][0])!r}"
                else:
                    where = f"of items {sorted({i for i, _ in bad})[:5]}"
                raise ModelError(f"{emb} {where} comes from {bad[0][1]}, the ranking model was trained on "
                                 f"{allowed}: retrain or serve the matching embeddings")

    def score(self, feats) -> np.ndarray:
        """Probabilities ``(n,)`` float32 in (0, 1), one per row of ``feats``, computed straight from
        its columnar arrays (``feats.arrays``: vectors ``(n, d)`` float32 with NaN rows for missing,
        scalars ``(n,)``): no DataFrame, no per-row Python objects. Equal to :meth:`score_frame`
        (``tests/serving/test_ranker.py``).

        Thread safety: nothing here is written after construction; the model runs under
        ``torch.inference_mode`` (no autograd state) in eval mode, so concurrent requests may
        share one Ranker.

        Raises:
            ModelError: an embedding from another encoder (:meth:`check_versions`) or vectors of
                another width than at training.
        """
        self.check_versions(feats)
        return self._forward(feats.arrays)

    def score_frame(self, feats) -> np.ndarray:
        """:meth:`score` through ``feats.frame`` (a DataFrame with one array object per vector cell,
        stacked back by :meth:`FeatureSpec.transform`): the request path before the columnar one,
        kept as the reference for tests and the anchor of ``bench.bench_serving --only recommend``.

        Raises:
            ModelError: as :meth:`score`.
        """
        self.check_versions(feats)
        return self._forward(feats.frame)

    def _forward(self, columns) -> np.ndarray:
        from recfeast.errors import DataError

        try:
            arrays = self.spec.transform(columns)
        except DataError as exc:
            raise ModelError(str(exc)) from exc
        torch = self.torch
        with torch.inference_mode():
            logits = self.model({k: torch.from_numpy(v) for k, v in arrays.items()})
            return torch.sigmoid(logits).numpy().astype(np.float32)
