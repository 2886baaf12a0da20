"""Decoded item rows kept in process between online loads, so a request reads only its user.

Item views (content, text and image embeddings, popularity) change only when a batch load writes
them; the pushed real-time view is keyed by user. :class:`ItemRowCache` keeps the decoded rows of
the items a service has read (before the ttl check, which is applied per request) and is emptied
when the online store's load sentinel (:mod:`recfeast.health`, written at the end of every
``recfeast`` online load and read in the user's round trip) changes, when it is older than
``max_age_s`` (a write that leaves no sentinel, such as Feast's own ``feast materialize``, is seen
within that time), or when it would grow past ``capacity`` items.

Memory: per item the features of every item view, e.g. MovieLens with its 384-d text and 1280-d
image vectors about 6.7 KB, so the default 20,000 items hold at most about 135 MB.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from recfeast.layout import FLOAT32, INT64, LIST, STRING, VECTOR

DEFAULT_CAPACITY = 20_000   #: items kept at most; the cache starts over when a read would pass it
DEFAULT_MAX_AGE_S = 60.0    #: seconds a cached row may serve without a new load sentinel


class _ViewRows:
    """Growable decoded rows of one view: present ``(cap,)`` bool, ts ``(cap,)`` float64 (unix s),
    columns as :func:`recfeast.serving.sdk.decode_rows` returns them."""

    def __init__(self, view, cap: int):
        self.view = view
        self.present = np.zeros(cap, bool)
        self.ts = np.full(cap, np.nan)
        self.cols = {}
        for f, kind in zip(view.features, view.kinds):
            if kind == VECTOR:
                self.cols[f] = np.full((cap, 0), np.nan, np.float32)
            elif kind == INT64:
                self.cols[f] = (np.zeros(cap, np.int64), np.ones(cap, bool))
            elif kind in (STRING, LIST):
                self.cols[f] = np.full(cap, None, object)
            else:
                self.cols[f] = np.full(cap, np.nan, np.float32 if kind == FLOAT32 else np.float64)

    def grow(self, cap: int) -> None:
        """Room for ``cap`` rows (existing rows kept)."""
        old = len(self.present)
        if cap <= old:
            return
        self.present = np.concatenate([self.present, np.zeros(cap - old, bool)])
        self.ts = np.concatenate([self.ts, np.full(cap - old, np.nan)])
        for f, col in self.cols.items():
            if isinstance(col, tuple):
                self.cols[f] = (np.concatenate([col[0], np.zeros(cap - old, np.int64)]),
                                np.concatenate([col[1], np.ones(cap - old, bool)]))
            elif col.ndim == 2:
                self.cols[f] = np.concatenate([col, np.full((cap - old, col.shape[1]), np.nan, np.float32)])
            else:
                pad = np.full(cap - old, None, object) if col.dtype == object else np.full(cap - old, np.nan, col.dtype)
                self.cols[f] = np.concatenate([col, pad])

    def put(self, start: int, present, ts, cols) -> bool:
        """Write m decoded rows at ``start``; False when a vector's width differs from the cached one."""
        m = len(present)
        rows = slice(start, start + m)
        for f, col in cols.items():
            mine = self.cols[f]
            if isinstance(mine, tuple):
                mine[0][rows], mine[1][rows] = col
            elif mine.ndim == 2:
                if col.shape[1] and mine.shape[1] != col.shape[1]:
                    if mine.shape[1]:
                        return False
                    mine = self.cols[f] = np.full((len(self.present), col.shape[1]), np.nan, np.float32)
                if col.shape[1]:
                    mine[rows] = col
            else:
                mine[rows] = col
        self.present[rows], self.ts[rows] = present, ts
        return True

    def take(self, slots: np.ndarray):
        """``(present, ts, cols)`` of the rows ``slots`` (copies). A vector column none of whose
        taken rows holds a vector is ``(m, 0)``, as :func:`recfeast.codec.decode_vectors` decodes
        such a read (the cached answer equals the uncached one)."""
        cols = {f: (c[0][slots], c[1][slots]) if isinstance(c, tuple) else _no_vector(c[slots])
                for f, c in self.cols.items()}
        return self.present[slots], self.ts[slots], cols


def _no_vector(col: np.ndarray) -> np.ndarray:
    """``col`` as it is, or ``(m, 0)`` when it is an ``(m, d)`` vector column of NaN rows only
    (the first element of every row tested first: O(m) for the usual column with vectors)."""
    if col.ndim != 2 or not col.shape[1] or not np.isnan(col[:, 0]).all() or not np.isnan(col).all():
        return col
    return col[:, :0]


