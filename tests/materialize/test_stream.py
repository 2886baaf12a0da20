"""The Redis Streams event log and its ingest workers (real Redis, db 15; real worker processes), and
freshness in event time (the record, thresholds, ``recfeast status``, ``/metrics``)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast import store
from recfeast.errors import ConfigError
from recfeast.eventlog import (COLUMNS, EventLog, RedisEventLog, event_log_url, logged_events, open_event_log)
from recfeast.freshness import VIS_BUCKETS, FreshnessRecord, parse_duration, report, thresholds
from tests.conftest import ROOT, drop_online, make_repo, unique_project

URL = os.environ.get("RECFEAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
T0 = 1_700_000_000


def _drop_keys(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(URL)
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        r.delete(*keys[start:start + 500])
    r.close()


@pytest.fixture()
def redis_log():
    prefix = f"recfeast:{unique_project()}"
    log = RedisEventLog(URL, prefix)
    yield log
    log.close()
    _drop_keys(prefix)


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "action", "value", "ts_us"]).astype(
        {"user_id": "int64", "item_id": "int64", "value": "float64", "ts_us": "int64"})


def test_redis_log_dedups_orders_and_reads_like_sqlite(redis_log, tmp_path):
    a = _frame([(7, 50, "click", 1.0, T0 * 10**6), (7, 51, "rate", 4.0, T0 * 10**6),   # same instant: seq breaks the tie
                (7, 52, "click", 1.0, (T0 - 60) * 10**6), (8, 50, "view", 1.0, T0 * 10**6),
                (7, 50, "click", 1.0, T0 * 10**6)])                                   # repeat within the call
    b = _frame([(8, 50, "view", 1.0, T0 * 10**6), (9, 1, "click", 0.5, (T0 + 1) * 10**6)])  # one resend, one new
    sql = EventLog(tmp_path / "events.sqlite")
    for log in (redis_log, sql):
        first, second = log.append(a), log.append(b)
        assert first["seq"].tolist() == [1, 2, 3, 4] and second["seq"].tolist() == [5]
        assert log.count() == 5
    # the same log either way (arrival times differ by construction)
    cols = [c for c in COLUMNS if c != "ingested_us"]
    pd.testing.assert_frame_equal(redis_log.read()[cols], sql.read()[cols])
    pd.testing.assert_frame_equal(redis_log.tails([7, 8, 404], 2), sql.tails([7, 8, 404], 2))
    assert redis_log.tails([7], 10)[["item_id", "seq"]].values.tolist() == [[51, 2], [50, 1], [52, 3]]
    assert redis_log.versions([7, 8, 9, 404]) == [3, 1, 1, 0]
    sql.close()
    # the batch jobs' reader gives the same frame from the stream
    repo = make_repo(tmp_path / "repo")
    got = logged_events(repo, ("seq", "user_id", "item_id", "ts_us"), url=URL, project=redis_log.prefix.split(":", 1)[1])
    assert got.values.tolist() == redis_log.read(("seq", "user_id", "item_id", "ts_us")).values.tolist()
    assert logged_events(repo, ("seq", "user_id"), url="sqlite").shape == (0, 2)   # no SQLite log yet


def test_consumer_group_claims_what_a_dead_consumer_left(redis_log):
    redis_log.append(_frame([(u, 1, "click", 1.0, (T0 + u) * 10**6) for u in range(10)]))
    redis_log.ensure_group()
    redis_log.ensure_group()   # idempotent
    got, claimed = redis_log.read_group("dead", 4, 0, 60_000)
    assert (len(got), claimed) == (4, False)
    assert redis_log.group_info()["pending"] == 4 and redis_log.group_info()["lag"] == 6
    rest, claimed = redis_log.read_group("alive", 100, 0, 60_000)      # not idle long enough: new entries only
    assert (len(rest), claimed) == (6, False)
    assert redis_log.ack([i for i, _ in rest]) == 6
    time.sleep(0.05)
    taken, claimed = redis_log.read_group("alive", 100, 0, 10)          # the dead consumer's 4, idle > 10 ms
    assert claimed and [i for i, _ in taken] == [i for i, _ in got]
    assert redis_log.ack([i for i, _ in taken]) == 4 and redis_log.ack([i for i, _ in taken]) == 0
    info = redis_log.group_info()
    assert (info["pending"], info["lag"], info["length"]) == (0, 0, 10)
    # per-user locks: one holder at a time, released only by its token
    assert redis_log.lock_many([1, 2], "w1", 5000) == [1, 2]
    assert redis_log.lock_many([2, 3], "w2", 5000) == [3]
    redis_log.unlock_many([2], "w2")                                     # not w2's: stays held
    assert redis_log.lock_many([2], "w2", 5000) == []
    redis_log.unlock_many([1, 2], "w1")
    assert redis_log.lock_many([2], "w2", 5000) == [2]
    redis_log.set_pushed({1: 3, 2: 5})
    redis_log.set_pushed({1: 2, 2: 6})                                   # only ever raised
    assert redis_log.pushed_versions([1, 2, 3]) == [3, 6, -1]


def test_event_log_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("RECFEAST_EVENT_LOG", raising=False)
    assert event_log_url() == "sqlite"
    monkeypatch.setenv("RECFEAST_EVENT_LOG", "redis://:hunter2@127.0.0.1:6379/15")
    assert event_log_url().startswith("redis://")
    with pytest.raises(ConfigError) as err:
        event_log_url("kafka://:hunter2@broker:9092")
    assert "hunter2" not in str(err.value) and "expected 'sqlite' or a Redis URL" in str(err.value)
    repo = make_repo(tmp_path / "repo")
    log = open_event_log(repo, URL, project="p1")
    assert log.prefix == "recfeast:p1" and "hunter2" not in open_event_log(repo).name
    log.close()


def test_freshness_thresholds_from_the_catalog_spec(tmp_path):
    assert thresholds(tmp_path) == {}                                    # no catalog.yaml: no thresholds
    (tmp_path / "catalog.yaml").write_text("entities: {}\n")
    assert thresholds(tmp_path) == {}
    (tmp_path / "catalog.yaml").write_text("freshness:\n  user_realtime: {max_lag: 90s}\n"
                                           "  item_text_embedding: {max_lag: '2h'}\n  user_behavior: {max_lag: 30}\n")
    assert thresholds(tmp_path) == {"user_realtime": 90.0, "item_text_embedding": 7200.0, "user_behavior": 30.0}
    (tmp_path / "catalog.yaml").write_text("freshness:\n  user_realtime: {max_lag: soon}\n")
    with pytest.raises(ConfigError, match=r"freshness.user_realtime.max_lag='soon'"):
        thresholds(tmp_path)
    assert [parse_duration(x) for x in ("15m", "1d", "1.5h", 0)] == [900.0, 86400.0, 5400.0, 0.0]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_freshness_record_on_both_stores(tmp_path, kind):
    repo = make_repo(tmp_path / "repo")
    _set_freshness(repo, {"user_realtime": {"max_lag": "1h"}, "item_content": {"max_lag": "1h"}})
    fs = store.feature_store(repo, kind, unique_project())
    rec = FreshnessRecord(fs)
    now = time.time()
    rec.record_load("item_content", int((now - 7200) * 1e6), 1682)
    rec.record_load("item_content", int((now - 9000) * 1e6), 1500)        # an older load: newest stays, rows replaced
    rec.record_load("user_realtime", int((now - 60) * 1e6), 3, pushed=True)
    rec.record_load("user_realtime", int((now - 30) * 1e6), 2, pushed=True)
    rec.observe_visibility("user_realtime", [0.004, 0.02, 0.3, 400.0])
    views = {v["view"]: v for v in report(fs, now_s=now)}
    assert views["item_content"]["rows"] == 1500 and views["item_content"]["state"] == "stale"
    assert 7199 <= views["item_content"]["lag_s"] <= 7201 and views["item_content"]["max_lag_s"] == 3600
    rt = views["user_realtime"]
    assert (rt["rows"], rt["state"]) == (5, "ok") and 29 <= rt["lag_s"] <= 31
    # a server replaying history (--as-of) measures lag on the events' clock, load age on the wall clock
    replay = {v["view"]: v for v in report(fs, now_s=now, event_now_s=now - 7000)}
    assert 199 <= replay["item_content"]["lag_s"] <= 201 and replay["item_content"]["state"] == "ok"
    assert replay["item_content"]["load_age_s"] == views["item_content"]["load_age_s"]
    vis = rt["visibility"]
    assert vis["count"] == 4 and abs(vis["sum_s"] - 400.324) < 1e-5
    assert dict(vis["buckets"]) == {b: sum(s <= b for s in (0.004, 0.02, 0.3, 400.0)) for b in VIS_BUCKETS}
    if kind == "redis":
        fs._get_provider().online_store._get_client(fs.config.online_store).delete(rec.key)


# ----------------------------------------------------------------------------------- with workers
@pytest.fixture()
def stream_repo(small_run, tmp_path):
    """The slice's tables in a fresh repo, applied to a fresh project, Redis online store, Redis log."""
    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    fs = store.feature_store(repo, "redis", project)
    store.apply(fs)
    yield repo, project, fs
    drop_online(fs)
    _drop_keys(f"recfeast:{project}")
    fs._get_provider().online_store._get_client(fs.config.online_store).delete(f"recfeast:{project}:freshness")


