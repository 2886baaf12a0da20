"""Real-time ingestion: validation, the event log, pushed state on SQLite and Redis equal to the
batch recomputation (late, same-instant and repeated events), the CLI, the offline table, and the
restore after the online store lost its rows."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast.cli import main
from recfeast import store
from recfeast.materialize import online
from recfeast.eventlog import EventLog, log_path
from recfeast.materialize.ingest import Ingestor, InvalidRecord, validate
from recfeast.materialize.realtime import RealtimeConfig, complete_state, tail_state
from recfeast.materialize.replay import compare
from tests.conftest import drop_online, make_repo, unique_project

NOW = 1_800_000_000.0      # a fixed "now" for validation tests (2027-01-15)
T0 = 1_700_000_000         # 2023-11-14 22:13:20 UTC
MIN = 60


def test_validate_keeps_good_events_and_gives_reasons():
    known = {1, 50, 172}
    records = [
        {"user_id": 7, "item_id": 50, "action": "click", "event_timestamp": T0},                 # 0 ok, value 1
        {"user_id": "8", "item_id": "1.0", "action": "rate", "value": "4", "event_timestamp": "2023-11-14T22:13:20Z"},
        {"user_id": 7, "item_id": 50, "action": "click", "event_timestamp": T0},                 # 2 repeat of 0
        {"user_id": 7, "item_id": 999, "action": "click", "event_timestamp": T0},                # 3 unknown item
        {"user_id": 1.5, "item_id": 1, "action": "click", "event_timestamp": T0},                # 4 bad id
        {"user_id": 7, "item_id": 1, "action": "Click!", "event_timestamp": T0},                 # 5 bad action
        {"user_id": 7, "item_id": 1, "action": "rate", "event_timestamp": T0},                   # 6 rate w/o value
        {"user_id": 7, "item_id": 1, "action": "rate", "value": 9, "event_timestamp": T0},       # 7 out of scale
        {"user_id": 7, "item_id": 1, "action": "click", "event_timestamp": T0 * 1000},           # 8 milliseconds
        {"user_id": 7, "item_id": 1, "action": "click", "event_timestamp": NOW + 3600},          # 9 future
        {"user_id": 7, "item_id": 1, "action": "click", "event_timestamp": "yesterday"},         # 10 bad time
        {"user_id": 7, "item_id": 1},                                                            # 11 missing
        ["not", "an", "object"],                                                                 # 12
        InvalidRecord("not valid JSON (Expecting value at column 1)"),                           # 13
        {"user_id": 2**63, "item_id": 1, "action": "click", "event_timestamp": T0},              # 14 overflow
        {"user_id": 7, "item_id": 1, "action": "click", "value": "NaN", "event_timestamp": T0},  # 15 NaN
        {"user_id": "²", "item_id": 1, "action": "click", "event_timestamp": T0},                # 16 not ASCII
        {"user_id": "+-5", "item_id": 1, "action": "click", "event_timestamp": T0},              # 17 two signs
        {"user_id": 7, "item_id": 1, "action": "click", "event_timestamp": 10**400},             # 18 huge
        {"user_id": 7, "item_id": 1, "action": "click", "event_timestamp": "now"},               # 19 the clock
        {"user_id": 7, "item_id": 1, "action": "click\n", "event_timestamp": T0},                # 20 newline
        {"user_id": 7, "item_id": 1, "action": "click", "value": 10**400, "event_timestamp": T0},  # 21 huge value
        {"user_id": 9, "item_id": 1, "action": "click", "value": 0.0, "event_timestamp": T0},    # 22 ok
        {"user_id": 9, "item_id": 1, "action": "click", "value": -0.0, "event_timestamp": T0},   # 23 repeat of 22
    ]
    events, rejected, dups = validate(records, known, now_s=NOW)
    assert events["index"].tolist() == [0, 1, 22] and dups == 2
    assert events.dtypes.astype(str).tolist() == ["int64", "int64", "int64", "object", "float64", "int64"]
    assert events[["user_id", "item_id", "action", "value", "ts_us"]].values.tolist() == [
        [7, 50, "click", 1.0, T0 * 10**6], [8, 1, "rate", 4.0, T0 * 10**6], [9, 1, "click", 0.0, T0 * 10**6]]
    reasons = {r["index"]: r["reason"] for r in rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    for i, words in {3: "item_id=999", 4: "user_id=1.5", 5: "action='Click!'", 6: "needs a numeric value",
                     7: "rating 9 outside the scale [1, 5]", 8: "unparsable_timestamp", 9: "in the future",
                     10: "'yesterday'", 11: "item_id, action, event_timestamp", 12: "got list",
                     13: "not valid JSON", 14: "int64", 15: "not a finite number", 16: "user_id='²'",
                     17: "user_id='+-5'", 18: "unparsable_timestamp", 19: "'now'", 20: "action='click\\n'",
                     21: "not a number"}.items():
        assert words in reasons[i], (i, reasons[i])


def test_tail_state_needs_more_events_only_when_a_session_or_day_is_open():
    cfg = RealtimeConfig(last_n=3, seq_len=4, session_gap_s=30 * MIN)
    ts = np.array([T0 + 100 * MIN, T0 + 90 * MIN, T0 + 80 * MIN, T0 + 10 * MIN, T0], np.int64)[::1] * 10**6
    items = np.array([5, 4, 3, 2, 1], np.int64)
    assert tail_state(9, items[:3], ts[:3], cfg) is None            # session still open at the oldest event
    full = complete_state(9, items, ts, cfg)
    # T0 = 22:13 UTC: every event is on the same day; the session is the three events 80..100 min
    assert (full.last_item_ids, full.seq_item_ids) == ([5, 4, 3], [2, 3, 4, 5])
    assert (full.session_event_count, full.session_start_us, full.day_event_count) == (3, ts[2], 5)
    assert full.last_event_us == ts[0]


@pytest.fixture()
def ingest_repo(small_run, tmp_path):
    """A repository with the slice's tables, applied to a fresh project on SQLite and Redis."""
    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    stores = {kind: store.feature_store(repo, kind, project) for kind in ("sqlite", "redis")}
    store.apply(stores["sqlite"])
    yield repo, project
    for fs in stores.values():
        drop_online(fs)


