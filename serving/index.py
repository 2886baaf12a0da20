"""Nearest-neighbour retrieval over the item text embeddings (usearch HNSW, cosine).

The index follows ``item_text_embedding.parquet``, the table the main job writes and the online store
is loaded from: :meth:`ItemIndex.refresh` rereads it when the file changes and applies the difference
(items whose latest row changed are replaced, new ones added, deleted ones removed) without a
rebuild. The index belongs to one embedding identity (``text_model``): a table whose latest rows
mix identities is refused (cosines across two models mean nothing) and the index keeps serving its
last consistent state; a table that moved wholly to a new model is rebuilt from scratch.

usearch was picked over hnswlib and faiss: it installs as a wheel here (hnswlib 0.8 needs a compiler),
and it removes and replaces single keys in an HNSW graph (faiss' HNSW cannot remove).

usearch keys are uint64, while item ids are whatever the catalog spec declares (int64, possibly
negative, or strings such as ``"0706016001"``): each item gets an internal key, a row number handed
out in order of first appearance and never reused, and :meth:`ItemIndex.search` answers with item ids.
Callers never see the internal keys.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast.errors import DataError, ModelError


def latest_item_rows(path: Path, columns: list[str]) -> pd.DataFrame:
    """Each item's latest row by (event_timestamp, created_timestamp) of the table at ``path``.

    Raises:
        DataError: the table is missing or lacks a column.
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: no such table; run `recfeast materialize` first")
    try:
        t = pd.read_parquet(path, columns=["item_id", "event_timestamp", "created_timestamp", *columns])
    except Exception as exc:  # pyarrow ArrowInvalid / KeyError on a missing column
        raise DataError(f"{path}: cannot read columns {columns}: {exc}") from exc
    t = t.sort_values(["item_id", "event_timestamp", "created_timestamp"], kind="stable")
    return t.groupby("item_id", sort=True).tail(1).reset_index(drop=True)


def _ns(col: pd.Series) -> list[int]:
    """Timestamps as int nanoseconds, whatever unit or zone Parquet gave back."""
    t = pd.to_datetime(col, utc=True).dt.tz_convert(None).astype("datetime64[ns]")
    return t.astype("int64").tolist()


