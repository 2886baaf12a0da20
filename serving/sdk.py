"""Online lookup SDK: the features of one user and many candidate items in one call.

>>> client = OnlineFeatureClient()                  # repo and online store from the environment
>>> feats = client.get_features(196, [242, 302, 377])
>>> feats.arrays["text_embedding"].shape            # (3, 384) float32
>>> feats.frame                                     # one row per item, fixed column order

Entity keys are int64 or strings, as the repository's catalog spec (``catalog.yaml``) declares them
(H&M: ``client.get_features("00a1...f3", [706016001, 372860001])``); a key of the other type is
refused with :class:`~recfeast.errors.FeatureLookupError`. String keys are Feast's ``string_val``
entity keys, serialised as Feast does (:func:`recfeast.layout.entity_key_bytes`).

Reads go straight to the online store in Feast's layout (:mod:`recfeast.serving.reader`): one Redis
pipeline or one SQLite query for the user and every item (or, for a request that needs the user
first, :meth:`OnlineFeatureClient.read_user` then :meth:`OnlineFeatureClient.get_item_features`:
one round trip each, the user read once), raw bytes decoded into typed columns
(:mod:`recfeast.codec`), on-demand features computed vectorised
(:mod:`recfeast.serving.ondemand`). Feast's registry supplies the definitions; Feast's own read path
(``get_online_features``) is not used, and the tests pin the answers equal to it.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast.errors import FeatureLookupError, StoreError
from recfeast.codec import decode_column
from recfeast.layout import FLOAT32, FLOAT64, INT64, LIST, STRING, VECTOR
from recfeast.serving.itemcache import DEFAULT_MAX_AGE_S, ItemRowCache

FOUND, MISSING, STALE = "found", "missing", "stale"
MAX_ITEMS = 1000  #: candidates per call; a request for more is refused
MAX_KEY_CHARS = 1024  #: longest string entity key accepted


class RankingFeatures:
    """Features for one user and n items, rows in the order of the requested items.

    Attributes:
        arrays: column -> array, built first (the ranking model's input). ``user_id``/``item_id``
            ``(n,)`` int64 for int64 keys (``user_id`` -1 for an anonymous request), object (str;
            ``user_id`` None when anonymous) for string keys; vectors ``(n, d)`` float32
            with NaN rows where missing; Float32/Float64 features ``(n,)`` float32/float64 with NaN;
            Int64 features ``(n,)`` float64 with NaN (exact up to 2**53); strings ``(n,)`` object
            with None; other arrays (``Array(String)`` tags, ``Array(Int64)``) ``(n,)`` object of Python
            lists (``[]`` kept) or None.
        kinds: column -> ``vector``/``float32``/``float64``/``int64``/``string``/``list`` (the declared type).
        status: DataFrame, n rows, one column per feature view (built on first access from the
            per-view ``(n,)`` object arrays the client passes): ``"found"``, ``"missing"`` (no row
            online) or ``"stale"`` (older than the view's ttl at ``request_ts``; values nulled).
            The same on SQLite and Redis. On-demand views: ``"found"`` when every output is non-null.
        feature_service: name of the feature service read.
        request_ts: unix seconds the request-time features and ttl were evaluated at.
    """

    def __init__(self, arrays: dict, kinds: dict, status, feature_service: str, request_ts: int,
                 ints: dict):
        self.arrays, self.kinds = arrays, kinds
        # view name -> (n,) object array; a DataFrame is taken as it is
        self._status = status if isinstance(status, dict) else {c: status[c].to_numpy() for c in status.columns}
        if not isinstance(status, dict):
            self.status = status
        self._stored_views: list[str] = []   # views read from the store (set by OnlineFeatureClient)
        self.feature_service, self.request_ts = feature_service, request_ts
        self._ints = ints  # Int64 column -> (exact int64 values, null mask)

    def __len__(self) -> int:
        return len(self.arrays["item_id"])

    @cached_property
    def status(self) -> pd.DataFrame:
        return pd.DataFrame(self._status)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """DataFrame, n rows; columns ``user_id``, ``item_id``, then every feature in the service's
        order. Vectors are ``(d,)`` float32 arrays (``None`` when missing), Float32 features float32
        (NaN when missing), Float64 float64, Int64 nullable ``Int64``, strings object."""
        cols = {}
        for name, arr in self.arrays.items():
            kind = self.kinds.get(name)
            if kind == VECTOR:
                ok = ~np.isnan(arr).any(axis=1) if arr.shape[1] else np.zeros(len(arr), bool)
                cols[name] = pd.Series([row if good else None for row, good in zip(arr, ok)], dtype=object)
            elif kind == INT64:
                vals, mask = self._ints[name]
                cols[name] = pd.arrays.IntegerArray(vals.copy(), mask.copy())
            elif name == "user_id" and arr.dtype != object and (arr < 0).any():  # anonymous: nullable
                cols[name] = pd.arrays.IntegerArray(np.where(arr < 0, 0, arr), arr < 0)
            else:
                cols[name] = arr
        return pd.DataFrame(cols)

    @property
    def nothing_found(self) -> bool:
        """True when no stored feature view had a value for any row (the user and every item missing):
        the online store is empty, never loaded, or holds another project."""
        stored = [c for c in self._status if c in self._stored_views] if self._stored_views else list(self._status)
        return bool(len(self)) and not any((self._status[c] == FOUND).any() for c in stored)

    def model_ids(self) -> dict[str, list[str]]:
        """Distinct model identities in the ``*_model`` string columns, e.g. ``{"text_model": [...]}``."""
        return {c: sorted({v for v in a if v is not None}) for c, a in self.arrays.items()
                if c.endswith("_model") and self.kinds.get(c) == STRING}

    def to_json(self, vectors: bool = True) -> dict:
        """JSON-ready dict: ``{"feature_service", "request_ts", "user_id", "items": [{...}, ...]}``;
        with ``vectors=False`` the embedding columns are left out (they are most of the bytes)."""
        n = len(self)
        cols = []
        for name, arr in self.arrays.items():
            kind = self.kinds.get(name)
            if kind == VECTOR:
                if not vectors:
                    continue
                vals = [None if np.isnan(r).any() or not len(r) else r.tolist() for r in arr]
            elif kind == INT64:
                vals = [None if m else int(v) for v, m in zip(*self._ints[name])]
            elif kind in (STRING, LIST):
                vals = list(arr)
            elif name in ("user_id", "item_id"):
                vals = [_json_key(v, name) for v in arr]
            else:
                vals = [None if np.isnan(v) else float(v) for v in arr]
            cols.append((name, vals))
        status = self.status.to_dict("records")
        items = [{**{name: vals[i] for name, vals in cols}, "status": status[i]} for i in range(n)]
        user = _json_key(self.arrays["user_id"][0], "user_id") if n else None
        return {"feature_service": self.feature_service, "request_ts": self.request_ts, "user_id": user,
                "items": items}


class UserRows:
    """One user's online rows, read once per request (:meth:`OnlineFeatureClient.read_user`) and
    reused for the candidate items (:meth:`OnlineFeatureClient.get_item_features`).

    Attributes:
        user_id: the user key (int or str). request_ts: unix seconds the ttl was evaluated at.
        feature_service: name of the feature service read.
        status: user view name -> ``"found"`` / ``"missing"`` / ``"stale"``.
        known: True when any user view of the service has a row (found or stale) for the user.
        recent_items: the items the online store knows the user interacted with lately, newest
            first (:meth:`OnlineFeatureClient.recent_items`; read in the same round trip).
        load_stamp: the load sentinel (:mod:`recfeast.health`) read in the same round trip, bytes
            or str, None when the store has none; it tells the item cache whether a load happened.
    """

    def __init__(self, user_id, request_ts: int, feature_service: str, decoded: dict, recent_items: list,
                 load_stamp=None):
        self.user_id, self.request_ts, self.feature_service = user_id, request_ts, feature_service
        self._decoded = decoded   # view name -> (state (1,), {feature: 1-row column})
        self.status = {name: str(state[0]) for name, (state, _) in decoded.items()}
        self.known = any(s != MISSING for s in self.status.values())
        self.recent_items = recent_items
        self.load_stamp = load_stamp

    def value(self, feature: str):
        """The user's value of ``feature``: a vector ``(d,)`` float32, a float, an int, a str or a list;
        None when the view has no live row, the value is null, or no user view serves ``feature``."""
        for state, cols in self._decoded.values():
            if feature not in cols:
                continue
            col = cols[feature]
            if isinstance(col, tuple):   # Int64: (values, null mask)
                return None if col[1][0] else int(col[0][0])
            v = col[0]
            if isinstance(v, np.ndarray):   # a copy: decoded vectors may be read-only views of the reply
                return None if not v.size or np.isnan(v).any() else np.array(v, np.float32)
            if isinstance(v, (float, np.floating)):
                return None if np.isnan(v) else float(v)
            return v
        return None

    def model_ids(self) -> dict[str, list[str]]:
        """Distinct model identities in the user's ``*_model`` string features."""
        out = {}
        for _, cols in self._decoded.values():
            for c, col in cols.items():
                if c.endswith("_model") and isinstance(col, np.ndarray) and col.dtype == object:
                    out[c] = sorted({v for v in col if isinstance(v, str)})
        return out


def _json_key(v, name: str):
    """A key as JSON: int, str, or None for the anonymous user (-1 / None)."""
    if v is None or isinstance(v, str):
        return v
    return None if v < 0 and name == "user_id" else int(v)


def _as_key(value, name: str, dtype: str = "int64") -> int | str:
    """An entity key of the declared ``dtype`` (the catalog spec's ``int64`` or ``string``).

    int64: an int (or an integral numpy/float value) in the int64 range. string: a non-empty
    ``str`` of at most :data:`MAX_KEY_CHARS` characters (ids are not stripped or renumbered).

    Raises:
        FeatureLookupError: naming ``name``, the value and the expected type (a string for an
            int64 key, an int for a string key, ``True``, ``1.5``, ...).
    """
    if dtype == "string":
        if not isinstance(value, str):
            what = "item" if "item" in name else "user"
            raise FeatureLookupError(f"{name}={value!r}: expected a string (this catalog's {what} ids are strings)")
        if not value:
            raise FeatureLookupError(f"{name}='': expected a non-empty string")
        if len(value) > MAX_KEY_CHARS:
            raise FeatureLookupError(f"{name}: a key of {len(value)} characters, at most {MAX_KEY_CHARS}")
        return str(value)
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
    """Reads a feature service from the online store (SQLite or Redis) in one batched read.

    Args:
        repo: feature repository; default :func:`recfeast.config.repo_path`.
        online_store: ``sqlite`` or ``redis``; default ``$RECFEAST_ONLINE_STORE`` or sqlite.
        feature_service: service to read; default ``ranking_v1``.
        project: override the project name (tests).
        max_items: most candidate items one call may ask for.
        item_cache: items whose decoded item-view rows :meth:`get_item_features` keeps in process
            between online loads (:class:`recfeast.serving.itemcache.ItemRowCache`); 0 (default)
            reads every item from the store each time.
        item_cache_max_age_s: seconds a cached item row serves without a new load sentinel.

    The service's definitions are read from the registry once: re-create the client after
    ``feast apply`` changes them.

    Raises:
        StoreError: the registry has no such feature service, or it holds a view the SDK cannot
            serve (several join keys, a type other than Float32/64, Int64, String, Array(Float32)).
    """

    def __init__(self, repo: str | Path | None = None, online_store: str | None = None,
                 feature_service: str = "ranking_v1", project: str | None = None, max_items: int = MAX_ITEMS,
                 item_cache: int = 0, item_cache_max_age_s: float = DEFAULT_MAX_AGE_S):
        from recfeast.store import feature_store
        from recfeast.layout import service_layout
        from recfeast.serving import ondemand
        from recfeast.serving.reader import make_reader
        from recfeast.spec import load_spec, spec_path

        self.store = feature_store(repo, online_store, project)
        path = spec_path(self.store.repo_path)
        # a repository without a catalog spec (hand-written Feast definitions) is served from its registry
        self.spec = load_spec(path) if path.is_file() else None
        #: join key -> "int64" | "string", from the catalog spec (checked against the registry below),
        #: else from the registry's entity types
        self.key_types = ({"user_id": self.spec.user.dtype, "item_id": self.spec.item.dtype} if self.spec
                          else self._registry_key_types())
        try:
            self.service = self.store.get_feature_service(feature_service)
        except Exception as exc:
            raise StoreError(f"feature service {feature_service!r} not in the registry of "
                             f"{self.store.repo_path}: run `recfeast materialize` or `feast apply` ({exc})") from exc
        self.views, self.on_demand = service_layout(self.store, self.service)
        self.order = [p.name for p in self.service.feature_view_projections]
        bad = {v.join_key for v in self.views} - {"user_id", "item_id"}
        if bad:
            raise StoreError(f"service {feature_service!r} has entity keys {sorted(bad)}; the SDK serves user_id/item_id")
        self._check_key_types()
        self.kinds = {f: k for v in (*self.views, *self.on_demand) for f, k in zip(v.features, v.kinds)}
        self.vectorised = ondemand.vectorised(self.spec, self.on_demand) if self.spec else {}
        self.reader = make_reader(self.store)
        self.online_store = self.reader.kind
        self.max_items = max_items
        item_views = [v for v in self.views if v.join_key == "item_id"]
        self.item_cache = ItemRowCache(item_views, item_cache, item_cache_max_age_s) if item_cache else None

    def _registry_key_types(self) -> dict[str, str]:
        """join key -> "int64" | "string" from the registry's entities (default int64)."""
        from feast.value_type import ValueType

        out = {"user_id": "int64", "item_id": "int64"}
        for ent in self.store.list_entities():
            if ent.join_key in out and ent.value_type == ValueType.STRING:
                out[ent.join_key] = "string"
        return out

    def _check_key_types(self) -> None:
        """The registry's entity value types must be the spec's (else every read would miss)."""
        from feast.value_type import ValueType

        want = {"int64": ValueType.INT64, "string": ValueType.STRING}
        for ent in self.store.list_entities():
            jk = ent.join_key
            if jk in self.key_types and ent.value_type != want[self.key_types[jk]]:
                raise StoreError(f"the registry of {self.store.repo_path} declares {jk} as {ent.value_type.name}, "
                                     f"its catalog.yaml as {self.key_types[jk]}: run `recfeast materialize` (or "
                                     "`feast apply`) after changing the spec")

    def key(self, value, name: str = "user_id") -> int | str:
        """``value`` validated as a key of this catalog (see :func:`_as_key`): an item key when
        ``name`` contains "item" (``item_ids[3]``), else a user key; ``name`` is used in messages."""
        return _as_key(value, name, self.key_types["item_id" if "item" in name else "user_id"])

    def parse_key(self, text: str, name: str = "user_id") -> int | str:
        """A key typed as text (CLI, URL) -> this catalog's key type: int64 keys are parsed as
        integers, string keys kept as given.

        Raises:
            FeatureLookupError: an int64 key that is not an integer.
        """
        kind = self.key_types["item_id" if "item" in name else "user_id"]
        if kind == "int64":
            try:
                return _as_key(int(str(text).strip()), name)
            except ValueError:
                what = "item" if "item" in name else "user"
                raise FeatureLookupError(f"{name}={text!r}: expected an integer (this catalog's {what} ids are int64)") from None
        return _as_key(text, name, kind)

    @cached_property
    def _history_view(self):
        """The online view holding a user's recent items (``user_realtime:last_item_ids``, pushed
        by the ingest path; int64 catalogs only), or None when the spec or registry has none."""
        from recfeast.layout import projection_layout
        from recfeast.views import view

        if self.spec is None or view(self.spec, "user_realtime") is None:
            return None
        try:
            return projection_layout(self.store, "user_realtime", ["last_item_ids"])
        except StoreError:
            return None

    def recent_items(self, user_id) -> list:
        """Items the online store knows ``user_id`` interacted with lately, newest first: the
        ``last_item_ids`` of the pushed ``user_realtime`` view (the user's last 10 ingested
        events). Best effort: ``[]`` when the catalog has no such view (string ids) or the user has
        no pushed state (the view's ttl is not applied to it). Batch-only history is not online
        item by item, so it is not returned. One round trip; :meth:`read_user` reads it together
        with the user's features.

        Raises:
            FeatureLookupError: a key of the wrong type. StoreError: the store cannot be read.
        """
        v = self._history_view
        if v is None or user_id is None:
            return []
        user_id = self.key(user_id, "user_id")
        return _recent(self.reader.read({"user_id": [user_id]}, [v])[v.name])

    @cached_property
    def _user_views(self) -> list:
        """The service's user views, plus the history view under a name of its own (a view of the
        service may be ``user_realtime`` too, with other features)."""
        from dataclasses import replace

        views = [v for v in self.views if v.join_key == "user_id"]
        if self._history_view is not None:
            views.append(replace(self._history_view, name=_HISTORY))
        return views

    def read_user(self, user_id, request_ts: int | None = None) -> UserRows:
        """The user's rows of every user view of the service and the user's recent items
        (:meth:`recent_items`), in one round trip: one Redis pipeline holding one HMGET (every
        field of every user view and of ``user_realtime:last_item_ids`` under the user's key), or
        one SQLite statement (a ``UNION ALL`` over the user views' tables).

        Args:
            user_id: the user key (int or str, as the catalog spec declares it).
            request_ts: unix seconds for the ttl checks; default now.

        Returns:
            :class:`UserRows`, to pass to :meth:`get_item_features`.

        Raises:
            FeatureLookupError: a key of the wrong type or a request time outside 1970..2242.
            StoreError: the online store cannot be read.
        """
        user_id = _as_key(user_id, "user_id", self.key_types["user_id"])
        ts = self._request_ts(request_ts)
        views = self._user_views
        rows, stamp = self.reader.read({"user_id": [user_id]}, views, stamp=True)
        recent = _recent(rows.pop(_HISTORY)) if _HISTORY in rows else []
        decoded = {v.name: self._decode(v, rows[v.name], ts) for v in views if v.name != _HISTORY}
        return UserRows(user_id, ts, self.service.name, decoded, recent, load_stamp=stamp)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the service's order (the column order after ``user_id``, ``item_id``)."""
        by_name = {v.name: v.features for v in (*self.views, *self.on_demand)}
        return [f for name in self.order for f in by_name[name]]

    def _validate(self, user_id, item_ids, request_ts) -> tuple[int | str | None, list, int]:
        if isinstance(item_ids, (str, bytes)) or not hasattr(item_ids, "__iter__"):
            want = "strings" if self.key_types["item_id"] == "string" else "integers"
            raise FeatureLookupError(f"item_ids must be a list of {want}, got {type(item_ids).__name__}")
        item_ids = list(item_ids)
        if not item_ids:
            raise FeatureLookupError("item_ids is empty: pass at least one item id")
        if len(item_ids) > self.max_items:
            raise FeatureLookupError(f"{len(item_ids)} item ids: at most {self.max_items} per call")
        user_id = None if user_id is None else _as_key(user_id, "user_id", self.key_types["user_id"])
        item_ids = [_as_key(i, f"item_ids[{n}]", self.key_types["item_id"]) for n, i in enumerate(item_ids)]
        return user_id, item_ids, self._request_ts(request_ts)

    @staticmethod
    def _request_ts(request_ts) -> int:
        ts = int(time.time()) if request_ts is None else _as_key(request_ts, "request_ts")
        if not 0 <= ts < 2**33:
            raise FeatureLookupError(f"request_ts={ts}: expected unix seconds between 1970 and 2242")
        return ts

    def get_features(self, user_id: int | str | None, item_ids, request_ts: int | None = None) -> RankingFeatures:
        """Features of ``user_id`` paired with each of ``item_ids``, in one online read.

        Args:
            user_id: the user key (int or str, as the catalog spec declares it); ``None`` for an
                anonymous request (user features null, status ``missing``).
            item_ids: n item keys (ints or strs per the spec), 1 <= n <= ``max_items``; duplicates
                are allowed and kept.
            request_ts: unix seconds for request-time features and ttl checks; default now.

        Returns:
            :class:`RankingFeatures` with n rows in the order of ``item_ids``.

        Raises:
            FeatureLookupError: no items, too many, a key not of the spec's type (for int64 keys:
                1.5, "7", True; for string keys: 7, ""), or a request time outside 1970..2242.
            StoreError: the online store cannot be read.
        """
        user_id, item_ids, ts = self._validate(user_id, item_ids, request_ts)
        keys = {"item_id": list(dict.fromkeys(item_ids)), "user_id": [] if user_id is None else [user_id]}
        rows = self.reader.read(keys, self.views)
        decoded = {v.name: self._decode(v, rows[v.name], ts) for v in self.views}
        # distinct items (the usual case): the rows are already in request order, not gathered again
        return self._finish(decoded, user_id, item_ids, keys["item_id"], ts,
                            ordered=len(keys["item_id"]) == len(item_ids))

    def get_item_features(self, user: UserRows, item_ids) -> RankingFeatures:
        """Features of the user read by :meth:`read_user` paired with each of ``item_ids``: the items'
        views only, from the item cache when the client has one (valid for the load sentinel read
        with ``user``) and one more round trip for the items it lacks (one Redis pipeline of one
        HMGET per distinct item, or one SQLite statement); the user's rows are reused, not read
        again. The answer equals :meth:`get_features` (``user.user_id``, ``item_ids``,
        ``user.request_ts``) on an unchanged store.

        Raises:
            FeatureLookupError: no items, too many, or an item key not of the spec's type.
            StoreError: the online store cannot be read.
        """
        _, item_ids, ts = self._validate(user.user_id, item_ids, user.request_ts)
        return self._item_features(user, item_ids)

    def _item_features(self, user: UserRows, item_ids: list) -> RankingFeatures:
        """:meth:`get_item_features` for keys already of the catalog's type (candidates from the
        index), 1 to ``max_items`` of them: not validated again."""
        ts = user.request_ts
        item_views = [v for v in self.views if v.join_key == "item_id"]
        if self.item_cache is not None and item_views:
            def read(keys):
                rows = self.reader.read({"item_id": keys}, item_views)
                return {v.name: decode_rows(v, rows[v.name]) for v in item_views}

            got = self.item_cache.rows(item_ids, user.load_stamp, read)
            decoded = {v.name: _live(v, *got[v.name], ts) for v in item_views}
            decoded.update(user._decoded)
            return self._finish(decoded, user.user_id, item_ids, item_ids, ts, ordered=True)
        uniq = list(dict.fromkeys(item_ids))
        rows = self.reader.read({"item_id": uniq}, item_views)
        decoded = {v.name: self._decode(v, rows[v.name], ts) for v in item_views}
        decoded.update(user._decoded)
        return self._finish(decoded, user.user_id, item_ids, uniq, ts)

    def _finish(self, decoded: dict, user_id, item_ids: list, uniq: list, ts: int,
                ordered: bool = False) -> RankingFeatures:
        """``ordered``: the item rows of ``decoded`` are already in the order of ``item_ids``."""
        if ordered:   # item rows already one per requested item: used as they are, not gathered again
            index = {"item_id": None, "user_id": np.zeros(len(item_ids), np.int64)}
        else:
            pos = {i: n for n, i in enumerate(uniq)}
            index = {"item_id": np.fromiter((pos[i] for i in item_ids), np.int64, len(item_ids)),
                     "user_id": np.zeros(len(item_ids), np.int64)}
        feats = self._assemble(decoded, index, user_id, item_ids, ts)
        feats._stored_views = [v.name for v in self.views]
        if feats.nothing_found:
            import warnings

            from recfeast.errors import EmptyResultWarning

            warnings.warn(EmptyResultWarning(
                f"no feature value found in the {self.online_store} online store of {self.store.repo_path} "
                f"(project {self.store.project!r}) for the user or any item asked: is the store empty or never "
                "loaded? Run `recfeast materialize` (or `recfeast schedule`) first, with the same --online-store."),
                stacklevel=3)
        return feats

    @staticmethod
    def _decode(v, r, ts: int):
        """One view's raw rows of m entities -> ``(state (m,) object, {feature: column of m rows})``
        with values of rows older than the view's ttl nulled; None when m == 0 (anonymous user).
        Columns as :func:`decode_rows`."""
        if len(r.present) == 0:
            return None
        return _live(v, *decode_rows(v, r), ts)

    def _assemble(self, decoded: dict, index: dict, user_id, item_ids, ts) -> RankingFeatures:
        n = len(item_ids)
        if self.key_types["user_id"] == "string":
            users = np.full(n, None, object)
            users[:] = user_id
        else:
            users = np.full(n, -1 if user_id is None else user_id, np.int64)
        if self.key_types["item_id"] == "string":
            items = np.empty(n, object)
            items[:] = item_ids
        else:
            items = np.asarray(item_ids, np.int64)
        arrays = {"user_id": users, "item_id": items}
        numeric, ints, status = {}, {}, {}
        for v in self.views:
            d, idx = decoded[v.name], index[v.join_key]
            if d is None:  # anonymous: no user rows at all
                status[v.name] = np.full(n, MISSING, object)
                for f, kind in zip(v.features, v.kinds):
                    if kind == VECTOR:
                        arrays[f] = np.full((n, 0), np.nan, np.float32)
                    elif kind == INT64:
                        arrays[f] = np.full(n, np.nan)
                        ints[f] = (np.zeros(n, np.int64), np.ones(n, bool))
                    elif kind in (STRING, LIST):
                        arrays[f] = np.full(n, None, object)
                    else:
                        arrays[f] = np.full(n, np.nan, np.float32 if kind == FLOAT32 else np.float64)
                    numeric[f] = arrays[f]
                continue
            state_e, cols = d
            status[v.name] = state_e if idx is None else state_e[idx]
            for f, kind in zip(v.features, v.kinds):
                col = cols[f]
                if kind == INT64:
                    vals, mask = (col if idx is None else (col[0][idx], col[1][idx]))
                    arrays[f] = np.where(mask, np.nan, vals.astype(np.float64))
                    ints[f] = (np.where(mask, 0, vals), mask)
                else:
                    arrays[f] = col if idx is None else col[idx]
                numeric[f] = arrays[f]
        for od in self.on_demand:
            from recfeast.serving import ondemand

            fn = self.vectorised.get(od.name)
            inputs = {c: numeric[c] for c in od.inputs if c in numeric}
            out = fn(inputs, ts) if fn else ondemand.run_udf(od.udf, inputs, n, ts)
            ok = np.ones(n, bool)
            for f, kind in zip(od.features, od.kinds):
                col = np.asarray(out[f], np.float32 if kind == FLOAT32 else np.float64)
                arrays[f] = col
                ok &= ~np.isnan(col)
            status[od.name] = np.where(ok, FOUND, MISSING)
        ordered = {"user_id": arrays["user_id"], "item_id": arrays["item_id"]}
        ordered.update({f: arrays[f] for f in self.feature_names})
        return RankingFeatures(ordered, dict(self.kinds), {name: status[name] for name in self.order},
                               self.service.name, ts, ints)


def decode_rows(v, r) -> tuple[np.ndarray, np.ndarray, dict]:
    """One view's raw rows of m entities (:class:`recfeast.serving.reader.ViewRows`) -> ``(present
    (m,) bool, event time (m,) float64 unix seconds, {feature: column})``, no ttl applied. Columns:
    vectors ``(m, d)`` float32 (NaN rows), Int64 ``(values int64, null mask)``, strings and lists
    ``(m,)`` object (None), floats ``(m,)`` float32/float64 with NaN."""
    m = len(r.present)
    cols = {}
    for f, kind, bufs in zip(v.features, v.kinds, r.values):
        col = decode_column(bufs, kind, m)
        if kind == VECTOR:
            cols[f] = col[0]
        elif kind in (STRING, LIST):   # lists: one Python list per row; np.asarray would stack equal lengths
            obj = np.empty(m, object)
            obj[:] = col
            cols[f] = obj
        else:
            cols[f] = col
    return r.present, r.ts, cols


def _live(v, present: np.ndarray, row_ts: np.ndarray, cols: dict, ts: int) -> tuple[np.ndarray, dict]:
    """``(state (m,) object, cols)`` at request time ``ts``: rows older than the view's ttl are
    ``"stale"`` and their values nulled (in copies; cached and read-only columns are not written)."""
    if not v.ttl_s:
        return np.where(present, FOUND, MISSING), cols
    stale = present & (ts - row_ts > v.ttl_s)
    state = np.where(present & ~stale, FOUND, np.where(stale, STALE, MISSING))
    if stale.any():
        out = {}
        for f, col in cols.items():
            if isinstance(col, tuple):
                vals, mask = col[0].copy(), col[1] | stale
                vals[stale] = 0
                out[f] = (vals, mask)
            else:
                col = col.copy()
                col[stale] = None if col.dtype == object else np.nan
                out[f] = col
        cols = out
    return state, cols


_HISTORY = "user_realtime#recent_items"   #: key of the history view in a user read


def _recent(rows) -> list:
    """``last_item_ids`` of one user's history view rows, ``[]`` when absent or null."""
    from recfeast.codec import decode_int64_list

    if not rows.present[0]:
        return []
    return decode_int64_list(rows.values[0][0]) or []
