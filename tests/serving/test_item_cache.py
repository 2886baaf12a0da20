"""The in-process item cache: rows come back in request order, each item is read once per load
sentinel, and a new sentinel, the age limit or a full cache start it over (fast tier: no store)."""

import time

import numpy as np
import pytest

from recfeast.layout import FLOAT32, INT64, LIST, STRING, VECTOR, ViewSpec
from recfeast.serving.itemcache import ItemRowCache

VIEW = ViewSpec(name="item_content", join_key="item_id", features=("vec", "pop", "count", "genre", "tags"),
                kinds=(VECTOR, FLOAT32, INT64, STRING, LIST), ttl_s=0, fields=(b"a", b"b", b"c", b"d", b"e"),
                ts_field=b"_ts:item_content", table="p_item_content")


class Store:
    """Decoded rows of item i: vec = [i, i, i], pop = i / 10, count = i, genre = f"g{i}", tags = [i];
    item 13 has no row; ``version`` is added to vec so a reload is visible."""

    def __init__(self):
        self.calls, self.version = [], 0.0

    def read(self, keys):
        self.calls.append(list(keys))
        m = len(keys)
        present = np.array([k != 13 for k in keys])
        vec = np.array([[k + self.version] * 3 if p else [np.nan] * 3 for k, p in zip(keys, present)], np.float32)
        pop = np.array([k / 10 if p else np.nan for k, p in zip(keys, present)], np.float32)
        count = (np.array([k if p else 0 for k, p in zip(keys, present)], np.int64), ~present)
        genre = np.array([f"g{k}" if p else None for k, p in zip(keys, present)], object)
        tags = np.empty(m, object)
        tags[:] = [[k] if p else None for k, p in zip(keys, present)]
        return {VIEW.name: (present, np.full(m, 1e9), {"vec": vec, "pop": pop, "count": count,
                                                        "genre": genre, "tags": tags})}


def _check(rows, keys, version=0.0):
    present, ts, cols = rows[VIEW.name]
    want = np.array([k != 13 for k in keys])
    np.testing.assert_array_equal(present, want)
    assert cols["vec"].dtype == np.float32 and cols["vec"].shape == (len(keys), 3)
    for n, k in enumerate(keys):
        if k == 13:
            assert np.isnan(cols["vec"][n]).all() and np.isnan(cols["pop"][n]) and cols["count"][1][n]
            assert cols["genre"][n] is None and cols["tags"][n] is None
        else:
            assert cols["vec"][n].tolist() == [k + version] * 3
            assert cols["pop"][n] == np.float32(k / 10) and cols["count"][0][n] == k and not cols["count"][1][n]
            assert cols["genre"][n] == f"g{k}" and cols["tags"][n] == [k]


def test_rows_in_request_order_and_each_item_read_once():
    store, cache = Store(), ItemRowCache([VIEW], capacity=100)
    _check(cache.rows([5, 3, 13, 5], b"s1", store.read), [5, 3, 13, 5])
    assert store.calls == [[5, 3, 13]]                     # distinct keys, once
    _check(cache.rows([3, 7, 5], b"s1", store.read), [3, 7, 5])
    assert store.calls[1:] == [[7]]                       # only the new item
    _check(cache.rows([7, 3], b"s1", store.read), [7, 3])
    assert len(store.calls) == 2 and len(cache) == 4
    assert (cache.hits, cache.misses) == (1 + 2 + 2, 3 + 1)


def test_a_new_load_sentinel_starts_over():
    store, cache = Store(), ItemRowCache([VIEW], capacity=100)
    cache.rows([1, 2], b"s1", store.read)
    store.version = 0.5                                    # a load rewrote the items...
    _check(cache.rows([1, 2], b"s1", store.read), [1, 2])  # ...unseen until its sentinel arrives
    _check(cache.rows([1, 2], b"s2", store.read), [1, 2], version=0.5)
    assert store.calls == [[1, 2], [1, 2]]
    cache.rows([1, 2], None, store.read)                   # the sentinel gone (FLUSHDB): start over too
    assert len(store.calls) == 3


