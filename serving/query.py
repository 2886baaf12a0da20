"""Query embeddings at request time: validation, an LRU cache, and micro-batching of concurrent requests.

Requests call :meth:`QueryEmbedder.embed` from many threads. A cached query returns at once; a new
one is queued, and a small pool of worker threads takes everything queued (up to ``max_batch``,
waiting at most ``max_wait_ms`` for more to arrive), encodes it in one forward pass and hands each
caller its row. The same text asked twice while it is being encoded is encoded once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np

from recfeast.errors import FeatureLookupError, ModelError

MAX_QUERY_CHARS = 512


def normalize_query(text, max_chars: int = MAX_QUERY_CHARS) -> str:
    """The cache key of a query: whitespace runs collapsed to one space, ends stripped (the BERT
    tokenizer splits on whitespace, so this does not change the embedding).

    Raises:
        FeatureLookupError: not a string, empty after stripping, or longer than ``max_chars``.
    """
    if not isinstance(text, str):
        raise FeatureLookupError(f"query must be a string, got {type(text).__name__}")
    key = " ".join(text.split())
    if not key:
        raise FeatureLookupError("query is empty: pass some text to search for")
    if len(key) > max_chars:
        raise FeatureLookupError(f"query is {len(key)} characters long: at most {max_chars}")
    return key


class QueryEmbedder:
    """Embeds search queries with the text encoder that produced the served item embeddings.

    Args:
        encoder: object with ``encode(list[str]) -> (n, d) float32`` (L2-normalised) and
            ``model_id``; default a :class:`recfeast.encoders.TextEncoder`, loaded here.
        expected_model_id: identity of the item text embeddings being served; the encoder must
            have the same, or queries and items would live in different spaces.
        cache_size: queries kept (LRU). workers: encoding threads. max_batch: queries per forward
            pass. max_wait_ms: how long a worker waits for more queries before encoding.
        on_cache: optional ``callback(hit: bool)`` (metrics).

    Raises:
        ModelError: the encoder's identity differs from ``expected_model_id``.
    """

    def __init__(self, encoder=None, expected_model_id: str | None = None, cache_size: int = 10_000,
                 workers: int = 1, max_batch: int = 32, max_wait_ms: float = 2.0, on_cache=None,
                 max_chars: int = MAX_QUERY_CHARS):
        if encoder is None:
            from recfeast.config import encoder_precision
            from recfeast.encoders import TextEncoder

            encoder = TextEncoder(precision=encoder_precision("text"))
        if expected_model_id is not None and encoder.model_id != expected_model_id:
            raise ModelError(f"query encoder {encoder.model_id} differs from the model of the served item text "
                             f"embeddings {expected_model_id}: queries and items would be in different spaces; "
                             "re-embed the items (recfeast materialize) or serve with the matching encoder")
        self.encoder, self.model_id = encoder, encoder.model_id
        self.cache_size, self.max_batch, self.max_wait = cache_size, max_batch, max_wait_ms / 1000
        self.max_chars, self.on_cache = max_chars, on_cache
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes of the last 1000 forward passes
        self._threads = [threading.Thread(target=self._work, name=f"query-embed-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def embed(self, text: str, timeout: float = 30.0) -> tuple[np.ndarray, bool]:
        """Embedding of one query.

        Returns:
            ``((d,) float32 read-only unit vector, cache hit)``.

        Raises:
            FeatureLookupError: empty, overlong or non-string query.
            ModelError: the encoder failed on it.
        """
        key = normalize_query(text, self.max_chars)
        with self._lock:
            vec = self._cache.get(key)
            if vec is not None:
                self._cache.move_to_end(key)
            else:
                fut = self._pending.get(key)
                if fut is None:
                    fut = self._pending[key] = Future()
                    self._queue.put(key)
        if self.on_cache:
            self.on_cache(vec is not None)
        if vec is not None:
            return vec, True
        try:
            return fut.result(timeout), False
        except Exception as exc:
            raise ModelError(f"query encoding failed: {exc}") from exc

    def _work(self) -> None:
        while True:
            keys = [self._queue.get()]
            end = time.monotonic() + self.max_wait
            while len(keys) < self.max_batch:
                left = end - time.monotonic()
                try:
                    keys.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vecs = np.asarray(self.encoder.encode(keys), np.float32)
                error = None
            except Exception as exc:  # handed to every waiting caller
                vecs, error = None, exc
            with self._lock:
                self.batches = (self.batches + [len(keys)])[-1000:]
                for n, key in enumerate(keys):
                    fut = self._pending.pop(key)
                    if error is not None:
                        fut.set_exception(error)
                        continue
                    v = vecs[n].copy()
                    v.setflags(write=False)
                    self._cache[key] = v
                    fut.set_result(v)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)

    def cache_info(self) -> dict:
        """``{"size", "capacity", "mean_batch"}`` of the cache and the recent forward passes."""
        with self._lock:
            b = self.batches
            return {"size": len(self._cache), "capacity": self.cache_size,
                    "mean_batch": float(np.mean(b)) if b else 0.0}
