"""A run killed (SIGKILL, via recfeast.faults) at points across the set of tables and the online load
leaves every table readable, and the rerun ends exactly where a clean run ends: same tables, same
online values in Redis, nothing lost or doubled."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfeast import store
from recfeast.materialize.job import TABLES, JobConfig, run
from tests.conftest import drop_online, make_repo, unique_project

pytestmark = pytest.mark.slow
BATCH_TABLES = [t for t in TABLES if t != "user_realtime"]


def _variant(src: Path, dst: Path) -> Path:
    """The slice with its last 30% of events removed and one overview changed (different tables)."""
    shutil.copytree(src, dst)
    ev = pd.read_csv(dst / "events.csv", dtype=str)
    ts = pd.to_numeric(ev.event_timestamp, errors="coerce")
    ev[~(ts > ts.quantile(0.7))].to_csv(dst / "events.csv", index=False)
    items = pd.read_parquet(dst / "items.parquet")
    items.loc[items.index[0], "description"] = "A changed overview, so one text embedding differs."
    items.to_parquet(dst / "items.parquet", index=False)
    return dst


def _tables(repo: Path) -> dict:
    out = {}
    for name in BATCH_TABLES:
        df = pd.read_parquet(repo / "data" / "tables" / f"{name}.parquet")   # readable: never half-written
        key = "user_id" if name.startswith("user") else "item_id"
        out[name] = df.drop(columns="created_timestamp").sort_values([key, "event_timestamp"]).reset_index(drop=True)
    return out


def _online(fs, repo: Path) -> dict:
    """Every batch view's online values for every entity of the tables (plus absent ones)."""
    tables = repo / "data" / "tables"
    users = sorted(set(pd.read_parquet(tables / "user_profile.parquet").user_id) | {1, 2, 3, 999_999})
    items = sorted(set(pd.read_parquet(tables / "item_text_embedding.parquet").item_id) | {1, 2, 3, 999_999})
    out = {}
    for name in BATCH_TABLES:
        fv = fs.get_feature_view(name)
        key, ids = (("user_id", users) if name.startswith("user") else ("item_id", items))
        resp = fs.get_online_features(features=[f"{name}:{f.name}" for f in fv.features],
                                      entity_rows=[{key: i} for i in ids]).to_dict()
        out[name] = pd.DataFrame(resp)
    return out


def _same(a: dict, b: dict, what: str) -> None:
    """Equal frames, vectors within 1e-5: an embedding recomputed in a batch of another size (the
    rerun re-embeds only what changed) differs from the clean run's in the last float bits."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), (what, name, len(x), len(y))
        for col in x.columns:
            if x[col].dtype == object and any(isinstance(v, (list, np.ndarray)) for v in x[col]):
                for u, v in zip(x[col], y[col]):
                    assert (u is None) == (v is None), (what, name, col)
                    if u is not None:
                        np.testing.assert_allclose(np.asarray(u, float), np.asarray(v, float), atol=1e-5,
                                                   err_msg=f"{what} {name}.{col}")
            else:
                pd.testing.assert_series_equal(x[col], y[col], check_names=False, obj=f"{what} {name}.{col}")


def _killed_run(data: Path, repo: Path, project: str, point: str) -> None:
    env = {**os.environ, "RECFEAST_CRASH_AT": point, "RECFEAST_PROJECT": project}
    cmd = [str(Path(sys.executable).parent / "recfeast"), "materialize", "--data-dir", str(data),
           "--repo-path", str(repo), "--online-store", "redis", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, f"{point}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-2000:]}"


def test_kill_at_any_point_then_rerun_matches_a_clean_run(small_data, small_run, slice_embeddings, tmp_path):
    data_b = small_data[0]
    data_a = _variant(data_b, tmp_path / "data_a")
    repo = make_repo(tmp_path / "repo", embeddings=slice_embeddings)   # only the changed overview is encoded
    project = unique_project()
    cfg = lambda data: JobConfig(data_dir=data, repo=repo, online_store="redis", project=project,  # noqa: E731
                                 progress=False)
    fs = store.feature_store(repo, "redis", project)
    try:
        run(cfg(data_a))
        ref = {"a": (_tables(repo), _online(fs, repo))}
        ref_repo, _, ref_project = small_run                       # a clean run on data_b (SQLite)
        ref["b"] = (_tables(ref_repo), _online(store.feature_store(ref_repo, "sqlite", ref_project), ref_repo))
        with pytest.raises(AssertionError):                        # the two inputs give different tables
            _same(ref["a"][0], ref["b"][0], "a vs b")

        # mid-set (some tables new, some old), between recording stale rows and replacing a table,
        # and in the online load between clearing stale rows and loading
        for point, data, want in (("after_replace:item_content.parquet", data_b, "b"),
                                  ("before_replace:user_behavior.parquet", data_a, "a"),
                                  ("load:after_clear", data_b, "b")):
            _killed_run(data, repo, project, point)
            _tables(repo)                                          # every table still reads
            run(cfg(data))
            _same(_tables(repo), ref[want][0], f"tables after a kill at {point}")
            _same(_online(fs, repo), ref[want][1], f"online after a kill at {point}")
    finally:
        drop_online(fs)
