"""Inputs that once crashed or corrupted the job: each is quarantined, rejected with a clear error,
or handled, and the job finishes."""

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import ConfigError, DataError, ModelError
from recfeast.adapters import read_catalog
from recfeast.cleaning import clean, parse_int64
from recfeast.schema import Quarantine
from tests.conftest import plain_spec


def test_int64_ids_exact_and_bounded():
    vals = pd.Series(["9007199254740993", "1e30", "inf", "", None, "12", "-3", "4.0", "1.5", "x"], dtype=object)
    assert parse_int64(vals).tolist() == [9007199254740993, pd.NA, pd.NA, pd.NA, pd.NA, 12, -3, 4, pd.NA, pd.NA]
    assert parse_int64(pd.Series([1.0, np.inf, 2.5, 2**70 * 1.0])).tolist() == [1, pd.NA, pd.NA, pd.NA]


def _canonical(tmp_path, items, users, events):
    pd.DataFrame(items).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame(users).to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame(events).to_parquet(tmp_path / "events.parquet")
    return tmp_path


def test_timestamps_of_every_kind(tmp_path):
    naive = pd.Timestamp("1998-01-01 10:00")
    root = _canonical(tmp_path, {"item_id": [1, 2], "title": ["A", "B"], "image_path": [None, None]}, {"user_id": [1]},
                      {"user_id": [1, 1, 1], "item_id": [1, 2, 1], "value": [4.0, 5.0, 3.0],
                       "event_timestamp": [naive, pd.Timestamp("1998-01-02"), pd.NaT]})
    data = clean(read_catalog(root, plain_spec()))
    assert data.events.event_timestamp.tolist() == [pd.Timestamp("1998-01-01 10:00", tz="UTC"),
                                                    pd.Timestamp("1998-01-02", tz="UTC")]
    q = Quarantine()
    from recfeast.cleaning import clean_events

    ev = pd.DataFrame({"user_id": ["1"] * 4, "item_id": ["1"] * 4, "action": "rate", "value": ["4"] * 4,
                       "event_timestamp": ["1e20", "893000000000", "1998-03-01T12:00:00+02:00", "893000000"],
                       "source": ["e:1", "e:2", "e:3", "e:4"]})
    out = clean_events(ev, [1], [1], q, plain_spec())
    assert out.event_timestamp.tolist() == [pd.Timestamp("1998-03-01 10:00", tz="UTC"),
                                            pd.Timestamp(893000000, unit="s", tz="UTC")]
    assert [r["source"] for r in q.rows] == ["e:1", "e:2"]  # overflow and milliseconds: quarantined


def test_empty_and_undecodable_csv(tmp_path):
    (tmp_path / "items.csv").write_bytes(b"")
    (tmp_path / "users.csv").write_text("user_id\n1\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,value,event_timestamp\n")
    spec = plain_spec("items.csv", "users.csv", "events.csv")
    with pytest.raises(DataError, match="items.csv: empty file"):
        read_catalog(tmp_path, spec)
    (tmp_path / "items.csv").write_bytes("item_id,title,image_path\n1,Caf\xe9,\n".encode("latin-1"))
    with pytest.raises(DataError, match="items.csv: not utf-8"):
        read_catalog(tmp_path, spec)


@pytest.mark.slow   # builds a ResNet-18 (torchvision) to load the bad weights into
def test_bad_yaml_and_bad_weights(tmp_path):
    from recfeast.encoders import ImageEncoder
    from recfeast.store import repo_config

    (tmp_path / "feature_store.yaml").write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        repo_config(tmp_path, "sqlite")
    (tmp_path / "w.pth").write_bytes(b"not weights")
    with pytest.raises(ModelError, match="not resnet18 weights"):
        ImageEncoder("resnet18", weights_path=tmp_path / "w.pth")


@pytest.mark.slow
def test_job_on_minimal_canonical_input(tmp_path, data_dir):
    """Only required columns, no genres, a click event, a huge-claimed PNG, an item and a user without
    events, Parquet datetimes: the job finishes and loads everything it can."""
    from PIL import Image

    from recfeast.materialize.job import JobConfig, run
    from recfeast.serving.sdk import OnlineFeatureClient
    from tests.conftest import make_repo, unique_project, write_spec

    root = tmp_path / "in"
    root.mkdir()
    bomb = root / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb)  # ~400 MP: more than PIL's decompression-bomb limit
    _canonical(root, {"item_id": [1, 2, 3], "title": ["Alpha", "Beta", "Gamma"],
                      "image_path": [str(data_dir / "posters" / "1.jpg"), str(bomb), None]},
               {"user_id": [1, 2, 3]},
               {"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2], "action": ["rate", "rate", "rate", "click"],
                "value": [4.0, 2.0, 5.0, 1e9],
                "event_timestamp": pd.to_datetime(["1998-01-01", "1998-01-02", "1998-01-03", "1998-01-04"], utc=True)})
    repo, project = make_repo(tmp_path / "repo"), unique_project()
    write_spec(plain_spec(), repo)
    summary = run(JobConfig(data_dir=root, repo=repo, online_store="sqlite", project=project, progress=False))
    assert summary.quarantine["items/image_corrupt"] == 1
    tables = repo / "data" / "tables"
    content = pd.read_parquet(tables / "item_content.parquet")
    assert content.avg_rating.max() <= 5.0  # the click's value is not a rating
    assert not [c for c in content.columns if c.endswith("_flags")]  # no categorical field: no flag vectors
    f = OnlineFeatureClient(repo, "sqlite", project=project).get_features(3, [1, 2, 3])
    assert "user_profile" not in f.status.columns   # the spec declares no user field: no profile view
    assert f.status.item_text_embedding.tolist() == ["found"] * 3  # item 3 has no events nor date
    assert f.status.item_image_embedding.tolist() == ["found", "missing", "missing"]
