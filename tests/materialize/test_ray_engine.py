"""The Ray engine on a real local Ray cluster (a head node and a worker node started with ``ray
start``, one CPU each, ports 18700-18749 unless $RECFEAST_TEST_RAY_PORT moves them): the same
catalog slice materialized with the local and the Ray engine gives equal tables (vectors within
1e-6) and equal online values, and a worker killed mid-job (a failpoint SIGKILLs it on its first
batch) is restarted by Ray, its batch retried, and the result is still equal."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfeast import store
from recfeast.materialize import engine as engines
from recfeast.materialize.job import TABLES, JobConfig, run
from tests.conftest import drop_online, make_repo, unique_project

pytestmark = pytest.mark.slow
BASE = int(os.environ.get("RECFEAST_TEST_RAY_PORT", "18700"))


def _ray_start(*args) -> subprocess.Popen:
    ray_cli = Path(sys.executable).with_name("ray")
    return subprocess.Popen([str(ray_cli), "start", "--block", "--disable-usage-stats", "--num-cpus=1",
                             "--object-store-memory=200000000", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _ports(off: int, workers: tuple[int, int]) -> list[str]:
    return [f"--node-manager-port={BASE + off + 2}", f"--object-manager-port={BASE + off + 3}",
            f"--dashboard-agent-grpc-port={BASE + off + 5}", f"--dashboard-agent-listen-port={BASE + off + 6}",
            f"--metrics-export-port={BASE + off + 7}", f"--runtime-env-agent-port={BASE + off + 8}",
            f"--min-worker-port={BASE + workers[0]}", f"--max-worker-port={BASE + workers[1]}"]


@pytest.fixture(scope="module")
def ray_address():
    """A two-node Ray cluster on this machine: ``ray start --head`` plus ``ray start --address``
    (one CPU each). Stopped at the end by terminating the two ``ray start --block`` processes,
    which stop what they started (never ``ray stop``: that would stop every Ray on the machine)."""
    import ray

    address = f"127.0.0.1:{BASE}"
    temp = tempfile.mkdtemp(prefix="rfray", dir="/tmp")
    procs = [_ray_start("--head", f"--port={BASE}", "--include-dashboard=false", f"--dashboard-port={BASE + 1}",
                        f"--temp-dir={temp}", *_ports(0, (20, 34)))]
    try:
        deadline = time.monotonic() + 90
        while True:   # the head answers once its GCS is up; then add the worker node
            if procs[0].poll() is not None:
                pytest.fail(f"ray start --head exited with {procs[0].returncode} (port {BASE} taken?)")
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        procs.append(_ray_start(f"--address={address}", *_ports(10, (35, 49))))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if procs[1].poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Ray worker node did not join")
            time.sleep(1)
        yield address
    finally:
        ray.shutdown()
        # SIGTERM to each node's whole process group (raylet, GCS, agents), the worker node first, then
        # SIGKILL to what is left after 5 s: after a job the head's `ray start --block` does not exit
        # within 30 s of SIGTERM (measured), and waiting longer for it gains nothing
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def ray_engine(ray_address):
    eng = engines.RayEngine(ray_address)
    assert eng.workers == 2   # one actor per node's CPU
    yield eng
    eng.close()


def _online_values(fs, repo: Path) -> dict:
    """``{view: {feature: list of values}}`` read back online for every entity of every batch view's table."""
    out = {}
    for fv in fs.list_feature_views():
        if type(fv.stream_source).__name__ == "PushSource":
            continue
        key = fv.entity_columns[0].name
        ids = sorted(set(pd.read_parquet(fv.batch_source.path, columns=[key])[key]))
        got = fs.get_online_features(features=[f"{fv.name}:{f.name}" for f in fv.features],
                                     entity_rows=[{key: int(i)} for i in ids]).to_dict()
        out[fv.name] = got
    return out


def _assert_online_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for view in a:
        assert a[view].keys() == b[view].keys(), view
        for feat, va in a[view].items():
            vb = b[view][feat]
            assert len(va) == len(vb) > 0, (view, feat)
            if va and isinstance(next((v for v in va if v is not None), None), list):
                for x, y in zip(va, vb):
                    assert (x is None) == (y is None), (view, feat)
                    if x is not None:
                        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-6)
            else:
                assert va == vb, (view, feat)


