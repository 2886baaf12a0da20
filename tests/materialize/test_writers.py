"""One writer at a time, and readers never see a half-written Feast registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recfeast.errors import ConfigError
from tests.conftest import ROOT, make_repo, unique_project

PY = sys.executable


def _hold_tables_lock(repo: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time; from recfeast.materialize.schedule import job_lock\n"
            f"with job_lock({str(repo)!r}, 'tables') as held:\n    print(held, flush=True); time.sleep({seconds})")
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "True"
    return proc


def test_main_job_waits_for_the_tables_lock_and_says_so(tmp_path, capfd):
    """The main job takes the lock the scheduler and promotion take: it waits, naming the holder."""
    from recfeast.materialize.job import JobConfig, run

    repo = make_repo(tmp_path / "repo")
    holder = _hold_tables_lock(repo, 3)
    try:
        # a missing data folder fails only once the job holds the lock: the wait comes first
        with pytest.raises(ConfigError, match="data directory"):
            run(JobConfig(data_dir=str(tmp_path / "missing"), repo=repo, progress=False))
        err = capfd.readouterr().err
        assert "waiting for the tables lock" in err and f"pid {holder.pid}" in err
        assert "waiting" in err and holder.wait(timeout=120) == 0   # it ran only after the holder let go
    finally:
        holder.wait()


def test_lock_is_reentrant_per_thread_and_exclusive_across_threads(tmp_path):
    import threading

    from recfeast.materialize.schedule import job_lock

    repo = make_repo(tmp_path / "repo")
    seen = []
    with job_lock(repo, "tables") as outer:
        with job_lock(repo, "tables", reentrant=True) as inner:   # the scheduler runs the main job under the lock
            seen.append((outer, inner))
        with job_lock(repo, "tables") as again:   # not re-entrant: refused, as for another process
            seen.append(again)

        def other():
            with job_lock(repo, "tables", reentrant=True) as held:
                seen.append(held)
        t = threading.Thread(target=other)
        t.start(), t.join()
    assert seen == [(True, True), False, False]


def test_registry_write_replaces_the_file_readers_have_open(tmp_path):
    """Feast's file store truncates and rewrites registry.db in place; ours renames a complete file
    over it, so a reader holding the old file reads it whole."""
    from recfeast import store

    repo = make_repo(tmp_path / "repo")
    fs = store.feature_store(repo, "sqlite", unique_project())
    store.apply(fs)
    path = repo / "data" / "registry.db"
    with open(path, "rb") as reader:
        before = path.read_bytes()
        ino = os.stat(path).st_ino
        store.apply(fs)   # rewrites the registry (new version id)
        assert reader.read() == before
    assert os.stat(path).st_ino != ino and path.read_bytes() != before
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(path.parent.glob(".registry.db.*.tmp"))


@pytest.mark.slow
def test_readers_never_fail_during_repeated_applies(tmp_path):
    from feast import FeatureStore

    from recfeast import store

    repo = make_repo(tmp_path / "repo")
    project = unique_project()
    store.apply(store.feature_store(repo, "sqlite", project))
    code = ("import sys; from recfeast import store\n"
            f"fs = store.feature_store({str(repo)!r}, 'sqlite', {project!r})\n"
            "print('ready', flush=True)\n"
            "for _ in range(60):\n    store.apply(fs)\n")
    writer = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert writer.stdout.readline().strip() == "ready"
    cfg = store.repo_config(repo, "sqlite", project)
    reads, failures = 0, []
    while writer.poll() is None:
        try:
            fs = FeatureStore(repo_path=str(repo), config=cfg)
            assert len(fs.get_feature_service("ranking_v1").feature_view_projections) > 0
            reads += 1
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
    assert writer.returncode == 0
    assert failures == [] and reads > 5


@pytest.mark.slow
def test_two_concurrent_materialize_runs_both_finish(small_data, slice_embeddings, tmp_path):
    repo = make_repo(tmp_path / "repo", embeddings=slice_embeddings)
    env = {**os.environ, "RECFEAST_PROJECT": unique_project()}
    cmd = [str(Path(PY).with_name("recfeast")), "materialize", "--data-dir", str(small_data[0]),
           "--repo-path", str(repo), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("tables in" in o for o, _ in outs)
    assert sum("waiting for the tables lock" in e for _, e in outs) == 1, [e for _, e in outs]
    assert not any("corrupt" in e.lower() or "Traceback" in e for _, e in outs)
