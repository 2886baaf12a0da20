"""From feature columns to model inputs: roles, fitted statistics, float32 matrices.

Which column becomes which input is decided by its role in the catalog's views
(:func:`recfeast.views.field_roles`), never by its name:

- ``count`` (e.g. ``rating_count_7d``): log1p, then standardised, plus a missing indicator;
- ``numeric`` (normalised attributes, means, popularity, recency): standardised, plus a missing
  indicator;
- ``categorical`` (user labels such as gender): one-hot over the training split's vocabulary;
- ``vector`` with group ``behavior`` (category flags and shares): a vector input; every
  ``<name>_share`` / ``<name>_flags`` pair also gives the scalar ``<name>_match`` (their dot product,
  the user-item category affinity);
- ``vector`` with group ``text`` / ``image`` / ``sequence``: embedding inputs of that ablation group;
  the image group also adds ``image_present``;
- ``timestamp``, ``model_id``, ``list``: not model inputs.

Statistics (means, standard deviations, vocabularies) are fitted on the training split only and
stored in the checkpoint, so evaluation and serving transform exactly the same way. A scalar whose
training values are constant or near-constant (standard deviation below ``1e-6`` of its scale, e.g.
1.1e-16 from rounding) is dropped: scaling it by that deviation would blow values up to ~1e15.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from recfeast import io
from recfeast.errors import ConfigError, DataError

GROUPS = ("behavior", "text", "image", "sequence")
#: relative standard deviation under which a scalar counts as constant
MIN_REL_STD = 1e-6


def _column(frame, col: str):
    return frame[col] if col in frame else None


def vectors(values, dim: int, strict: bool = False, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A vector column -> ``((n, dim) float32 with zeros for missing, (n,) bool present)``; a float32
    ``(n, dim)`` array without missing rows comes back as it is (shared, not copied).

    ``values``: a ``(n, dim)`` float array (NaN rows = missing; ``(n, 0)``: no vector at all, e.g.
    the user columns of an anonymous request), a Series of Arrow ``fixed_size_list<float32>``
    (:func:`recfeast.io.vector_series`: returned without a copy, as a read-only view;
    dictionary-encoded as in training sets: expanded), or a sequence of arrays/lists/None.

    Raises:
        DataError: with ``strict``, a vector whose length is not ``dim`` (another encoder's embedding).
    """
    if io.is_vector_series(values):
        width = io.vector_width(values)
        if width != dim:
            if strict and len(values):
                raise DataError(f"column {name!r}: vectors of length {width}, the model expects {dim}")
            return np.zeros((len(values), dim), np.float32), np.zeros(len(values), bool)
        return io.vector_view(values)
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype != object:
        if values.shape[1] != dim:
            if strict and len(values) and values.shape[1]:
                raise DataError(f"column {name!r}: vectors of length {values.shape[1]}, the model expects {dim}")
            return np.zeros((len(values), dim), np.float32), np.zeros(len(values), bool)
        present = ~np.isnan(values.sum(axis=1))   # NaN anywhere in a row -> NaN sum (one pass, no (n, dim) mask)
        if present.all() and values.dtype == np.float32:   # nothing to zero: the array itself (not copied)
            return values, present
        return np.where(present[:, None], values, 0).astype(np.float32, copy=False), present
    vals = list(values)
    lens = [len(v) if isinstance(v, (np.ndarray, list, tuple)) else -1 for v in vals]
    present = np.array([n == dim for n in lens], dtype=bool)
    if strict:
        wrong = [n for n in lens if n >= 0 and n != dim]
        if wrong:
            raise DataError(f"column {name!r}: {len(wrong)} vectors of length {wrong[0]}, the model expects {dim} "
                            "(the features come from another encoder or feature selection than at training)")
    out = np.zeros((len(vals), dim), np.float32)
    if present.any():
        out[present] = np.asarray([v for v, p in zip(vals, present) if p], dtype=np.float32)
    return out, present


