"""Embedding cache keyed by (model identity, content hash): incremental re-embedding.

One Parquet file per model identity under ``<repo>/data/embedding_cache/`` with columns
``content_hash`` (string: sha256 prefix of the input text, or of the image file's bytes) and
``embedding`` (``list<float32>``). A rerun over an unchanged catalog finds every input and computes
nothing; editing one overview or replacing one poster changes one hash, so exactly that item is
recomputed; a new model version has its own file, so it computes everything once, and switching
back to an earlier version finds its file again (a roll-back costs no encoding).

The first time a model has no cache file, it is seeded from the rows of the existing feature
table that carry the same model identity, so upgrading recfeast does not re-embed the catalog.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


def cache_path(root: Path, model_id: str) -> Path:
    """File of ``model_id``'s cache: its identity with unsafe characters replaced."""
    return Path(root) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id) + ".parquet")


class EmbeddingCache:
    """The cache of one model identity.

    Args:
        root: cache folder (``<repo>/data/embedding_cache``).
        model_id: the encoder's identity (``name@sha256:...``).
        dim: embedding width.
        seed_table: a feature table to seed from when no cache file exists, as
            ``(path, vector column, model column)``.
    """

    def __init__(self, root: Path, model_id: str, dim: int, seed_table: tuple[Path, str, str] | None = None):
        self.path, self.model_id, self.dim = cache_path(root, model_id), model_id, dim
        self._new: dict[str, np.ndarray] = {}
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                df = pd.read_parquet(self.path, columns=["content_hash", "embedding"])
                self.vectors = dict(zip(df["content_hash"], df["embedding"]))
            except Exception as exc:  # a damaged cache is derived data: drop it and start again
                import warnings

                warnings.warn(f"{self.path}: unreadable embedding cache ({exc}); rebuilding it")
                self.path.unlink(missing_ok=True)
        if not self.path.is_file() and seed_table is not None and Path(seed_table[0]).is_file():
            table, vec_col, model_col = seed_table
            df = pd.read_parquet(table, columns=["content_hash", vec_col, model_col])
            df = df[df[model_col] == model_id]
            self._new = {h: np.asarray(v, np.float32) for h, v in zip(df["content_hash"], df[vec_col])
                         if v is not None and len(v) == dim}

    def lookup(self, content_hash: str) -> np.ndarray | None:
        """The cached ``(dim,)`` float32 vector of an input, or None."""
        v = self._new.get(content_hash)
        if v is None:
            v = self.vectors.get(content_hash)
        return None if v is None or len(v) != self.dim else np.asarray(v, np.float32)

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Remember vectors (rows with NaN, i.e. inputs that could not be embedded, are not cached)."""
        for h, v in zip(hashes, vectors):
            if not np.isnan(v).any():
                self._new[h] = np.asarray(v, np.float32)

    def save(self) -> int:
        """Write the cache with the new vectors (atomically). Returns the number of entries."""
        from recfeast.io import atomic_write_bytes, vector_array

        if not self._new:
            return len(self.vectors)
        merged = {**self.vectors, **self._new}
        hashes = sorted(merged)
        mat = np.stack([np.asarray(merged[h], np.float32) for h in hashes])
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"content_hash": pa.array(hashes, pa.string()), "embedding": vector_array(mat)})
        atomic_write_bytes(self.path, lambda p: pq.write_table(table, p))
        self.vectors, self._new = merged, {}
        return len(hashes)


def cached_encode(cache: EmbeddingCache, hashes: list[str], encode: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, int, int]:
    """Embeddings of n inputs: cached ones reused, the rest computed with ``encode(positions)`` (an
    input hash seen twice in one call is computed once) and added to the cache.

    Returns:
        ``((n, dim) float32 with NaN rows where encode failed, reused count, computed count)``.
    """
    out = np.full((len(hashes), cache.dim), np.nan, dtype=np.float32)
    todo: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        v = cache.lookup(h)
        if v is not None:
            out[i] = v
        else:
            todo.setdefault(h, []).append(i)
    if todo:
        first = [pos[0] for pos in todo.values()]
        vecs = np.asarray(encode(first), dtype=np.float32)
        for (h, pos), v in zip(todo.items(), vecs):
            out[pos] = v
        cache.add(list(todo), vecs)
    return out, len(hashes) - sum(len(p) for p in todo.values()), len(todo)