class ItemRowCache:
    """Decoded rows of item views by item key, valid for one load sentinel (see the module doc).

    Args:
        views: the item views (:class:`recfeast.layout.ViewSpec`) of one feature service.
        capacity: most items kept (>= 1; the cache starts over when a read would pass it).
        max_age_s: seconds after which the cache starts over even without a new sentinel (> 0;
            ``inf``: never by age).

    Thread-safe: one lock around lookups, the read of missing items and the insertion, so a burst
    of requests after a load reads each item once.
    """

    def __init__(self, views: list, capacity: int = DEFAULT_CAPACITY, max_age_s: float = DEFAULT_MAX_AGE_S):
        if capacity < 1:
            raise ValueError(f"item cache capacity {capacity}: expected at least 1 item")
        if not max_age_s > 0:   # NaN too: it never compares greater, so the cache would never expire
            raise ValueError(f"item cache max age {max_age_s}: expected seconds > 0")
        self.views, self.capacity, self.max_age_s = list(views), int(capacity), float(max_age_s)
        self._lock = threading.Lock()
        self.hits = self.misses = self.resets = 0
        self._reset(None)

    def _reset(self, stamp) -> None:
        if getattr(self, "_slots", None):   # counted only when it held items
            self.resets += 1
        self._slots: dict = {}
        self._rows = {v.name: _ViewRows(v, 0) for v in self.views}
        self._stamp, self._born = stamp, time.monotonic()

    def __len__(self) -> int:
        return len(self._slots)

    def info(self) -> dict:
        """``{"items", "capacity", "max_age_s", "age_s", "hits", "misses", "resets"}`` (``/health``);
        hits and misses count item rows since start; resets count the times it dropped items."""
        return {"items": len(self._slots), "capacity": self.capacity, "max_age_s": self.max_age_s,
                "age_s": round(time.monotonic() - self._born, 3), "hits": self.hits, "misses": self.misses,
                "resets": self.resets}

    def rows(self, keys: list, stamp, read) -> dict:
        """Decoded rows of every item view for ``keys`` (in that order, duplicates allowed).

        Args:
            keys: item keys. stamp: the online store's load sentinel as read with the user (bytes,
                str or None). read: ``missing keys -> {view name: (present, ts, cols)}`` reading
                the store (called at most once, with the keys not cached, under the lock).

        Returns:
            view name -> ``(present (n,) bool, ts (n,) float64, {feature: column of n rows})``.

        Raises:
            whatever ``read`` raises (StoreError); nothing is cached then.
        """
        with self._lock:
            if stamp != self._stamp or time.monotonic() - self._born > self.max_age_s:
                self._reset(stamp)
            missing = list(dict.fromkeys(k for k in keys if k not in self._slots))
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
            if missing:
                if len(missing) > self.capacity:   # more than the cache holds: read through
                    return _through(keys, read)
                if len(self._slots) + len(missing) > self.capacity:
                    self._reset(stamp)
                    missing = list(dict.fromkeys(keys))
                    if len(missing) > self.capacity:   # the request's own items do not fit: read through
                        return _through(keys, read)
                got = read(missing)
                start, end = len(self._slots), len(self._slots) + len(missing)
                for name, vr in self._rows.items():
                    vr.grow(min(self.capacity, max(end, 2 * len(vr.present), 256)))
                    if not vr.put(start, *got[name]):   # a vector's width changed: start over, read through
                        self._reset(stamp)
                        return _through(keys, read)
                self._slots.update(zip(missing, range(start, end)))
            slots = np.fromiter((self._slots[k] for k in keys), np.int64, len(keys))
            return {name: vr.take(slots) for name, vr in self._rows.items()}


def _through(keys: list, read) -> dict:
    """:meth:`ItemRowCache.rows` without the cache: one read of the distinct ``keys``."""
    uniq = list(dict.fromkeys(keys))
    pos = {k: n for n, k in enumerate(uniq)}
    idx = np.fromiter((pos[k] for k in keys), np.int64, len(keys))
    return {name: _take(block, idx) for name, block in read(uniq).items()}


def _take(block, idx):
    present, ts, cols = block
    return present[idx], ts[idx], {f: (c[0][idx], c[1][idx]) if isinstance(c, tuple) else np.asarray(c)[idx]
                                   for f, c in cols.items()}
