"""`recfeast ingest` with the online store down: every valid event is logged, the run goes on, and
the report says which batches were pushed and which wait for the next load."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast import store
from recfeast.cli import main
from recfeast.eventlog import EventLog, log_path
from tests.conftest import make_repo, unique_project
from tests.redis_server import RestartableRedis

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("redis_fails_fast")]   # a down store on purpose

T0 = 1_700_000_000
PORT, DEAD_PORT = 18203, 18204


@pytest.fixture()
def repo(small_run, tmp_path):
    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    store.apply(store.feature_store(repo, "sqlite", project))
    items = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").item_id.tolist()
    return repo, project, items


def _events(items, users=(901, 902, 903)):
    return [{"user_id": u, "item_id": items[k], "action": "click", "event_timestamp": T0 + k}
            for u in users for k in range(2)]


def test_cli_goes_on_and_reports_waiting_batches(repo, monkeypatch):
    repo, project, items = repo
    monkeypatch.setenv("RECFEAST_PROJECT", project)
    monkeypatch.setenv("REDIS_CONNECTION_STRING", f"127.0.0.1:{DEAD_PORT}")   # nothing listens there
    lines = [json.dumps(e) for e in _events(items)] + ["{not json"]
    res = CliRunner().invoke(main, ["ingest", "--repo-path", str(repo), "--online-store", "redis", "--batch-size", "2"],
                             input="\n".join(lines) + "\n")
    assert res.exit_code == 3, res.output
    out = json.loads(res.stdout)
    assert (out["accepted"], out["rejected"], out["users_updated"]) == (6, 1, 0)
    assert out["pushed"] == [] and out["waiting"] == ["lines 1-2", "lines 3-4", "lines 5-6"]
    assert out["waiting_users"] == 3 and "redis" in out["store_error"]
    assert "wait for the next load" in res.stderr and "Traceback" not in res.output
    log = EventLog(log_path(repo))
    try:
        assert log.count() == 6
    finally:
        log.close()


def test_store_lost_mid_run_then_back(repo, monkeypatch, tmp_path):
    from recfeast.materialize.ingest import Ingestor

    repo, project, items = repo
    monkeypatch.setenv("REDIS_CONNECTION_STRING", f"127.0.0.1:{PORT}")
    ev = _events(items)
    server = RestartableRedis(PORT, tmp_path)
    server.start()
    store.apply(store.feature_store(repo, "redis", project))
    ing = Ingestor(repo, "redis", project)
    errors = []

    def batches(restart_before_end):
        yield "b1", ev[0:2], None
        server.stop()                               # Redis goes away
        yield "b2", ev[2:4], None
        yield "b3", ev[4:6], None
        if restart_before_end:
            server.start()

    try:
        report = ing.ingest_batches(batches(False), on_store_error=errors.append)
        assert report["pushed"] == ["b1"] and report["waiting"] == ["b2", "b3"] and report["waiting_users"] == 2
        assert report["accepted"] == 6 and report["users_updated"] == 1 and len(errors) == 1
        assert ing.log.count() == 6
        # again with the store back before the end: the waiting users are pushed by the final retry
        server.start()
        report = ing.ingest_batches(batches(True))
        assert report["pushed"] == ["b1"] and report["pushed_at_end"] == ["b2", "b3"] and report["waiting"] == []
        # no new event: b1's user is re-pushed, b2's and b3's are pushed by the final retry
        assert report["duplicates"] == 6 and report["users_repushed"] == 1 and report["users_updated"] == 2
        online = ing.read_online([901, 902, 903]).set_index("user_id")
        # b1 went to the Redis that was stopped (no persistence): the next load (rebuild) restores it
        assert pd.isna(online.last_event_ts.loc[901]) and online.last_event_ts.loc[902] == T0 + 1
        assert ing.rebuild_online() == 3
        assert ing.read_online([901]).last_event_ts.iat[0] == T0 + 1
    finally:
        ing.close()
        server.stop()