class ItemIndex:
    """HNSW index of the latest text embedding of every item, for one embedding identity.

    Args:
        table: path of ``item_text_embedding.parquet``.
        connectivity / expansion_add / expansion_search: usearch HNSW parameters (M, efConstruction,
            ef at query time).

    Attributes:
        model_id: the ``text_model`` identity of every indexed vector. dim: vector width.
        version: incremented on every change (``model_id#version`` names the index state served).

    Raises:
        DataError / ModelError: from the first :meth:`refresh`.
    """

    def __init__(self, table: str | Path, connectivity: int = 16, expansion_add: int = 128,
                 expansion_search: int = 64):
        self.table = Path(table)
        self.params = {"connectivity": connectivity, "expansion_add": expansion_add,
                       "expansion_search": expansion_search}
        self.model_id: str | None = None
        self.dim = 0
        self.version = 0
        self.updated_at = 0.0
        self._index = None
        self._rows: dict = {}               # item id -> (event ts, created ts) indexed
        self._key: dict = {}                # item id -> usearch key (uint64 row number)
        self._ids: list = []                # usearch key -> item id
        self._string_ids = False
        self._sig = None
        self._lock = threading.Lock()
        self.refresh()

    def __len__(self) -> int:
        return len(self._rows)

    def _new_index(self, dim: int):
        from usearch.index import Index

        return Index(ndim=dim, metric="cos", dtype="f32", **self.params)

    def refresh(self, force: bool = False) -> dict | None:
        """Bring the index up to the table. Cheap when the file did not change (one ``stat``).

        Returns:
            None when nothing changed, else ``{"added", "updated", "removed", "rebuilt", "seconds"}``.

        Raises:
            ModelError: the latest rows carry more than one ``text_model`` (the index is left as it was).
            DataError: the table cannot be read, or its vectors differ in width.
        """
        st = self.table.stat() if self.table.is_file() else None
        sig = None if st is None else (st.st_mtime_ns, st.st_size)
        if sig == self._sig and not force and self._index is not None:
            return None
        t0 = time.perf_counter()
        rows = latest_item_rows(self.table, ["text_model", "text_embedding"])
        models = sorted(rows.text_model.dropna().unique())
        if len(models) > 1:
            counts = rows.text_model.value_counts().to_dict()
            raise ModelError(f"{self.table}: the latest item text embeddings come from {len(models)} models "
                             f"{counts}; one index cannot mix embedding spaces (finish re-embedding the catalog)")
        rows = rows[rows.text_embedding.map(lambda v: v is not None and len(v) > 0)]
        dims = {len(v) for v in rows.text_embedding}
        if len(dims) > 1:
            raise DataError(f"{self.table}: text embeddings of widths {sorted(dims)}")
        model = models[0] if models else None
        dim = dims.pop() if dims else 0
        string_ids = rows.item_id.dtype == object or pd.api.types.is_string_dtype(rows.item_id)
        ids = rows.item_id.astype(object if string_ids else np.int64).tolist()
        stamps = list(zip(_ns(rows.event_timestamp), _ns(rows.created_timestamp)))
        new = dict(zip(ids, stamps))
        rebuilt = model != self.model_id or dim != self.dim or self._index is None
        if rebuilt:
            changed = set(new)
            removed = set()
        else:
            changed = {i for i, s in new.items() if self._rows.get(i) != s}
            removed = set(self._rows) - set(new)
        old = set() if rebuilt else set(self._rows)
        counts = {"added": len(changed - old), "updated": len(changed & old), "removed": len(removed),
                  "rebuilt": rebuilt}
        pick = np.array([i in changed for i in ids], bool)
        vecs = np.stack(rows.text_embedding[pick].to_numpy()).astype(np.float32) if pick.any() else None
        with self._lock:
            index = self._new_index(dim) if rebuilt else self._index
            key, back = ({}, []) if rebuilt else (dict(self._key), list(self._ids))
            stale = sorted(key[i] for i in (changed | removed) & old)
            if stale:
                index.remove(np.asarray(stale, np.uint64))
            for i in removed:
                key.pop(i, None)
            if vecs is not None:
                add = []
                for i in (i for i, p in zip(ids, pick) if p):
                    if i not in key:
                        key[i] = len(back)
                        back.append(i)
                    add.append(key[i])
                index.add(np.asarray(add, np.uint64), vecs)
            self._index, self._rows, self.model_id, self.dim, self._sig = index, new, model, dim, sig
            self._key, self._ids, self._string_ids = key, back, string_ids
            self.version += 1
            self.updated_at = time.time()
        return {**counts, "seconds": time.perf_counter() - t0}

    def search(self, vector: np.ndarray, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items nearest to ``vector`` by cosine, best first.

        Args:
            vector: ``(dim,)`` float query in this index's embedding space.
            k: number of items wanted. exclude: item ids to leave out.

        Returns:
            ``(item ids (m,), cosine similarities (m,) float32)``, m <= k; ids int64, or object
            (str) for a catalog with string item ids.

        Raises:
            DataError: the vector's width is not the index's.
        """
        v = np.asarray(vector, np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise DataError(f"query vector of width {v.shape[0]}, the index holds {self.dim}-d vectors")
        exclude = set(exclude)
        with self._lock:
            empty = np.zeros(0, object if self._string_ids else np.int64)
            if not self._rows or k <= 0:
                return empty, np.zeros(0, np.float32)
            found = self._index.search(v, min(len(self._rows), k + len(exclude)))
            back = self._ids
            ids = [back[int(x)] for x in np.asarray(found.keys, np.uint64)]
        sims = (1.0 - np.asarray(found.distances, np.float32))
        keep = [n for n, i in enumerate(ids) if i not in exclude][:k]
        out = np.empty(len(keep), object) if self._string_ids else np.zeros(len(keep), np.int64)
        out[:] = [ids[n] for n in keep]
        return out, sims[keep]

    def info(self) -> dict:
        """``{"model_id", "items", "dim", "version", "updated_at"}`` (for responses and /health)."""
        return {"model_id": self.model_id, "items": len(self._rows), "dim": self.dim, "version": self.version,
                "updated_at": self.updated_at}
