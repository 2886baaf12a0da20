"""Online lookup SDK: the features of one user and many candidate items in one call.

>>> client = OnlineFeatureClient()                  # repo and online store from the environment
>>> feats = client.get_features(196, [242, 302, 377])
>>> feats.frame                                     # one row per item, fixed column order
>>> feats.arrays["text_embedding"].shape            # (3, 384) float32
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast.errors import FeatureLookupError, StoreError

_PRESENT = 1  # feast FieldStatus.PRESENT


@dataclass
class RankingFeatures:
    """Features for one user and n items, rows in the order of the requested items.

    Attributes:
        frame: DataFrame, n rows; columns ``user_id``, ``item_id``, then every feature of the service
            in the service's order. Vectors are ``(d,)`` float32 arrays (``None`` when missing),
            floats are float32 (NaN when missing), integers are nullable ``Int64``, strings object.
        status: DataFrame, n rows, one column per feature view: ``"found"`` when the entity has a
            row in that view online, ``"missing"`` otherwise. The same on SQLite and Redis (Feast
            itself reports a missing entity as NOT_FOUND on SQLite and PRESENT-with-null on Redis).
        feature_service: name of the feature service read.
        request_ts: unix seconds passed to the request-time (on-demand) features.
    """

    frame: pd.DataFrame
    status: pd.DataFrame
    feature_service: str
    request_ts: int

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Column name -> array: vectors ``(n, d)`` float32 with NaN rows where missing; other
        numbers ``(n,)`` float32/float64 with NaN where missing; strings ``(n,)`` object."""
        out = {}
        for col in self.frame.columns:
            s = self.frame[col]
            if s.dtype == object and any(isinstance(v, np.ndarray) for v in s):
                dim = next(len(v) for v in s if isinstance(v, np.ndarray))
                out[col] = np.stack([v if isinstance(v, np.ndarray) else np.full(dim, np.nan, np.float32)
                                     for v in s]).astype(np.float32)
            elif isinstance(s.dtype, pd.Int64Dtype):
                out[col] = s.astype("float64").to_numpy()
            else:
                out[col] = s.to_numpy()
        return out

    def to_json(self) -> dict:
        """JSON-ready dict: ``{"feature_service", "request_ts", "user_id", "items": [{...}, ...]}``."""
        items = []
        for (_, row), (_, st) in zip(self.frame.iterrows(), self.status.iterrows()):
            rec = {}
            for col, v in row.items():
                if isinstance(v, np.ndarray):
                    rec[col] = [float(x) for x in v]
                elif v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
                    rec[col] = None
                elif isinstance(v, (np.integer, int)):
                    rec[col] = int(v)
                elif isinstance(v, (np.floating, float)):
                    rec[col] = float(v)
                else:
                    rec[col] = v
            rec["status"] = st.to_dict()
            items.append(rec)
        user = int(self.frame["user_id"].iat[0]) if len(self.frame) else None
        return {"feature_service": self.feature_service, "request_ts": self.request_ts,
                "user_id": user, "items": items}


def _as_key(value, name: str) -> int:
    """An int64 key from an int (or integral numpy/float value); anything else is refused."""
    if isinstance(value, (bool, np.bool_)):
        raise FeatureLookupError(f"{name}={value!r}: expected an integer")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise FeatureLookupError(f"{name}={value!r}: expected an integer")
    if not -(2**63) <= int(value) < 2**63:
        raise FeatureLookupError(f"{name}={value}: outside the int64 range of entity keys")
    return int(value)