def test_age_limit_and_capacity():
    store, cache = Store(), ItemRowCache([VIEW], capacity=3, max_age_s=0.2)
    cache.rows([1, 2, 3], b"s", store.read)
    _check(cache.rows([4], b"s", store.read), [4])         # full: starts over with the request's items
    assert store.calls[-1] == [4] and len(cache) == 1
    _check(cache.rows([1, 2, 3, 4, 5], b"s", store.read), [1, 2, 3, 4, 5])   # more than it holds: read through
    assert store.calls[-1] == [1, 2, 3, 4, 5] and len(cache) == 1
    time.sleep(0.25)
    store.version = 1.0
    _check(cache.rows([4], b"s", store.read), [4], version=1.0)
    assert store.calls[-1] == [4]


def test_rows_returned_are_copies():
    store, cache = Store(), ItemRowCache([VIEW], capacity=10)
    rows = cache.rows([1, 2], b"s", store.read)
    rows[VIEW.name][2]["vec"][:] = -1
    _check(cache.rows([1, 2], b"s", store.read), [1, 2])


def test_a_failed_read_caches_nothing():
    cache = ItemRowCache([VIEW], capacity=10)

    def broken(keys):
        raise OSError("store down")

    with pytest.raises(OSError):
        cache.rows([1], b"s", broken)
    store = Store()
    _check(cache.rows([1], b"s", store.read), [1])
    assert store.calls == [[1]]


def test_capacity_and_max_age_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ItemRowCache([VIEW], capacity=0)
    for age in (0, -1, float("nan")):   # `recfeast serve --item-cache-age nan` passes click's FloatRange
        with pytest.raises(ValueError, match="seconds > 0"):
            ItemRowCache([VIEW], max_age_s=age)


def test_a_request_larger_than_a_cache_holding_some_of_its_items_reads_through():
    """5 of 11 distinct items cached in a cache of 10: the 6 missing fit, all 11 do not; the
    request is read through (once, every item) instead of overfilling the emptied cache."""
    store, cache = Store(), ItemRowCache([VIEW], capacity=10)
    cache.rows([1, 2, 3, 4, 5], b"s", store.read)
    keys = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 6]
    _check(cache.rows(keys, b"s", store.read), keys)
    assert store.calls[-1] == list(range(1, 12)) and len(cache) <= 10
    _check(cache.rows([6, 7], b"s", store.read), [6, 7])   # the cache still serves afterwards


def test_a_vector_none_of_the_requested_items_has_is_zero_wide_as_uncached():
    """decode_vectors gives ``(m, 0)`` for a read without any vector (item 13 has none): the cache
    answers the same once it holds the 3-wide vectors of other items, and still 3 wide for a mix."""
    store, cache = Store(), ItemRowCache([VIEW], capacity=10)
    cache.rows([1, 2], b"s", store.read)
    present, _, cols = cache.rows([13, 13], b"s", store.read)[VIEW.name]
    assert not present.any() and cols["vec"].shape == (2, 0) and cols["vec"].dtype == np.float32
    _check(cache.rows([13, 1], b"s", store.read), [13, 1])


def test_recfeast_serve_refuses_a_nan_cache_age():
    from click.testing import CliRunner

    from recfeast.cli import main

    r = CliRunner().invoke(main, ["serve", "--item-cache-age", "nan"])
    assert r.exit_code == 2 and "--item-cache-age': expected a number, not nan" in r.output


def test_metrics_and_info_read_the_cache_counters():
    from recfeast.serving.metrics import Metrics

    store, cache = Store(), ItemRowCache([VIEW], capacity=10, max_age_s=30)
    cache.rows([1, 2, 3], b"s", store.read)
    cache.rows([2, 3, 4], b"s", store.read)
    info = cache.info()
    assert {k: info[k] for k in ("items", "capacity", "max_age_s", "hits", "misses", "resets")} == \
        {"items": 4, "capacity": 10, "max_age_s": 30.0, "hits": 2, "misses": 4, "resets": 0}
    cache.rows([1], b"s2", store.read)                       # a new load: the 4 items dropped
    assert cache.info()["resets"] == 1 and len(cache) == 1
    metrics = Metrics()
    metrics.watch_item_cache(cache)
    text = metrics.render()[0].decode()
    assert 'recfeast_item_cache_lookups_total{result="hit"} 2.0' in text
    assert 'recfeast_item_cache_lookups_total{result="miss"} 5.0' in text
    assert "recfeast_item_cache_items 1.0" in text and "recfeast_item_cache_resets_total 1.0" in text
