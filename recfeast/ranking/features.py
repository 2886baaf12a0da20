"""From a training-set frame to model inputs: feature groups, fitted statistics, tensors.

Groups (switchable in :class:`~recfeast.training.config.TrainConfig`):

- ``behavior`` (always on): user profile one-hots, rating counts (log1p) and means over 7/30/90 days
  and in total, days since the last rating (log1p), genre shares; item release year, runtime, rating
  count (log1p), mean rating, popularity, genre flags; the user-item genre match (share . flags);
  a missing-value indicator for every quantity that can be null.
- ``text``: the item text embedding (384).
- ``image``: the item poster embedding (1280) and whether it exists.
- ``sequence``: the user sequence embedding (384), its length and the user-item cosine.

Statistics (means, standard deviations, category vocabularies) are fitted on the training split
only and stored in the checkpoint, so evaluation and serving transform exactly the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from recfeast.errors import ConfigError, DataError

CATEGORICAL = ("gender", "occupation", "age_bucket")
LOG_COUNTS = ("rating_count_7d", "rating_count_30d", "rating_count_90d", "rating_count_total", "rating_count",
              "sequence_length")
NUMERIC = ("age", "avg_rating_7d", "avg_rating_30d", "avg_rating_90d", "avg_rating_total", "release_year",
           "runtime", "avg_rating", "popularity", "days_since_last_rating")
VECTORS = {"behavior": ("genre_share", "genre_flags"), "text": ("text_embedding",),
           "image": ("image_embedding",), "sequence": ("sequence_embedding",)}
SEQUENCE_SCALARS = ("sequence_length", "user_item_cosine")
GROUPS = ("behavior", "text", "image", "sequence")


def _vectors(s: pd.Series, dim: int, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Object column of arrays/None -> ((n, dim) float32 with zeros for missing, (n,) bool present).

    Raises:
        DataError: with ``strict``, a vector whose length is not ``dim`` (another model's embedding).
    """
    present = np.array([isinstance(v, np.ndarray) and len(v) == dim for v in s])
    if strict:
        wrong = [len(v) for v in s if isinstance(v, np.ndarray) and len(v) != dim]
        if wrong:
            raise DataError(f"column {s.name!r}: {len(wrong)} vectors of length {wrong[0]}, the model expects {dim} "
                            "(the features come from another encoder or genre selection than at training)")
    out = np.zeros((len(s), dim), np.float32)
    if present.any():
        out[present] = np.stack([v for v, p in zip(s, present) if p]).astype(np.float32)
    return out, present


def _dim(s: pd.Series) -> int:
    return next((len(v) for v in s if isinstance(v, np.ndarray)), 0)


@dataclass
class FeatureSpec:
    """Fitted transform from a training-set frame to model inputs (JSON-serialisable)."""

    groups: tuple[str, ...]
    vocab: dict[str, list[str]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame: pd.DataFrame, groups) -> "FeatureSpec":
        """Fit vocabularies and scalar statistics on ``frame`` (the training split).

        Raises:
            ConfigError: unknown group name.
        """
        groups = tuple(dict.fromkeys(("behavior", *groups)))
        bad = set(groups) - set(GROUPS)
        if bad:
            raise ConfigError(f"unknown feature group(s) {sorted(bad)}; expected {GROUPS}")
        spec = cls(groups=groups)
        for col in CATEGORICAL:
            spec.vocab[col] = sorted(str(v) for v in frame[col].dropna().unique())
        for col in spec._scalar_cols():
            x = spec._raw_scalar(frame, col)
            x = x[np.isfinite(x)]
            spec.mean[col] = float(x.mean()) if x.size else 0.0
            spec.std[col] = float(x.std()) if x.size and x.std() > 0 else 1.0
        for g in groups:
            for col in VECTORS[g]:
                spec.dims[col] = _dim(frame[col])
        return spec

    def _scalar_cols(self) -> list[str]:
        cols = list(NUMERIC) + [c for c in LOG_COUNTS if c != "sequence_length"] + ["genre_match"]
        if "sequence" in self.groups:
            cols += list(SEQUENCE_SCALARS)
        return cols

    @staticmethod
    def _raw_scalar(frame: pd.DataFrame, col: str) -> np.ndarray:
        if col == "genre_match":
            share, ok1 = _vectors(frame["genre_share"], _dim(frame["genre_share"]) or 1)
            flags, ok2 = _vectors(frame["genre_flags"], _dim(frame["genre_flags"]) or 1)
            out = (share * flags).sum(1) if share.shape == flags.shape else np.zeros(len(frame))
            return np.where(ok1 & ok2, out, np.nan).astype(np.float64)
        x = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
        return np.log1p(np.clip(x, 0, None)) if col in LOG_COUNTS else x

    def transform(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Frame -> ``{"dense": (n, d_dense) float32, "<vector col>": (n, dim) float32, ...}``.

        Dense = standardised scalars (missing -> 0) + missing indicators + one-hots (+ image present).
        """
        parts, names = [], []
        for col in self._scalar_cols():
            x = self._raw_scalar(frame, col)
            miss = ~np.isfinite(x)
            parts.append(np.where(miss, 0.0, (x - self.mean[col]) / self.std[col]))
            names.append(col)
            parts.append(miss.astype(np.float64))
            names.append(f"{col}_missing")
        for col in CATEGORICAL:
            vals = frame[col].astype(object).to_numpy()
            for v in self.vocab[col]:
                parts.append((vals == v).astype(np.float64))
                names.append(f"{col}={v}")
        out: dict[str, np.ndarray] = {}
        for g in self.groups:
            for col in VECTORS[g]:
                vec, present = _vectors(frame[col], self.dims[col], strict=True)
                out[col] = vec
                if g == "image":
                    parts.append(present.astype(np.float64))
                    names.append("image_present")
        out["dense"] = np.stack(parts, axis=1).astype(np.float32)
        self._dense_names = names
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(groups=tuple(d["groups"]), vocab=d["vocab"], mean=d["mean"], std=d["std"], dims=d["dims"])
