"""Scheduled jobs: run records, no overlap across processes, persistence, a clean stop on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from recfeast.cli import main
from recfeast.errors import ConfigError
from recfeast.materialize import schedule

pytestmark = pytest.mark.slow


@pytest.fixture()
def env_project(small_run, monkeypatch):
    repo, _, project = small_run
    monkeypatch.setenv("RECFEAST_PROJECT", project)
    return repo


def test_runs_are_recorded_ok_failed_and_skipped(env_project, small_data, tmp_path):
    repo = env_project
    ok = schedule.run_job("load_online", str(small_data[0]), str(repo), ("sqlite",))
    assert ok["status"] == "ok" and ok["job"] == "load_online" and ok["ended_at"] >= ok["started_at"]
    assert "cleared" in json.loads(ok["detail"])
    failed = schedule.run_job("aggregates", str(tmp_path / "nowhere"), str(repo))
    assert failed["status"] == "failed" and "ConfigError" in failed["detail"] and "nowhere" in failed["detail"]
    with schedule.job_lock(repo, "load_online") as held:  # another process is running it
        assert held
        skipped = schedule.run_job("load_online", str(small_data[0]), str(repo))
    assert skipped["status"] == "skipped" and "lock" in skipped["detail"]
    runs = schedule.recent_runs(repo, 3)
    assert [r["status"] for r in runs] == ["skipped", "failed", "ok"]
    out = CliRunner().invoke(main, ["jobs", "--repo-path", str(repo), "--limit", "3"])
    assert out.exit_code == 0 and out.output.count("load_online") == 2 and "failed" in out.output
    with pytest.raises(ConfigError, match="unknown job"):
        schedule.run_job("reindex", "x", str(repo))


def test_lock_excludes_another_process(env_project):
    repo = env_project
    code = ("import sys, time; from recfeast.materialize.schedule import job_lock\n"
            f"with job_lock({str(repo)!r}, 'tables') as held:\n    print(held, flush=True); time.sleep(3)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "True"
    with schedule.job_lock(repo, "tables") as held:
        assert held is False
    proc.wait(timeout=30)
    with schedule.job_lock(repo, "tables") as held:
        assert held is True


def test_schedule_persists_and_validates(env_project, small_data):
    repo = env_project
    cfg = schedule.ScheduleConfig(data_dir=str(small_data[0]), repo=str(repo),
                                  triggers={"embeddings": {"cron": "0 3 * * *"}, "aggregates": {"interval_minutes": 30},
                                            "load_online": {"interval_minutes": 5}})
    sched = schedule.build_scheduler(cfg, blocking=False)
    sched.start(paused=True)
    sched.shutdown(wait=False)
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    stored = SQLAlchemyJobStore(url=f"sqlite:///{schedule.state_dir(repo) / 'jobs.sqlite'}").get_all_jobs()
    assert sorted(j.id for j in stored) == ["aggregates", "embeddings", "load_online"]
    assert {j.id: str(j.trigger) for j in stored}["load_online"] == "interval[0:05:00]"
    for bad in ({"embeddings": {"cron": "61 * * * *"}}, {"aggregates": {"interval_minutes": 0}}, {"nightly": {"interval_minutes": 1}}):
        with pytest.raises(ConfigError):
            schedule.build_scheduler(schedule.ScheduleConfig(data_dir="x", repo=str(repo), triggers=bad), blocking=False)


def test_sigterm_stops_within_seconds_and_records_every_run(env_project, small_data):
    """SIGTERM while one job runs and two wait for the tables lock: the process exits promptly (a
    hang guard of 120 s, not a timing claim), without a traceback; the running run is recorded
    `interrupted` (or `ok` if it ended within the grace), the waiting ones `cancelled`; their start
    time is when they took the lock."""
    repo = env_project
    before = {r["id"] for r in schedule.recent_runs(repo, 1000)}
    cmd = [str(Path(sys.executable).parent / "recfeast"), "schedule", "--data-dir", str(small_data[0]),
           "--repo-path", str(repo), "--embeddings-every", "0 3 1 1 *", "--aggregates-every", "0 3 1 1 *",
           "--load-every", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))

    def new_runs():
        return [r for r in schedule.recent_runs(repo, 1000) if r["id"] not in before]

    deadline = time.time() + 180
    while time.time() < deadline and sorted(r["status"] for r in new_runs()) != ["running", "waiting", "waiting"]:
        time.sleep(0.2)   # the three jobs start at once and wait for each other on the tables lock
    states = new_runs()
    assert sorted(r["status"] for r in states) == ["running", "waiting", "waiting"], states
    listing = CliRunner().invoke(main, ["jobs", "--repo-path", str(repo), "--limit", "3"]).output
    assert listing.count("waiting") == 2 and listing.count("running") == 1, listing
    running = next(r for r in states if r["status"] == "running")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "received signal 15: stopping" in out and "stopped:" in out, out
    assert "Traceback" not in out and "RuntimeError" not in out, out
    runs = {r["id"]: r for r in new_runs()}
    assert {r["job"] for r in runs.values()} == {"embeddings", "aggregates", "load_online"}
    assert runs[running["id"]]["status"] in ("interrupted", "ok"), runs
    assert runs[running["id"]]["started_at"] == running["started_at"]
    waiting = [r for i, r in runs.items() if i != running["id"]]
    assert all(r["status"] == "cancelled" and r["ended_at"] for r in waiting), runs
    if runs[running["id"]]["status"] == "interrupted":
        assert "stopped by a signal" in runs[running["id"]]["detail"]
    for job in ("tables", "embeddings", "aggregates", "load_online"):    # nothing stays locked
        with schedule.job_lock(repo, job) as held:
            assert held


@pytest.mark.usefixtures("redis_fails_fast")
def test_redis_down_retries_then_fails_visibly_and_next_run_catches_up(env_project, small_data, monkeypatch):
    repo = env_project
    tables = repo / "data" / "tables"
    from recfeast.materialize import online

    online.add_pending(tables, "item_content", [1], kinds=("redis",))
    monkeypatch.setattr(schedule, "LOAD_BACKOFF_MIN_S", 0.1)
    monkeypatch.setattr(schedule, "LOAD_BACKOFF_MAX_S", 0.2)
    monkeypatch.setenv("REDIS_CONNECTION_STRING", "127.0.0.1:1")  # nothing listens there
    calls = []
    real_load = online.load

    def counting_load(*a, **k):
        calls.append(1)
        return real_load(*a, **k)

    monkeypatch.setattr(online, "load", counting_load)
    failed = schedule.run_job("load_online", str(small_data[0]), str(repo), ("redis",))
    assert failed["status"] == "failed" and "StoreError" in failed["detail"]
    assert len(calls) == schedule.LOAD_ATTEMPTS
    assert online.load_pending(tables)["redis"]["item_content"] == [1]  # nothing forgotten
    monkeypatch.setenv("REDIS_CONNECTION_STRING", "127.0.0.1:6379,db=15")
    from recfeast import store
    from tests.conftest import drop_online

    fs = store.feature_store(repo, "redis")
    try:
        store.apply(fs)
        ok = schedule.run_job("load_online", str(small_data[0]), str(repo), ("redis",))
        assert ok["status"] == "ok" and "redis" not in online.load_pending(tables)
    finally:
        drop_online(fs)


def test_killed_scheduler_restarts_and_its_run_is_marked_interrupted(env_project, small_data):
    """SIGKILL mid-run: no lock stays held, the dead run is closed as `interrupted` on restart, and
    the persisted schedule runs again."""
    repo = env_project
    cmd = [str(Path(sys.executable).parent / "recfeast"), "schedule", "--data-dir", str(small_data[0]),
           "--repo-path", str(repo), "--embeddings-every", "0 3 1 1 *", "--aggregates-every", "0 3 1 1 *",
           "--load-every", "60"]
    before = {r["id"] for r in schedule.recent_runs(repo, 1000)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline and not [r for r in schedule.recent_runs(repo, 1000)
                                          if r["id"] not in before and r["status"] == "running"]:
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=30)
    # reading the runs closes the dead ones at once (their pid is gone), before any restart
    new = [r for r in schedule.recent_runs(repo, 1000) if r["id"] not in before]
    running = [r["id"] for r in new if r["status"] == "interrupted" and f"pid {proc.pid}" in r["detail"]]
    assert running and not [r for r in new if r["status"] == "running"], new
    sched = schedule.build_scheduler(schedule.ScheduleConfig(data_dir=str(small_data[0]), repo=str(repo)),
                                     blocking=False)          # a restart
    closed = {r["id"]: r for r in schedule.recent_runs(repo, 1000) if r["id"] in running}
    assert all(r["status"] == "interrupted" and r["ended_at"] for r in closed.values()), closed
    assert sorted(j.id for j in sched.get_jobs()) == ["aggregates", "embeddings", "load_online"]
    for job in ("embeddings", "aggregates", "load_online"):     # every lock is free again
        with schedule.job_lock(repo, job) as held:
            assert held