class OnlineFeatureClient:
    """Reads a feature service from the online store (SQLite or Redis) through Feast.

    Args:
        repo: feature repository; default :func:`recfeast.config.repo_path`.
        online_store: ``sqlite`` or ``redis``; default ``$RECFEAST_ONLINE_STORE`` or sqlite.
        feature_service: service to read; default ``ranking_v1``.
        project: override the project name (tests).

    Raises:
        StoreError: the registry has no such feature service (run ``recfeast materialize`` or
            ``feast apply`` first).
    """

    def __init__(self, repo: str | Path | None = None, online_store: str | None = None,
                 feature_service: str = "ranking_v1", project: str | None = None):
        from recfeast.materialize.store import feature_store

        self.store = feature_store(repo, online_store, project)
        try:
            self.service = self.store.get_feature_service(feature_service)
        except Exception as exc:
            raise StoreError(f"feature service {feature_service!r} not in the registry of "
                             f"{self.store.repo_path}: run `recfeast materialize` or `feast apply` ({exc})") from exc
        self.views = [(p.name, [f.name for f in p.features]) for p in self.service.feature_view_projections]
        self.dtypes = {f.name: f.dtype for p in self.service.feature_view_projections for f in p.features}

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the service's order (the column order of :attr:`RankingFeatures.frame`)."""
        return [f for _, feats in self.views for f in feats]

    def get_features(self, user_id: int, item_ids, request_ts: int | None = None) -> RankingFeatures:
        """Features of ``user_id`` paired with each of ``item_ids``, in one online read.

        Args:
            user_id: the user key (int).
            item_ids: n item keys (ints), n >= 1; duplicates are allowed and kept.
            request_ts: unix seconds for request-time features; default now.

        Returns:
            :class:`RankingFeatures` with n rows in the order of ``item_ids``.

        Raises:
            FeatureLookupError: no items, a key that is not an int64 integer (1.5, "7", True), or
                a request time outside 1970..2242.
            StoreError: the online store cannot be read.
        """
        if isinstance(item_ids, (str, bytes)) or not hasattr(item_ids, "__iter__"):
            raise FeatureLookupError(f"item_ids must be a list of integers, got {type(item_ids).__name__}")
        item_ids = list(item_ids)
        if not item_ids:
            raise FeatureLookupError("item_ids is empty: pass at least one item id")
        user_id = _as_key(user_id, "user_id")
        item_ids = [_as_key(i, f"item_ids[{n}]") for n, i in enumerate(item_ids)]
        ts = int(time.time()) if request_ts is None else _as_key(request_ts, "request_ts")
        if not 0 <= ts < 2**33:
            raise FeatureLookupError(f"request_ts={ts}: expected unix seconds between 1970 and 2242")
        rows = [{"user_id": user_id, "item_id": i, "request_ts": ts} for i in item_ids]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                resp = self.store.get_online_features(features=self.service, entity_rows=rows)
        except Exception as exc:
            raise StoreError(f"online read from {self.store.config.online_store.type} failed: {exc}") from exc
        return self._to_features(resp, user_id, item_ids, ts)

    def _to_features(self, resp, user_id, item_ids, ts) -> RankingFeatures:
        """Decode Feast's response protos straight into typed columns (skipping ``to_dict``, which
        builds Python lists of every vector first)."""
        from feast.types import Array, Float32, Float64, Int64

        proto = resp.proto
        results = dict(zip(proto.metadata.feature_names.val, proto.results))
        n = len(item_ids)
        cols: dict[str, object] = {"user_id": np.full(n, user_id, np.int64), "item_id": np.asarray(item_ids, np.int64)}
        status: dict[str, list[str]] = {}
        for view, feats in self.views:
            found = np.zeros(n, bool)
            for f in feats:
                res, dtype = results[f], self.dtypes[f]
                kinds = [v.WhichOneof("val") for v in res.values]
                present = np.array([s == _PRESENT and k is not None for s, k in zip(res.statuses, kinds)])
                found |= present
                vals = res.values
                if isinstance(dtype, Array):
                    cols[f] = [np.array(v.float_list_val.val, np.float32) if p and len(v.float_list_val.val)
                               else None for v, p in zip(vals, present)]
                elif dtype == Float32:
                    cols[f] = np.array([v.float_val if p else np.nan for v, p in zip(vals, present)], np.float32)
                elif dtype == Float64:
                    cols[f] = np.array([v.double_val if p else np.nan for v, p in zip(vals, present)], np.float64)
                elif dtype == Int64:
                    cols[f] = pd.array([v.int64_val if p else None for v, p in zip(vals, present)], dtype="Int64")
                else:
                    cols[f] = [v.string_val if p else None for v, p in zip(vals, present)]
            status[view] = np.where(found, "found", "missing").tolist()
        frame = pd.DataFrame({k: (pd.Series(v, dtype=object) if isinstance(v, list) else v) for k, v in cols.items()})
        return RankingFeatures(frame=frame, status=pd.DataFrame(status), feature_service=self.service.name,
                               request_ts=ts)
