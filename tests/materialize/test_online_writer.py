"""The direct online writer leaves exactly what Feast's materialize leaves, on both stores.

Tables are generated from the repository's own feature views (every batch view, every feature, by
its declared type) with the awkward cases: several rows per entity, a same-time correction (newer
``created_timestamp``), a row dated in the future (not loaded), an entity dated before 1970, nulls
and NaN, negative and large ints, empty and non-ASCII strings, vectors with a null row. Project A
is loaded by Feast's materialize, project B by the direct writer; then the raw online rows (Redis
hashes, SQLite rows) are byte-equal, Feast's own ``get_online_features`` returns the same values
for every entity and feature, and so does recfeast's reader.
"""

import math
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast.value_type import ValueType as VT

from recfeast import codec, layout, store
from recfeast.materialize import online
from tests.conftest import drop_online, make_repo, unique_project

N_ENT = 40


def _values(vt, rng, n, dim):
    """n values of Feast type ``vt`` as an Arrow array, with the awkward cases mixed in."""
    if vt == VT.FLOAT or vt == VT.DOUBLE:
        v = rng.normal(size=n).astype(np.float32 if vt == VT.FLOAT else np.float64).tolist()
        v[0], v[1], v[2], v[3] = None, float("nan"), 0.0, -0.0
        return pa.array(v, pa.float32() if vt == VT.FLOAT else pa.float64())
    if vt == VT.INT64:
        v = rng.integers(-10, 10**6, n).tolist()
        v[0], v[1], v[2] = 0, -(2**63), 2**63 - 1
        return pa.array(v, pa.int64())
    if vt == VT.STRING:
        v = [f"s{i}" for i in rng.integers(0, 9, n)]
        v[0], v[1], v[2] = None, "", "çé 映画 🎬"
        return pa.array(v, pa.string())
    if vt == VT.FLOAT_LIST:
        v = [rng.normal(size=dim).astype(np.float32) for _ in range(n)]
        v = [x.tolist() for x in v]
        v[0] = None
        return pa.array(v, pa.list_(pa.float32()))
    if vt == VT.INT64_LIST:
        return pa.array([rng.integers(0, 100, 3).tolist() for _ in range(n)], pa.list_(pa.int64()))
    raise AssertionError(f"no generator for {vt}")