def _worker(repo, project, name, crash_at=None, batch=25):
    env = {**os.environ, "RECFEAST_PROJECT": project, "RECFEAST_EVENT_LOG": URL, "RECFEAST_ONLINE_STORE": "redis",
           "PYTHONPATH": str(ROOT)}
    env.pop("RECFEAST_CRASH_AT", None)
    if crash_at:
        env["RECFEAST_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-c", "from recfeast.cli import main; main()", "ingest-worker", "--repo-path", str(repo),
           "--consumer", name, "--batch", str(batch), "--block-ms", "200", "--min-idle-ms", "5000",
           "--lock-ttl-ms", "3000", "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_lose_and_double_count_nothing_when_one_is_killed(stream_repo, small_data):
    """A worker SIGKILLed mid-batch (after its push, before its XACK, holding its users' locks), two
    live workers on the same stream, resent events, and the replay check through the stream: every
    event is in the log once, every entry is acknowledged, online state == batch recomputation."""
    from recfeast.materialize.ingest import Ingestor
    from recfeast.materialize.replay import compare, replay_check
    from recfeast.materialize.stream import wait_drained

    repo, project, fs = stream_repo
    items = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").item_id.tolist()
    rng = np.random.default_rng(0)
    events = [{"user_id": 500_000 + int(rng.integers(30)), "item_id": int(rng.choice(items)), "action": "click",
               "event_timestamp": T0 + int(rng.integers(0, 3 * 86400))} for _ in range(400)]
    ing = Ingestor(repo, "redis", project, event_log=URL)
    assert ing.streamed
    first = ing.ingest(events[:100])
    assert (first.accepted, first.users_updated) == (100, 0)              # appended only: workers push

    dying = _worker(repo, project, "dying", crash_at="worker:after_push")
    assert dying.wait(timeout=600) == -signal.SIGKILL, dying.stderr.read()[-2000:]
    assert ing.log.group_info()["pending"] == 25                            # its batch: pushed, never acked

    live = [_worker(repo, project, "w1"), _worker(repo, project, "w2")]
    try:
        for start in range(100, 400, 50):                                  # more events while both run
            ing.ingest(events[start:start + 50])
            time.sleep(0.2)
        again = ing.ingest(events[:200])                                    # a resend: nothing new
        assert (again.accepted, again.duplicates) == (0, 200)
        report_ = replay_check(small_data[0], repo, "redis", project, days=30, batch_size=40, progress=False,
                               event_log=URL, drain_timeout_s=300)
        assert report_.ok, report_.mismatches[:5]
        assert report_.streamed > 0 and report_.backfilled > 0
        assert wait_drained(ing.log, 60)
    finally:
        for p in live:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in live]
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert all(p.returncode == 0 for p in live), [e[-2000:] for _, e in outs]

    distinct = len({(e["user_id"], e["item_id"], e["event_timestamp"]) for e in events})
    logged = ing.log.read()
    assert logged["event_id"].is_unique and len(logged) == distinct + report_.backfilled + report_.streamed
    synthetic = logged[logged.user_id >= 500_000]
    assert len(synthetic) == distinct
    assert ing.log.versions(sorted(synthetic.user_id.unique())) == synthetic.groupby("user_id").size().tolist()
    info = ing.log.group_info()
    assert (info["pending"], info["lag"]) == (0, 0)
    # the dead worker's 25 entries were taken over (and, on a loaded machine, maybe entries of a live
    # worker slower than --min-idle-ms: processed twice, harmless); every entry acknowledged once
    claimed, entries = sum(s["claimed"] for s in stats), sum(s["entries"] for s in stats)
    assert claimed >= 25 and entries - claimed == len(logged) - 25
    assert sum(s["acked"] for s in stats) == len(logged)
    users = sorted(logged.user_id.unique())
    mismatches, worst = compare(ing.read_online(users), ing.batch_frame())
    assert mismatches == [] and worst <= 1e-5
    # freshness: the pushes recorded the newest event time; every entry read fresh was observed
    rt = {v["view"]: v for v in report(fs)}["user_realtime"]
    assert rt["newest_event"] == pd.Timestamp(int(logged.ts_us.max()), unit="us", tz="UTC").isoformat()
    assert rt["visibility"]["count"] == len(logged) - 25
    ing.close()


