"""Point-in-time correct by default: created_timestamp is when a value became available, the default
training set never holds a value created after its row, history stays visible; list features of
every form are written, joined and served on SQLite and Redis (or refused naming the column)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recfeast import io
from recfeast.errors import DataError
from recfeast.training.dataset import get_training_set
from tests.conftest import drop_online, unique_project

DEFS = '''
from datetime import timedelta
from pathlib import Path
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

T = Path(__file__).resolve().parent / "data"
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
def src(name):
    return FileSource(name=name + "_src", path=str(T / (name + ".parquet")), timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp")
user_score = FeatureView(name="user_score", entities=[user], ttl=timedelta(0), source=src("user_score"),
                         schema=[Field(name="user_id", dtype=Int64), Field(name="score", dtype=Int64)])
user_lists = FeatureView(name="user_lists", entities=[user], ttl=timedelta(0), source=src("user_lists"),
                         schema=[Field(name="user_id", dtype=Int64), Field(name="tags", dtype=Array(String)),
                                 Field(name="recent", dtype=Array(Int64)), Field(name="vec", dtype=Array(Float32))])
user_only = FeatureService(name="user_only", features=[user_score, user_lists])
'''


def ts(s):
    return pd.Timestamp(s, tz="UTC")


def _scores(score_day3):
    return pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": [ts("2020-01-01"), ts("2020-01-03"), ts("2020-01-01")],
                         "score": [10, score_day3, 7]})


LISTS = pd.DataFrame({
    "user_id": [1, 2, 3], "event_timestamp": [ts("2020-01-01")] * 3,
    "tags": [["drama", "noir"], [], None], "recent": [[5, 6, 7], [], [9]],
    "vec": [np.array([1, 2], np.float32), np.array([3, 4], np.float32), None]})


def _write(tables, name, df, run_ts):
    return io.write_feature_table(df, tables / f"{name}.parquet", ["user_id", "event_timestamp"], ts(run_ts),
                                  vector_cols=("vec",) if "vec" in df else (), available="event_timestamp")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pitdef")
    tables = repo / "data"
    tables.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: pitdef\nregistry: data/registry.db\nprovider: local\noffline_store:\n  type: duckdb\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\nentity_key_serialization_version: 3\n")
    (repo / "feature_definitions.py").write_text(DEFS)
    first = _write(tables, "user_score", _scores(20), "2020-02-01")
    again = _write(tables, "user_score", _scores(20), "2020-02-15")          # a rerun: nothing changes
    fixed = _write(tables, "user_score", _scores(25), "2020-03-01")          # a late correction of day 3
    _write(tables, "user_lists", LISTS, "2020-02-01")
    return repo, (first, again, fixed)


def test_created_timestamp_is_availability_and_corrections_get_the_run_time(repo):
    path, (first, again, fixed) = repo[0] / "data" / "user_score.parquet", repo[1]
    assert (first["corrections"], again["unchanged"], fixed["corrections"]) == (0, 3, 1)
    t = pd.read_parquet(path).sort_values(["user_id", "event_timestamp"])
    assert t.created_timestamp.tolist() == [ts("2020-01-01"), ts("2020-03-01"), ts("2020-01-01")]
    assert t.score.tolist() == [10, 25, 7]
    assert pq.read_schema(path).metadata[io.CREATED_META] == b"available"


def test_version_change_is_not_a_correction_and_old_tables_are_restamped(tmp_path):
    path = tmp_path / "emb.parquet"
    df = pd.DataFrame({"item_id": [1, 2], "event_timestamp": [ts("2020-01-01"), ts("2020-01-05")],
                       "text_embedding": [np.ones(2, np.float32), np.zeros(2, np.float32)], "text_model": "m@1"})
    # a table of the old rule: created = run time
    io.write_feature_table(df, path, ["item_id", "event_timestamp"], ts("2024-01-01"), ("text_embedding",))
    assert pd.read_parquet(path).created_timestamp.eq(ts("2024-01-01")).all()
    io.write_feature_table(df, path, ["item_id", "event_timestamp"], ts("2024-02-01"), ("text_embedding",),
                           available="event_timestamp", version_cols=["text_model"])
    assert pd.read_parquet(path).created_timestamp.tolist() == [ts("2020-01-01"), ts("2020-01-05")]
    new = df.assign(text_model="m@2", text_embedding=[np.full(2, 3, np.float32)] * 2)   # a promoted model
    info = io.write_feature_table(new, path, ["item_id", "event_timestamp"], ts("2024-03-01"), ("text_embedding",),
                                  available="event_timestamp", version_cols=["text_model"])
    assert info["corrections"] == 0
    assert pd.read_parquet(path).created_timestamp.tolist() == [ts("2020-01-01"), ts("2020-01-05")]


@pytest.fixture(scope="module")
def fs(repo):
    from recfeast.store import feature_store, load_definitions

    store = feature_store(repo[0], "sqlite")
    store.apply(load_definitions(repo[0]))
    return store


def test_late_correction_is_not_joined_by_default(fs):
    entity = pd.DataFrame({"user_id": [1, 1, 1, 2], "event_timestamp": [ts("2020-01-02"), ts("2020-01-04"),
                                                                         ts("2020-03-05"), ts("2020-01-04")]})
    safe, info = get_training_set(fs, entity, ["user_score:score"])
    # 01-04: the corrected day-3 value exists only since 03-01: the day-1 value (history) is what was known
    assert safe.score.tolist() == [10, 10, 25, 7] and info.reproducible
    leaky, _ = get_training_set(fs, entity, ["user_score:score"], allow_values_created_later=True)
    assert leaky.score.tolist() == [10, 25, 25, 7]


def test_lists_of_every_form_are_joined(fs):
    entity = pd.DataFrame({"user_id": [1, 2, 3, 4], "event_timestamp": [ts("2020-01-02")] * 4})
    out, _ = get_training_set(fs, entity, ["user_lists:tags", "user_lists:recent", "user_lists:vec"])
    assert out.tags.tolist()[:3] == [["drama", "noir"], [], None] and out.tags.iat[3] is None
    assert [None if v is None else v.tolist() for v in out.recent] == [[5, 6, 7], [], [9], None]
    vec, present = io.vector_view(out.vec)   # a float32 (n, 2) buffer; users 3 (None) and 4 (no row): null
    assert vec.dtype == np.float32 and vec.tolist() == [[1, 2], [3, 4], [0, 0], [0, 0]]
    assert present.tolist() == [True, True, False, False] and out.vec.isna().tolist() == [False, False, True, True]


@pytest.mark.parametrize("col, value, message", [
    ("tags", ["drama", None], r"column 'tags', row 0: a None inside a list"),
    ("recent", [5, None], r"column 'recent', row 0: a None inside a list"),
    ("vec", np.array([1, 2, 3], np.float32), r"column 'vec', row 1: vector of length 2, earlier rows have 3"),
    ("vec", ["a", "b"], r"column 'vec', row 0: vector holding non-numbers"),
    ("tags", "drama", r"column 'tags', row 0: str value 'drama' in a list column"),
])
def test_lists_feast_cannot_store_are_refused_naming_the_column(tmp_path, col, value, message):
    df = LISTS.copy()
    df[col] = pd.Series([value, *df[col].iloc[1:]], dtype=object)
    with pytest.raises(DataError, match=message):
        _write(tmp_path, "user_lists", df, "2020-02-01")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_user_only_service_with_lists_is_served(repo, kind):
    """A service whose views are all user-keyed (no item fields to read) works on both stores, lists included."""
    from recfeast import store
    from recfeast.serving.sdk import OnlineFeatureClient

    project = unique_project()
    online = store.feature_store(repo[0], kind, project)
    store.apply(online)
    store.materialize(online, quiet=True)
    try:
        client = OnlineFeatureClient(repo[0], kind, "user_only", project=project)
        out = {}
        for user in (1, 2, 3):
            feats = client.get_features(user, [100, 200], 1_600_000_000)
            out[user] = feats.to_json()["items"][0]
            assert len(feats) == 2
        assert {k: out[1][k] for k in ("score", "tags", "recent")} == {"score": 25, "tags": ["drama", "noir"],
                                                                      "recent": [5, 6, 7]}
        assert out[1]["vec"] == [1.0, 2.0]
        assert (out[2]["tags"], out[2]["recent"]) == ([], [])
        assert out[3]["tags"] is None and out[3]["recent"] == [9]
    finally:
        if kind == "redis":
            drop_online(online)