class IndexedRows:
    """``(n, dim)`` float32 model input stored once per distinct row: row ``i`` is ``table[index[i]]``.

    What :meth:`FeatureSpec.transform` gives with ``indexed=True`` for a training set's vector
    columns, which repeat each item's embedding on every row of that item: the training loop gathers
    one batch at a time (``rows[idx]``, ``rows[a:b]`` -> a new float32 ndarray) and never holds the
    whole ``(n, dim)`` matrix. ``np.asarray(rows)`` builds it. ``shape``, ``dtype``, ``len`` as an array's.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, table: np.ndarray, index: np.ndarray):
        self.table, self.index = table, index

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.table.shape[1])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return self.table[self.index[key]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.table[self.index]
        return out if dtype is None else out.astype(dtype, copy=False)


def _indexed(values, dim: int, name: str) -> "tuple[IndexedRows, np.ndarray] | None":
    """A dictionary-encoded vector column -> ``(IndexedRows, (n,) bool present)`` (a zero row for the
    missing ones); None for any other column (or when no row repeats)."""
    if not io.is_vector_series(values) or io.vector_width(values) != dim:
        return None
    table, rows = io.vector_rows(values)
    if len(table) >= len(rows):   # nothing repeats: the plain matrix is as small
        return None
    present = rows >= 0
    table = np.concatenate([table, np.zeros((1, dim), np.float32)])
    return IndexedRows(table, np.where(present, rows, len(table) - 1)), present


def _dim(values) -> int:
    if io.is_vector_series(values):
        return io.vector_width(values) if values.notna().any() else 0
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype != object:
        return values.shape[1]
    return next((len(v) for v in values if isinstance(v, (np.ndarray, list, tuple))), 0)


def _as_float(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
    return arr.astype(np.float64)


@dataclass
class FeatureSpec:
    """Fitted transform from feature columns to model inputs (JSON-serialisable).

    Attributes:
        groups: ablation groups on (``behavior`` always). scalars: ``[(column, "count"|"numeric"|"match")]``
        in input order. vectors: ``{column: group}``. vocab: categorical column -> values.
        mean, std: per scalar. dims: per vector column. dropped: column -> reason (near-constant).
    """

    groups: tuple[str, ...]
    scalars: list[list[str]] = field(default_factory=list)
    vectors: dict[str, str] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def fit(cls, frame, groups, roles: Mapping) -> "FeatureSpec":
        """Fit on ``frame`` (the training split: a DataFrame or a mapping of columns).

        Args:
            groups: ablation groups to use (``behavior`` is always added).
            roles: feature name -> :class:`recfeast.views.FieldDef` (its ``role`` and ``group``).

        Raises:
            ConfigError: an unknown group name.
        """
        groups = tuple(dict.fromkeys(("behavior", *groups)))
        bad = set(groups) - set(GROUPS)
        if bad:
            raise ConfigError(f"unknown feature group(s) {sorted(bad)}; expected {GROUPS}")
        spec = cls(groups=groups)
        cols = [c for c in roles if c in frame]
        for c in cols:
            f = roles[c]
            if (f.group or "") not in groups:
                continue
            if f.role in ("count", "numeric"):
                spec.scalars.append([c, f.role])
            elif f.role == "categorical":
                vals = [v for v in np.asarray(frame[c], dtype=object) if v is not None and v == v]
                spec.vocab[c] = sorted({str(v) for v in vals})
            elif f.role == "vector":
                spec.vectors[c] = f.group
                spec.dims[c] = _dim(frame[c])
        for c in list(spec.vectors):
            if c.endswith("_share") and c[:-6] + "_flags" in spec.vectors:
                spec.scalars.append([c[:-6] + "_match", "match"])
        kept = []
        for c, kind in spec.scalars:
            x = spec._raw(frame, c, kind)
            x = x[np.isfinite(x)]
            mean = float(x.mean()) if x.size else 0.0
            std = float(x.std()) if x.size else 0.0
            if x.size and std <= MIN_REL_STD * max(1.0, abs(mean)):
                spec.dropped[c] = f"constant on the training split (mean {mean:.6g}, std {std:.3g})"
                continue
            if not x.size:
                spec.dropped[c] = "no value on the training split"
                continue
            spec.mean[c], spec.std[c] = mean, std
            kept.append([c, kind])
        spec.scalars = kept
        for c in [c for c in spec.vectors if spec.dims[c] == 0]:
            spec.dropped[c] = "no vector on the training split"
            del spec.vectors[c], spec.dims[c]
        return spec

    def _raw(self, frame, col: str, kind: str) -> np.ndarray:
        if kind == "match":
            base = col[:-6]
            share, ok1 = vectors(frame[base + "_share"], self.dims[base + "_share"])
            flags, ok2 = vectors(frame[base + "_flags"], self.dims[base + "_flags"])
            return np.where(ok1 & ok2, (share * flags).sum(1), np.nan).astype(np.float64)
        x = _as_float(frame[col])
        return np.log1p(np.clip(x, 0, None)) if kind == "count" else x

    def dense_names(self) -> list[str]:
        """Names of the dense block's columns, in order."""
        names = []
        for c, _ in self.scalars:
            names += [c, f"{c}_missing"]
        for c, vals in self.vocab.items():
            names += [f"{c}={v}" for v in vals]
        if "image" in self.groups and any(g == "image" for g in self.vectors.values()):
            names.append("image_present")
        return names

    def transform(self, frame, indexed: bool = False) -> dict[str, np.ndarray]:
        """Columns -> ``{"dense": (n, d_dense) float32, "<vector column>": (n, dim) float32, ...}``.

        ``frame``: a DataFrame or a mapping of columns (1-d arrays; vectors as ``(n, dim)`` arrays or
        sequences of arrays). Dense = standardised scalars (missing -> 0) + missing indicators +
        one-hots (+ image present). With ``indexed``, a vector column stored once per distinct value
        (a training set's) comes back as :class:`IndexedRows` instead of an ``(n, dim)`` copy.

        Raises:
            DataError: a column the model needs is absent, or a vector has another width.
        """
        need = [c for c, k in self.scalars if k != "match"] + list(self.vocab) + list(self.vectors)
        missing = [c for c in need if c not in frame]
        if missing:
            raise DataError(f"features {missing} are missing: the model was trained on them")
        n = len(frame[need[0]]) if need else len(frame)
        parts = []
        for c, kind in self.scalars:
            x = self._raw(frame, c, kind)
            miss = ~np.isfinite(x)
            parts.append(np.where(miss, 0.0, (x - self.mean[c]) / self.std[c]))
            parts.append(miss.astype(np.float64))
        for c, vals in self.vocab.items():   # one-hot: each value looked up once (not one compare per value)
            code = {val: j for j, val in enumerate(vals)}
            v = np.asarray(frame[c], dtype=object)
            # labels as fitted: str(value), nulls (None/NaN) match nothing
            if n and isinstance(v[0], str) and bool((v == v[0]).all()):   # a user's label on every row
                idx = np.full(n, code.get(v[0], -1), np.int64)
            else:
                idx = np.fromiter((code.get(x if isinstance(x, str) else str(x), -1)
                                   if x is not None and x == x else -1 for x in v), np.int64, n)
            onehot = np.zeros((len(vals), n))
            hit = idx >= 0
            onehot[idx[hit], np.flatnonzero(hit)] = 1.0
            parts.extend(onehot)
        out: dict[str, np.ndarray] = {}
        image_present = None
        for c, g in self.vectors.items():
            lazy = _indexed(frame[c], self.dims[c], c) if indexed else None
            if lazy is not None:
                out[c], present = lazy
            else:
                out[c], present = vectors(frame[c], self.dims[c], strict=True, name=c)
            if g == "image":
                image_present = present
        if "image" in self.groups and any(g == "image" for g in self.vectors.values()):
            parts.append(image_present.astype(np.float64))
        out["dense"] = (np.stack(parts, axis=1) if parts else np.zeros((n, 0))).astype(np.float32)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        """Rebuild from :meth:`to_dict`.

        Raises:
            DataError: a checkpoint written before the catalog spec (no ``scalars``): retrain.
        """
        if "scalars" not in d:
            raise DataError("this ranking checkpoint predates the catalog spec (no role-based inputs): "
                            "retrain it with `recfeast train`")
        return cls(groups=tuple(d["groups"]), scalars=[list(x) for x in d["scalars"]], vectors=dict(d["vectors"]),
                   vocab=d["vocab"], mean=d["mean"], std=d["std"], dims=d["dims"], dropped=d.get("dropped", {}))