@pytest.mark.slow
def test_status_and_metrics_show_event_time_lag_per_view(small_run, tmp_path):
    """The online load records per view the newest event time and rows it loaded; `recfeast status`
    and the /metrics collector show them, with the catalog's thresholds."""
    from recfeast.cli import main
    from recfeast.materialize import online
    from recfeast.serving.metrics import Metrics

    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    _set_freshness(repo, {"item_content": {"max_lag": "1d"}, "user_behavior": {"max_lag": "100000d"}})
    project = unique_project()
    fs = store.feature_store(repo, "sqlite", project)
    store.apply(fs)
    online.load(fs, repo / "data" / "tables", quiet=True)
    table = pd.read_parquet(repo / "data" / "tables" / "item_content.parquet", columns=["event_timestamp"])
    out = CliRunner().invoke(main, ["status", "--repo-path", str(repo), "--online-store", "sqlite", "--project", project,
                                    "--event-log", "sqlite", "--json"])
    assert out.exit_code == 0, out.output
    views = {v["view"]: v for v in json.loads(out.output)["views"]}
    assert views["item_content"]["rows"] == len(table)
    assert views["item_content"]["newest_event"] == pd.Timestamp(table.event_timestamp.max()).isoformat()
    assert views["item_content"]["state"] == "stale"                        # MovieLens ends in 1998
    assert views["user_behavior"]["state"] == "ok" and views["user_realtime"]["state"] == "never loaded"
    check = CliRunner().invoke(main, ["status", "--repo-path", str(repo), "--online-store", "sqlite", "--project",
                                      project, "--event-log", "sqlite", "--check"])
    assert check.exit_code == 1 and "item_content" in check.output and "stale" in check.output
    m = Metrics()
    m.watch_freshness(lambda: report(fs))
    text = m.render()[0].decode()
    assert 'recfeast_feature_stale{view="item_content"} 1.0' in text
    assert f'recfeast_feature_rows{{view="item_content"}} {float(len(table))}' in text
    lag = float(next(line.split()[-1] for line in text.splitlines()
                     if line.startswith('recfeast_feature_lag_seconds{view="item_content"}')))
    assert lag > (pd.Timestamp("2026-01-01", tz="UTC") - pd.Timestamp(table.event_timestamp.max())).total_seconds()


def _set_freshness(repo, freshness: dict) -> None:
    """Set the ``freshness:`` thresholds of the repository's catalog spec (the rest of the spec kept)."""
    import yaml

    path = repo / "catalog.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["freshness"] = freshness
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