def _assert_tables_equal(dir_a: Path, dir_b: Path, names) -> None:
    for name in names:
        a, b = pd.read_parquet(dir_a / f"{name}.parquet"), pd.read_parquet(dir_b / f"{name}.parquet")
        assert len(a) == len(b) > 0 or name == "user_realtime", name
        vec = [c for c in a.columns if c.endswith("embedding")] if len(a) else []
        for c in vec:
            np.testing.assert_allclose(np.stack(a[c]), np.stack(b[c]), atol=1e-6, err_msg=name)
        # created_timestamp is the run's time: differs between two runs by design
        rest = [c for c in a.columns if c not in vec and c != "created_timestamp"]
        pd.testing.assert_frame_equal(a[rest], b[rest], obj=name)


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, small_data, ray_engine):
    """The main job on the slice with the Ray engine, Redis online store, and two failpoints armed
    once each: an encoding actor SIGKILLs itself on its first batch, and a load task after reading
    its partition, before writing it. Ray restarts them and retries. (repo, summary, project, markers)."""
    from recfeast import faults

    repo = make_repo(tmp_path_factory.mktemp("repo_ray"))
    project = unique_project()
    points = ("ray:encode_batch", "ray:load_partition")
    saved = {k: os.environ.get(k) for k in (faults.ENV, faults.ONCE_ENV)}
    os.environ[faults.ENV] = ",".join(points)
    os.environ[faults.ONCE_ENV] = str(tmp_path_factory.mktemp("crash") / "once")
    try:
        markers = [Path(faults.once_marker(p)) for p in points]
        summary = run(JobConfig(data_dir=small_data[0], repo=repo, online_store="redis", project=project,
                                progress=False, engine=ray_engine))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield repo, summary, project, markers
    drop_online(store.feature_store(repo, "redis", project))


def test_local_and_ray_engines_give_equal_tables_and_online_values(small_run, ray_run, ray_engine):
    local_repo, local_summary, _ = small_run
    ray_repo, ray_summary, ray_project, _ = ray_run
    _assert_tables_equal(local_repo / "data" / "tables", ray_repo / "data" / "tables", TABLES)
    assert ray_summary.embeddings == local_summary.embeddings   # same misses computed, on Ray
    assert ray_summary.quarantine == local_summary.quarantine   # image failures come back from the actors
    # the local engine's online values (Redis, its own project) against the Ray engine's partitioned load
    local_project = unique_project()
    local_fs = store.feature_store(local_repo, "redis", local_project)
    store.apply(local_fs)
    try:
        engines.LocalEngine().load_online(local_fs, local_repo / "data" / "tables", quiet=True)
        want = _online_values(local_fs, local_repo)
        assert sum(len(next(iter(v.values()))) for v in want.values()) > 100
        _assert_online_equal(want, _online_values(store.feature_store(ray_repo, "redis", ray_project), ray_repo))
        # SQLite too (one load partition: a single-file store)
        ray_sqlite = store.feature_store(ray_repo, "sqlite", ray_project)
        store.apply(ray_sqlite)
        ray_engine.load_online(ray_sqlite, ray_repo / "data" / "tables", quiet=True)
        small_sqlite = store.feature_store(local_repo, "sqlite", small_run[2])
        _assert_online_equal(_online_values(small_sqlite, local_repo), _online_values(ray_sqlite, ray_repo))
    finally:
        drop_online(local_fs)


def test_killed_workers_were_retried_and_a_rerun_is_idempotent(ray_run, small_data, ray_address):
    from recfeast.materialize import schedule

    repo, summary, project, markers = ray_run
    assert all(m.is_file() for m in markers)   # both crashes did happen, and the job still completed
    assert summary.embeddings["text"] == {"computed": summary.tables["item_text_embedding"]["rows"], "reused": 0}
    tables = repo / "data" / "tables"
    before = {n: pd.read_parquet(tables / f"{n}.parquet") for n in TABLES}
    fs = store.feature_store(repo, "redis", project)
    online_before = _online_values(fs, repo)
    # the scheduler's jobs on the same cluster: nothing to re-embed, same tables, same online values
    os.environ["RECFEAST_PROJECT"] = project
    try:
        for job in ("embeddings", "aggregates", "load_online"):
            rec = schedule.run_job(job, str(small_data[0]), str(repo), ("redis",), engine="ray",
                                   ray_address=ray_address)
            assert rec["status"] == "ok", rec
    finally:
        os.environ.pop("RECFEAST_PROJECT")
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(tables / f"{name}.parquet"), before[name], obj=name)
    _assert_online_equal(online_before, _online_values(fs, repo))


def test_feasts_ray_engine_as_the_loader_gives_the_same_online_values(ray_run, ray_address):
    """RECFEAST_RAY_LOAD=feast: Feast's own Ray compute engine loads (through the driver, see the README)."""
    repo, _, project, _ = ray_run
    fs = store.feature_store(repo, "redis", unique_project())
    store.apply(fs)
    try:
        engines.RayEngine(ray_address, load="feast").load_online(fs, repo / "data" / "tables", quiet=True)
        _assert_online_equal(_online_values(store.feature_store(repo, "redis", project), repo), _online_values(fs, repo))
    finally:
        drop_online(fs)


def test_unknown_engine_and_address_without_ray_are_refused():
    from recfeast.errors import ConfigError

    with pytest.raises(ConfigError, match="expected one of"):
        engines.get("spark")
    with pytest.raises(ConfigError, match="needs --engine ray"):
        engines.get("local", "127.0.0.1:1")
