"""`recfeast schedule`'s stop on SIGTERM, in a real process, with stand-in jobs (a sleep each, so no
model or data is needed: fast tier): one job runs, two wait for the tables lock; SIGTERM ends the
process promptly, records the running run `interrupted` and the waiting ones `cancelled`, with no
traceback. tests/materialize/test_schedule.py does the same with the real jobs (slow)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from recfeast.materialize import schedule
from tests.conftest import make_repo


def _start(repo, job_seconds: float, grace: float):
    code = textwrap.dedent(f"""
        import time
        from recfeast.materialize import schedule

        def slow_job(data_dir, repo, stores, **engine):   # engine=, ray_address= (the batch engine)
            time.sleep({job_seconds})
            return 1, "slept"

        schedule._JOB_FUNCS.update({{j: slow_job for j in schedule.JOBS}})
        schedule.serve(schedule.ScheduleConfig(data_dir="unused", repo={str(repo)!r},
                       triggers={{j: {{"interval_minutes": 600}} for j in schedule.JOBS}}), grace_s={grace})
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ))


def _wait_for(repo, statuses, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = schedule.recent_runs(repo, 10)
        if sorted(r["status"] for r in runs) == sorted(statuses):
            return runs
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.1)
    raise AssertionError(f"runs never reached {statuses}: {schedule.recent_runs(repo, 10)}")


def test_sigterm_interrupts_the_running_job_and_cancels_the_waiting(tmp_path):
    repo = make_repo(tmp_path / "repo")
    proc = _start(repo, job_seconds=600, grace=0.5)
    before = _wait_for(repo, ["running", "waiting", "waiting"], proc)
    running = next(r for r in before if r["status"] == "running")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)          # a hang guard, not a timing claim
    assert proc.returncode == 0, out
    assert "received signal 15: stopping" in out and "stopped: 3 run(s) interrupted or cancelled" in out, out
    assert "Traceback" not in out and "RuntimeError" not in out, out
    after = {r["id"]: r for r in schedule.recent_runs(repo, 10)}
    assert after[running["id"]]["status"] == "interrupted" and "stopped by a signal" in after[running["id"]]["detail"]
    assert after[running["id"]]["started_at"] == running["started_at"]   # when it took the lock
    assert sorted(r["status"] for r in after.values()) == ["cancelled", "cancelled", "interrupted"]
    for job in ("tables", *schedule.JOBS):
        with schedule.job_lock(repo, job) as held:
            assert held


def test_sigterm_lets_a_short_running_job_finish(tmp_path):
    repo = make_repo(tmp_path / "repo")
    proc = _start(repo, job_seconds=2, grace=60)
    _wait_for(repo, ["running", "waiting", "waiting"], proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in out, out
    statuses = sorted(r["status"] for r in schedule.recent_runs(repo, 10))
    assert statuses == ["cancelled", "cancelled", "ok"], (statuses, out)
