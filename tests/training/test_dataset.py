"""Point-in-time guarantees on small hand-made tables whose right answer is known."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfeast import io
from recfeast.errors import DataError, StoreError
from recfeast.training.dataset import get_training_set, load_training_set, save_training_set

pytestmark = pytest.mark.slow   # Feast apply and point-in-time joins

DEFS = '''
from datetime import timedelta
from pathlib import Path
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

T = Path(__file__).resolve().parent / "data"
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
score_src = FileSource(name="score_src", path=str(T / "score.parquet"), timestamp_field="event_timestamp",
                       created_timestamp_column="created_timestamp")
vec_src = FileSource(name="vec_src", path=str(T / "vec.parquet"), timestamp_field="event_timestamp",
                     created_timestamp_column="created_timestamp")
user_score = FeatureView(name="user_score", entities=[user], ttl=timedelta(days=2), source=score_src,
                         schema=[Field(name="user_id", dtype=Int64), Field(name="score", dtype=Int64)])
item_vec = FeatureView(name="item_vec", entities=[item], ttl=timedelta(0), source=vec_src,
                       schema=[Field(name="item_id", dtype=Int64), Field(name="vec", dtype=Array(Float32)),
                               Field(name="vec_model", dtype=String)])
svc = FeatureService(name="svc", features=[user_score, item_vec])
'''


def ts(s):
    return pd.Timestamp(s, tz="UTC")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from recfeast.store import feature_store, load_definitions

    repo = tmp_path_factory.mktemp("pit")
    (repo / "data").mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: pit\nregistry: data/registry.db\nprovider: local\noffline_store:\n  type: duckdb\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\nentity_key_serialization_version: 3\n")
    (repo / "feature_definitions.py").write_text(DEFS)
    # user 1: score 10 written at day 1; score 20 at day 3, written late at day 10 (a backfill);
    # two rows at day 5 with different created times: the later-created (50) wins.
    pd.DataFrame({
        "user_id": [1, 1, 1, 1, 2],
        "event_timestamp": [ts("2020-01-01"), ts("2020-01-03"), ts("2020-01-05"), ts("2020-01-05"), ts("2020-01-01")],
        "created_timestamp": [ts("2020-01-01"), ts("2020-01-10"), ts("2020-01-05"), ts("2020-01-06"), ts("2020-01-01")],
        "score": [10, 20, 40, 50, 7],
    }).to_parquet(repo / "data" / "score.parquet")
    pd.DataFrame({
        "item_id": [100, 200], "event_timestamp": [ts("2020-01-01"), ts("2020-01-04")],
        "created_timestamp": [ts("2020-01-01"), ts("2020-01-04")],
        "vec": [np.array([1, 2], np.float32), np.array([3, 4], np.float32)], "vec_model": ["m@1", "m@2"],
    }).to_parquet(repo / "data" / "vec.parquet")
    fs = feature_store(repo, "sqlite")
    fs.apply(load_definitions(repo))
    return fs


def test_every_row_once_in_order_with_shared_user_and_time(store):
    # one user, many candidates at one moment (the recommendation shape), shuffled, with repeats
    items = [200, 100, 200, 100, 100, 200, 999]
    entity = pd.DataFrame({"user_id": 1, "item_id": items, "event_timestamp": ts("2020-01-04 12:00"),
                           "label": [1, 0, 0, 1, 0, 1, 0]})
    entity = pd.concat([entity, pd.DataFrame({"user_id": [2, 3], "item_id": [100, 100],
                                              "event_timestamp": [ts("2020-01-02"), ts("2020-01-02")],
                                              "label": [1, 1]})], ignore_index=True)
    # event-time semantics: the day-3 value was created late (day 10); see the default test below
    out, info = get_training_set(store, entity, "svc", allow_mixed_models=True, allow_values_created_later=True)
    assert len(out) == len(entity) == info.rows
    assert out.item_id.tolist() == entity.item_id.tolist() and out.label.tolist() == entity.label.tolist()
    assert out.user_id.tolist() == entity.user_id.tolist()
    assert out.score.tolist()[:7] == [20] * 7  # day-3 value, visible on day 4 in event time
    # vectors: each distinct one stored once in a float32 table, rows point at it; no Python object per row
    assert io.vector_width(out.vec) == 2 and info.vectors == {"vec": 2}
    table, rows = io.vector_rows(out.vec)
    assert table.dtype == np.float32 and sorted(table.tolist()) == [[1, 2], [3, 4]]
    assert rows.tolist()[6] == -1 and table[rows[:3]].tolist() == [[3, 4], [1, 2], [3, 4]]
    vec, present = io.vector_view(out.vec)
    assert vec.dtype == np.float32 and vec.shape == (9, 2)
    assert vec[:3].tolist() == [[3, 4], [1, 2], [3, 4]]
    assert out.vec.isna().iat[6] and not present[6] and vec[6].tolist() == [0, 0]  # unknown item: null, row kept
    assert out.vec_model.isna().iat[6] and present.tolist() == [True] * 6 + [False, True, True]
    assert out.score.iat[7] == 7 and pd.isna(out.score.iat[8])  # user 3 has no value: null, kept
    # in chunks of 2 rows (5 joins), the same rows in the same order, with the same values
    done = []
    chunked, cinfo = get_training_set(store, entity, "svc", allow_mixed_models=True, allow_values_created_later=True,
                                      chunk_rows=2, progress=lambda i, n: done.append((i, n)))
    assert done == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)] and cinfo.rows == 9
    pd.testing.assert_frame_equal(chunked, out)
    assert io.vector_view(chunked.vec)[0].tolist() == vec.tolist()


def test_never_later_than_row_and_ttl_gives_null(store):
    entity = pd.DataFrame({"user_id": 1, "item_id": 100,
                           "event_timestamp": [ts("2019-12-31"), ts("2020-01-01"), ts("2020-01-02 23:59"),
                                               ts("2020-01-03"), ts("2020-01-05"), ts("2020-01-08")]})
    out, _ = get_training_set(store, entity, ["user_score:score"], allow_values_created_later=True)
    s = out.score.astype("Float64").tolist()
    # before any value: null; exactly at 01-01: 10; 01-03: 20 (event time); 01-05 dup -> latest created 50;
    # 01-08 is 3 days after the last value, beyond the 2-day ttl: null, row kept
    assert s[0] is pd.NA and s[1:5] == [10, 10, 20, 50] and s[5] is pd.NA
    assert len(out) == 6


def test_values_created_later_are_hidden_by_default(store):
    entity = pd.DataFrame({"user_id": 1, "item_id": 100,
                           "event_timestamp": [ts("2020-01-04"), ts("2020-01-05 12:00"), ts("2020-01-10 12:00")]})
    leaky, leaky_info = get_training_set(store, entity, ["user_score:score"], allow_values_created_later=True)
    safe, info = get_training_set(store, entity, ["user_score:score"])
    assert leaky.score.tolist()[:2] == [20, 50] and not leaky_info.reproducible
    # on 01-04 the day-3 value did not exist yet (written 01-10) and the 01-01 value is past the
    # 2-day ttl: null; on 01-05 12:00 the 50 row (created 01-06) is hidden, the 40 row (created 01-05) shows
    assert pd.isna(safe.score.iat[0]) and safe.score.iat[1] == 40
    assert pd.isna(safe.score.iat[2]) and pd.isna(leaky.score.iat[2])  # 01-10 12:00: beyond ttl
    assert info.reproducible and info.allow_values_created_later is False


def test_provenance_and_parquet_roundtrip(store, tmp_path):
    entity = pd.DataFrame({"user_id": [1, 2, 1], "item_id": [100, 200, 999],
                           "event_timestamp": [ts("2020-01-04"), ts("2020-01-06"), ts("2020-01-06")],
                           "label": [1, 0, 0], "split": ["train", "test", "test"]})
    out, info = get_training_set(store, entity, "svc", allow_mixed_models=True)
    assert info.feature_service == "svc" and info.features == ["user_score:score", "item_vec:vec", "item_vec:vec_model"]
    assert info.model_ids == {"vec_model": ["m@1", "m@2"]}
    with pytest.raises(StoreError, match="mixes embedding spaces"):   # two versions of one encoder
        get_training_set(store, entity, "svc")
    assert info.rows == 3 and info.rows_by_split == {"train": 1, "test": 2} and info.positives == 1
    assert info.time_range == (str(ts("2020-01-04")), str(ts("2020-01-06")))
    save_training_set(out, info, tmp_path / "set.parquet")
    back, meta = load_training_set(tmp_path / "set.parquet")
    assert meta["features"] == info.features and meta["model_ids"] == info.model_ids and meta["vectors"] == {"vec": 2}
    assert pq.read_schema(tmp_path / "set.parquet").field("vec").type == pa.list_(pa.float32())
    assert back.vec.dtype == out.vec.dtype and list(back.columns) == list(out.columns)
    vec, present = io.vector_view(back.vec)   # the null row (item 999) survives the round trip
    assert vec.dtype == np.float32 and vec.tolist() == [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]
    assert present.tolist() == [True, True, False]
    pd.testing.assert_series_equal(back.score, out.score)
    assert back.label.tolist() == [1, 0, 0]
    assert (tmp_path / "set.parquet.json").is_file()
    # written a row group at a time (bounded memory), read back the same
    save_training_set(out, info, tmp_path / "groups.parquet", rows_per_group=2)
    assert pq.ParquetFile(tmp_path / "groups.parquet").num_row_groups == 2
    again, _ = load_training_set(tmp_path / "groups.parquet")
    pd.testing.assert_frame_equal(again.drop(columns="vec"), back.drop(columns="vec"))
    assert io.vector_view(again.vec)[0].tolist() == vec.tolist() and io.vector_view(again.vec)[1].tolist() == present.tolist()


def test_naive_timestamps_rejected(store):
    with pytest.raises(DataError, match="tz-aware"):
        get_training_set(store, pd.DataFrame({"user_id": [1], "item_id": [1],
                                              "event_timestamp": [pd.Timestamp("2020-01-01")]}), "svc")
