"""Run records without running a job (fast tier): `recfeast jobs` on an empty repository, a recorded
run's states, and `recfeast materialize` recording its own runs."""

import json

import pytest
from click.testing import CliRunner

from recfeast.cli import main
from recfeast.materialize import schedule
from tests.conftest import make_repo


def test_jobs_says_no_runs_yet(tmp_path):
    repo = make_repo(tmp_path / "repo")
    out = CliRunner().invoke(main, ["jobs", "--repo-path", str(repo)])
    assert out.exit_code == 0 and "no runs yet" in out.output, out.output
    assert json.loads(CliRunner().invoke(main, ["jobs", "--repo-path", str(repo), "--json"]).output) == []


def test_recorded_run_states_and_failure(tmp_path):
    repo = make_repo(tmp_path / "repo")
    with schedule.recorded_run(repo, "materialize") as rec:
        now = schedule.recent_runs(repo, 1)[0]
        assert now["status"] == "running" and now["ended_at"] is None
        rec.rows, rec.detail = 7, "seven"
    done = schedule.recent_runs(repo, 1)[0]
    assert (done["job"], done["status"], done["rows"], done["detail"]) == ("materialize", "ok", 7, "seven")
    with pytest.raises(ValueError), schedule.recorded_run(repo, "materialize"):
        raise ValueError("boom")
    failed = schedule.recent_runs(repo, 1)[0]
    assert failed["status"] == "failed" and "ValueError: boom" in failed["detail"]


def test_recorded_run_waits_for_the_tables_lock_in_state_waiting(tmp_path):
    import threading

    repo = make_repo(tmp_path / "repo")
    seen = {}
    with schedule.job_lock(repo, "tables") as held:     # a scheduled job holds the tables
        assert held

        def other():
            with schedule.recorded_run(repo, "materialize"):
                seen["started"] = schedule.recent_runs(repo, 1)[0]["started_at"]

        t = threading.Thread(target=other)
        t.start()
        for _ in range(200):
            runs = schedule.recent_runs(repo, 1)
            if runs and runs[0]["status"] == "waiting":
                break
            t.join(0.05)
        assert schedule.recent_runs(repo, 1)[0]["status"] == "waiting"
        waiting_since = schedule.recent_runs(repo, 1)[0]["started_at"]
    t.join(30)
    run = schedule.recent_runs(repo, 1)[0]
    assert run["status"] == "ok" and run["started_at"] == seen["started"] >= waiting_since


def test_cli_materialize_records_its_runs(tmp_path):
    repo = make_repo(tmp_path / "repo")
    out = CliRunner().invoke(main, ["materialize", "--data-dir", str(tmp_path / "nowhere"), "--repo-path", str(repo)])
    assert out.exit_code == 2 and "nowhere" in out.output
    run = schedule.recent_runs(repo, 1)[0]
    assert (run["job"], run["status"]) == ("materialize", "failed") and "ConfigError" in run["detail"]
    listing = CliRunner().invoke(main, ["jobs", "--repo-path", str(repo)]).output
    assert "materialize" in listing and "failed" in listing