def _items(repo):
    t = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet")
    return dict(zip(t.item_id, t.text_embedding)), t.item_id.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_pushed_state_is_exact_with_late_same_instant_and_repeated_events(ingest_repo, kind):
    repo, project = ingest_repo
    emb, ids = _items(repo)
    a, b, c, d, e = ids[:5]
    user = 424242  # a new user: not in the catalog's users table, which real-time ingestion accepts
    day2 = (T0 // 86400 + 1) * 86400 + 5 * MIN   # 00:05 UTC the next day
    ev = lambda item, ts: {"user_id": user, "item_id": item, "action": "view", "event_timestamp": ts}  # noqa: E731
    ing = Ingestor(repo, kind, project)
    assert ing.ingest([ev(a, T0), ev(b, T0 + 10 * MIN)]).accepted == 2
    assert ing.ingest([ev(d, day2)]).accepted == 1
    late = ing.ingest([ev(c, T0 + 50 * MIN)])       # arrives after d but happened before it
    same = ing.ingest([ev(e, day2)])                # same instant as d: Redis would skip it unprepared
    assert (late.accepted, same.accepted, same.users_updated) == (1, 1, 1)
    row = ing.read_online([user]).iloc[0]
    assert list(row.last_item_ids) == [e, d, c, b, a]
    assert (row.session_event_count, row.session_start_ts, row.day_event_count, row.last_event_ts) == (2, day2, 2, day2)
    expected = ing.encoder.encode([np.stack([emb[i] for i in (a, b, c, d, e)])])[0]
    np.testing.assert_allclose(np.asarray(row.realtime_sequence_embedding), expected, atol=1e-6)
    assert row.realtime_model == f"{ing.encoder.model_id}|{ing.items.model_id}"

    again = ing.ingest([ev(a, T0), ev(b, T0 + 10 * MIN), ev(c, T0 + 50 * MIN), ev(d, day2), ev(e, day2)])
    assert (again.accepted, again.duplicates, again.users_updated, again.users_repushed) == (0, 5, 0, 1)  # same state
    other = user + 1       # logged but never pushed (a push that failed): a resend repairs it
    assert ing.ingest([{**ev(a, T0), "user_id": other}], push=False).accepted == 1
    assert ing.read_online([other]).last_event_ts.iat[0] is None
    retry = ing.ingest([{**ev(a, T0), "user_id": other}])
    assert (retry.accepted, retry.duplicates, retry.users_updated, retry.users_repushed) == (0, 1, 0, 1)
    assert ing.read_online([other]).last_event_ts.iat[0] == T0
    assert ing.log.count() == 6
    mismatches, worst = compare(ing.read_online([user, other]), ing.batch_frame())
    assert mismatches == [] and worst <= 1e-5
    ing.close()


@pytest.mark.slow
def test_cli_ingest_jsonl_and_rejections(ingest_repo, monkeypatch):
    repo, project = ingest_repo
    monkeypatch.setenv("RECFEAST_PROJECT", project)
    _, ids = _items(repo)
    lines = [json.dumps({"user_id": 5, "item_id": ids[0], "action": "click", "event_timestamp": T0}),
             "{not json",
             "",
             json.dumps({"user_id": 5, "item_id": 987654, "action": "click", "event_timestamp": T0}),
             json.dumps({"user_id": 5, "item_id": ids[1], "action": "rate", "value": 5, "event_timestamp": T0 + 1})]
    out = CliRunner().invoke(main, ["ingest", "--repo-path", str(repo), "--online-store", "sqlite", "--batch-size", "2"],
                             input="\n".join(lines) + "\n")
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert (res["accepted"], res["duplicates"], res["rejected"], res["users_updated"]) == (2, 0, 2, 2)
    assert [r["line"] for r in res["first_rejections"]] == [2, 4]
    assert "not valid JSON" in res["first_rejections"][0]["reason"]
    assert "item_id=987654" in res["first_rejections"][1]["reason"]
    aside = [json.loads(x) for x in (log_path(repo).with_name("rejected.jsonl")).read_text().splitlines()]
    assert len(aside) == 2 and all("reason" in r and "rejected_at" in r for r in aside)
    assert [r["source"] for r in aside] == ["line 2", "line 4"] and aside[0]["event"] == "{not json"
    log = EventLog(log_path(repo))
    assert log.read()[["user_id", "item_id", "action", "value"]].values.tolist() == [
        [5, ids[0], "click", 1.0], [5, ids[1], "rate", 5.0]]
    log.close()


@pytest.mark.slow
def test_offline_table_from_the_log_and_restore_after_flush(ingest_repo, small_data):
    """The aggregates job writes the real-time table (a row per user and active day) from the event
    log; after the online store loses its rows, the load restores them equal to the batch values."""
    from recfeast.materialize.job import JobConfig, run

    repo, project = ingest_repo
    _, ids = _items(repo)
    ing = Ingestor(repo, "redis", project)
    day = 86400
    events = [{"user_id": u, "item_id": ids[(u + k) % len(ids)], "action": "click",
               "event_timestamp": T0 + k * day // 2 + u} for u in (1, 2, 3) for k in range(5)]
    assert ing.ingest(events).accepted == 15
    before = ing.read_online([1, 2, 3])
    run(JobConfig(data_dir=small_data[0], repo=repo, online_store="redis", project=project, progress=False,
                  parts=("aggregates",), materialize=False))
    table = pd.read_parquet(repo / "data" / "tables" / "user_realtime.parquet")
    days = {(e["user_id"], (e["event_timestamp"]) // day) for e in events}
    assert len(table) == len(days)
    last = table.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    for _, row in before.iterrows():
        assert list(last.loc[row.user_id, "last_item_ids"]) == list(row.last_item_ids)
        assert last.loc[row.user_id, "session_event_count"] == row.session_event_count
    fs = ing.store
    drop_online(fs)                                    # Redis restarted empty
    assert ing.read_online([1]).last_event_ts.iat[0] is None
    store.apply(fs)
    online.load(fs, repo / "data" / "tables", quiet=True)
    mismatches, _ = compare(ing.read_online([1, 2, 3]), ing.batch_frame())
    assert mismatches == []
    ing.close()


def test_compare_reports_users_missing_online():
    batch = pd.DataFrame({"user_id": [1, 2], "last_item_ids": [[5], [6]], "session_event_count": [1, 1],
                          "session_start_ts": [T0, T0], "day_event_count": [1, 1], "last_event_ts": [T0, T0],
                          "realtime_sequence_embedding": [np.zeros(3), np.zeros(3)], "realtime_model": ["m", "m"]})
    online = batch.copy().astype(object)
    for col in ("last_item_ids", "realtime_sequence_embedding", "realtime_model"):
        online.at[1, col] = None
    online["session_event_count"] = [1.0, np.nan]   # what pandas makes of a missing int
    mismatches, _ = compare(online, batch)
    assert {m["user_id"] for m in mismatches} == {2} and len(mismatches) == 4   # the four features set missing


def test_validate_follows_the_catalog_specs_event_types():
    """With the spec's types: undeclared types are refused, each type's value rules apply (scale, step,
    required), and implicit types need no value."""
    from recfeast.spec import parse_spec

    spec = parse_spec({"name": "s", "items": {"source": {"path": "i.csv"}},
                       "events": {"source": {"path": "e.csv"}, "types": {
                           "rate": {"kind": "rating", "value": {"scale": [0.5, 5], "step": 0.5}, "positive": {"min_value": 4}},
                           "purchase": {"kind": "purchase", "value": {"field": "price", "required": False},
                                        "positive": True}}}})
    recs = [{"user_id": 1, "item_id": 1, "action": "rate", "value": 3.5, "event_timestamp": T0},
            {"user_id": 1, "item_id": 1, "action": "rate", "value": 3.7, "event_timestamp": T0},
            {"user_id": 1, "item_id": 1, "action": "rate", "value": 0, "event_timestamp": T0},
            {"user_id": 1, "item_id": 1, "action": "rate", "event_timestamp": T0},
            {"user_id": 1, "item_id": 1, "action": "click", "event_timestamp": T0},
            {"user_id": 2, "item_id": 1, "action": "purchase", "event_timestamp": T0}]
    events, rejected, _ = validate(recs, {1}, now_s=NOW, event_types=spec.events.types)
    assert events[["user_id", "action", "value"]].values.tolist() == [[1, "rate", 3.5], [2, "purchase", 1.0]]
    assert [r["reason"].split(":")[0] for r in rejected] == [
        "value_off_step", "value_out_of_range", "missing_value", "unknown_event_type"]
    assert "expected one of ['purchase', 'rate']" in rejected[-1]["reason"]
