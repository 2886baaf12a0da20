"""Query embeddings: same vectors as the encoder, cached, concurrent requests batched, bad queries refused."""

import threading

import numpy as np
import pytest

from recfeast.errors import FeatureLookupError, ModelError
from recfeast.serving.query import QueryEmbedder, normalize_query

pytestmark = pytest.mark.slow


class Recording:
    """The real text encoder, recording the batches it is given."""

    def __init__(self, encoder, delay=None):
        self.encoder, self.model_id, self.batches, self.delay = encoder, encoder.model_id, [], delay

    def encode(self, texts):
        self.batches.append(list(texts))
        if self.delay:
            self.delay.wait(5)
        return self.encoder.encode(texts)


def test_embeddings_equal_the_encoder_and_are_cached(text_encoder):
    rec = Recording(text_encoder)
    hits = []
    emb = QueryEmbedder(rec, expected_model_id=text_encoder.model_id, cache_size=2, on_cache=hits.append)
    want = text_encoder.encode(["space opera with rebels"])[0]
    v1, hit1 = emb.embed("space opera with rebels")
    v2, hit2 = emb.embed("  space   opera with\trebels ")  # same words: same key, same embedding
    assert (hit1, hit2) == (False, True) and v2 is v1 and hits == [False, True]
    np.testing.assert_array_equal(v1, want)
    assert v1.dtype == np.float32 and v1.shape == (384,) and not v1.flags.writeable
    assert abs(np.linalg.norm(v1) - 1) < 1e-5
    emb.embed("romantic comedy")
    emb.embed("film noir")  # capacity 2: the least recently used ("space opera ...") goes
    assert emb.cache_info()["size"] == 2
    _, hit = emb.embed("space opera with rebels")
    assert hit is False and [b for b in rec.batches if "space opera with rebels" in b] == [["space opera with rebels"]] * 2


def test_concurrent_requests_share_forward_passes(text_encoder):
    gate = threading.Event()
    rec = Recording(text_encoder, delay=gate)
    emb = QueryEmbedder(rec, max_batch=32, max_wait_ms=50)
    queries = [f"movie about {w}" for w in ("dogs", "cats", "space", "war", "love", "music", "crime", "ghosts")]
    out = {}

    def ask(q, n):
        out[n] = emb.embed(q)

    threads = [threading.Thread(target=ask, args=(queries[n % 8], n)) for n in range(24)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    encoded = [q for b in rec.batches for q in b]
    assert sorted(encoded) == sorted(queries)  # each distinct query encoded once, whatever the interleaving
    assert len(rec.batches) < 8                 # and several per forward pass
    want = text_encoder.encode(queries)
    for n, (vec, _) in out.items():
        np.testing.assert_allclose(vec, want[n % 8], atol=2e-6)  # batch padding changes only rounding


def test_bad_queries_and_mismatched_encoder(text_encoder):
    for bad, msg in [("", "empty"), ("   \n", "empty"), ("x" * 513, "513 characters"), (None, "must be a string"),
                     (42, "must be a string")]:
        with pytest.raises(FeatureLookupError, match=msg):
            normalize_query(bad)
    with pytest.raises(ModelError, match="different spaces"):
        QueryEmbedder(text_encoder, expected_model_id="all-MiniLM-L6-v2@sha256:000000000000")