def _write_tables(fs, seed=0):
    """One table per batch view; returns ``{view: ids}``."""
    rng = np.random.default_rng(seed)
    base = datetime(1998, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    out = {}
    for fv in fs.list_feature_views():
        lay = layout.view_layout(fs.config, fv)
        ids = np.arange(1, N_ENT + 1, dtype=np.int64) * 7
        rows_id, ev, cr = [], [], []
        for k, e in enumerate(ids):
            n = 1 + k % 3
            for j in range(n):
                rows_id.append(e)
                ev.append(base + timedelta(days=j, microseconds=k))
                cr.append(base + timedelta(days=j + 1))
            if k % 5 == 0:  # same-time correction: same event time, newer created time
                rows_id.append(e)
                ev.append(ev[-1])
                cr.append(cr[-1] + timedelta(seconds=1))
            if k % 7 == 0:  # not yet valid: Feast's materialize stops at now
                rows_id.append(e)
                ev.append(datetime.now(timezone.utc) + timedelta(days=30))
                cr.append(cr[-1])
        rows_id.append(999_999)  # only row before 1970
        ev.append(datetime(1965, 5, 4, 3, 2, 1, 500, tzinfo=timezone.utc))
        cr.append(datetime(1965, 5, 4, tzinfo=timezone.utc))
        n = len(rows_id)
        order = rng.permutation(n)  # file order must not matter
        cols = {lay.join_key: pa.array(np.asarray(rows_id)[order]),
                "event_timestamp": pa.array([ev[i] for i in order], pa.timestamp("us", "UTC")),
                "created_timestamp": pa.array([cr[i] for i in order], pa.timestamp("us", "UTC"))}
        for f, vt in zip(lay.features, lay.value_types):
            cols[f] = _values(vt, rng, n, 8 + len(f) % 5)
        path = Path(fv.batch_source.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path, row_group_size=17)  # several row groups and batches
        out[fv.name] = sorted(set(rows_id))
    return out


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_direct_writer_matches_feast_materialize(tmp_path, kind, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    pa_, pb = unique_project(), unique_project()
    fa, fb = store.feature_store(repo, kind, pa_), store.feature_store(repo, kind, pb)
    store.apply(fa)
    store.apply(fb)
    ids = _write_tables(fa)
    monkeypatch.setattr(online, "CHUNK_ROWS", 16)  # many chunks, several pipelines in flight
    tables = repo / "data" / "tables"
    try:
        online.load(fa, tables, quiet=True, writer="feast")
        online.load(fb, tables, quiet=True, writer="direct")
        fvs = [fv for fv in fa.list_feature_views() if type(fv.stream_source).__name__ != "PushSource"]
        assert fvs
        for fv in fvs:
            la, lb = layout.view_layout(fa.config, fv), layout.view_layout(fb.config, fv)
            keys = layout.entity_keys(la.join_key, np.asarray(ids[fv.name] + [424242]), la.key_version)
            # 1. the raw online rows are byte-equal
            if kind == "redis":
                client = fa._get_provider().online_store._get_client(fa.config.online_store)
                for k in keys:
                    got = client.hgetall(layout.redis_key(k, pb))
                    want = client.hgetall(layout.redis_key(k, pa_))
                    assert got == want, (fv.name, k)
                    assert (not want) == k.endswith((424242).to_bytes(8, "little"))
            else:
                conn = fa._get_provider().online_store._get_conn(fa.config)
                q = "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM {} ORDER BY 1, 2"
                want = conn.execute(q.format(f'"{la.table}"')).fetchall()
                got = conn.execute(q.format(f'"{lb.table}"')).fetchall()
                assert len(want) == len(ids[fv.name]) * len(la.features)
                assert got == want, fv.name
            # 2. Feast's own reader gives the same values (vectors included)
            feats = [f"{fv.name}:{f}" for f in la.features]
            rows = [{la.join_key: int(i)} for i in ids[fv.name] + [424242]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                da = fa.get_online_features(features=feats, entity_rows=rows).to_dict()
                db = fb.get_online_features(features=feats, entity_rows=rows).to_dict()
            assert da.keys() == db.keys()
            for col in da:
                assert all(_same(x, y) for x, y in zip(da[col], db[col])), (fv.name, col)
            present = [v is not None for v in da[la.features[-1]]]
            assert sum(present) >= len(ids[fv.name]) - 1 and not present[-1]
        # 3. recfeast's reader (the serving path) gives the same bytes
        from recfeast.serving.reader import make_reader

        views, _ = layout.service_layout(fa, fa.list_feature_services()[0])
        want_ids = {v.join_key: ids[v.name] for v in views}
        ra = make_reader(fa).read(want_ids, views)
        rb = make_reader(fb).read(want_ids, views)
        for v in views:
            assert ra[v.name].present.all(), v.name
            np.testing.assert_array_equal(ra[v.name].present, rb[v.name].present)
            assert ra[v.name].values == rb[v.name].values, v.name
    finally:
        drop_online(fa)
        drop_online(fb)


def test_encoders_match_feast_bytes():
    """Each fast path gives Feast's bytes (python_values_to_proto_values + SerializeToString)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    rng = np.random.default_rng(1)
    cases = [(VT.FLOAT, _values(VT.FLOAT, rng, 50, 0)), (VT.DOUBLE, _values(VT.DOUBLE, rng, 50, 0)),
             (VT.FLOAT, pa.array(rng.normal(size=20))),  # float64 column declared Float32
             (VT.INT64, _values(VT.INT64, rng, 50, 0)), (VT.STRING, _values(VT.STRING, rng, 50, 0)),
             (VT.FLOAT_LIST, _values(VT.FLOAT_LIST, rng, 30, 384)),
             (VT.FLOAT_LIST, pa.array([[1.0, 2.0], [], None, [3.0]], pa.list_(pa.float64()))),
             (VT.FLOAT_LIST, pa.array([[]] * 3, pa.list_(pa.float32()))),
             (VT.INT64_LIST, _values(VT.INT64_LIST, rng, 10, 0)),
             (VT.INT64, pa.array([1, None, 3], pa.int64()))]
    for vt, arr in cases:
        protos = codec._feast_encode(arr, vt)
        got, texts = codec.encode_column(arr, vt, texts=True)
        assert got == [p.SerializeToString() for p in protos], (vt, arr.type)
        from feast.infra.online_stores.helpers import extract_text_and_num

        assert texts == [extract_text_and_num(p, False)[0] for p in protos], (vt, arr.type)
    us = np.array([0, 1, 999_999, 1_000_000, -1, -1_000_001, 893_300_000_123_456, -157_766_400_000_000])
    want = []
    for u in us.tolist():
        t = Timestamp()
        t.FromDatetime(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=u))
        want.append(t.SerializeToString())
    assert codec.encode_timestamps(us) == want


def test_entity_keys_match_feast():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 1682])
    want = [serialize_entity_key(EntityKey(join_keys=["item_id"], entity_values=[Value(int64_val=int(i))]), 3)
            for i in ids]
    assert layout.entity_keys("item_id", ids) == want


def test_writer_streams_in_chunks_and_reports_missing_columns(tmp_path):
    """Latest-row selection over chunks equals pandas' sort-and-take-last; a missing column is named."""
    path = tmp_path / "t.parquet"
    rng = np.random.default_rng(2)
    n = 1000
    t = pd.DataFrame({"k": rng.integers(0, 50, n),
                      "event_timestamp": pd.to_datetime(rng.integers(0, 5, n), unit="D", utc=True),
                      "created_timestamp": pd.to_datetime(rng.integers(0, 1000, n), unit="s", utc=True)})
    t["row"] = np.arange(n)
    t.to_parquet(path, row_group_size=64)
    mask = online._latest_mask(path, "k", "event_timestamp", "created_timestamp", 3 * 86_400_000_000)
    sub = t[t.event_timestamp <= pd.Timestamp(3, unit="D", tz="UTC")]
    want = sub.sort_values(["k", "event_timestamp", "created_timestamp", "row"]).groupby("k").tail(1).row
    assert sorted(np.flatnonzero(mask)) == sorted(want)
    got = [b.column(0).to_pylist() for b in online._chunks(path, ["row"], mask, 7)]
    assert all(len(c) <= 7 for c in got) and sorted(sum(got, [])) == sorted(want)


def test_writer_names_a_missing_column(tmp_path):
    from recfeast.errors import StoreError

    repo = make_repo(tmp_path / "repo")
    fs = store.feature_store(repo, "sqlite", unique_project())
    store.apply(fs)
    fv = fs.list_feature_views()[0]
    lay = layout.view_layout(fs.config, fv)
    (repo / "data" / "tables").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({lay.join_key: [1], "event_timestamp": pa.array([datetime.now(timezone.utc)])}),
                   fv.batch_source.path)
    with pytest.raises(StoreError, match=rf"needs columns .*{lay.features[0]}"):
        online.write_view(fs, fv)
