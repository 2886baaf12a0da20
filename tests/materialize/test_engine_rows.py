"""What one partition of the Ray engine's online load writes (no Ray, no model): the latest row per
entity by (event_timestamp, created_timestamp) inside the load window, entity k in partition k mod P."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfeast.materialize.engine import _latest_rows


def _ts(s):
    return pd.Timestamp(s, tz="UTC")


def test_latest_rows_per_partition(tmp_path):
    rows = [  # item_id, event time, created time, value
        (1, "2020-01-01", "2020-01-05", 1.0),
        (1, "2020-01-02", "2020-01-03", 2.0),   # latest event time wins over a later created time
        (2, "2020-01-02", "2020-01-03", 3.0),
        (2, "2020-01-02", "2020-01-04", 4.0),   # same event time: the newer created time wins
        (3, "2020-01-01", "2020-01-01", 5.0),
        (3, "2030-01-01", "2030-01-01", 6.0),   # after the window's end: not loaded
        (4, "2019-12-31", "2019-12-31", 7.0),   # before the window's start: not loaded
        (5, "2020-01-03", "2020-01-03", 8.0),   # exactly at the window's end: loaded
    ]
    df = pd.DataFrame(rows, columns=["item_id", "event_timestamp", "created_timestamp", "x"])
    for c in ("event_timestamp", "created_timestamp"):
        df[c] = pd.to_datetime(df[c], utc=True)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    start, end = _ts("2020-01-01"), _ts("2020-01-03")

    def got(part, parts):
        t = _latest_rows(str(path), "item_id", ["x"], part, parts, start, end).to_pandas()
        return dict(zip(t.item_id, t.x))

    assert got(0, 1) == {1: 2.0, 2: 4.0, 3: 5.0, 5: 8.0}
    assert got(0, 2) == {2: 4.0}
    assert got(1, 2) == {1: 2.0, 3: 5.0, 5: 8.0}
    assert got(0, 7) == {}
