"""Feast's SQL registry on the real PostgreSQL (127.0.0.1:5432): one registry for several processes
or machines, chosen with RECFEAST_REGISTRY; apply + materialize + lookup work through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recfeast import config, store
from recfeast.errors import ConfigError
from tests.conftest import ROOT, make_repo, unique_project

PG_ADMIN = os.environ.get("RECFEAST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB = "recfeast_test_registry"


def test_registry_override_builds_a_sql_registry_config(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setenv("RECFEAST_REGISTRY", "postgresql://alice:Pw-77x@db.internal:5432/feast")
    reg = store.repo_config(repo).registry
    assert reg.registry_type == "sql" and reg.path == "postgresql+psycopg://alice:Pw-77x@db.internal:5432/feast"
    assert reg.sqlalchemy_config_kwargs["pool_pre_ping"] is True
    monkeypatch.setenv("RECFEAST_REGISTRY", "postgresql://alice:Pw-77x@db.internal:port/feast")
    with pytest.raises(ConfigError) as err:
        store.repo_config(repo)
    assert "Pw-77x" not in str(err.value) and "not a valid URL" in str(err.value)


@pytest.fixture(scope="module")
def pg_url():
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_DB}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN.rsplit('@', 1)[-1]}: {exc}")
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{PG_DB}"


@pytest.mark.slow
def test_apply_materialize_lookup_through_postgres(small_run, small_data, pg_url, tmp_path, monkeypatch):
    from recfeast.materialize import online
    from recfeast.serving.sdk import OnlineFeatureClient

    src, _, src_project = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    monkeypatch.setenv("RECFEAST_REGISTRY", pg_url)
    fs = store.feature_store(repo, "sqlite", project)
    assert type(fs.registry).__name__ == "SqlRegistry"
    try:
        assert store.apply(fs) > 10
        online.load(fs, repo / "data" / "tables", quiet=True)
        assert not (repo / "data" / "registry.db").exists()   # nothing went to the file registry
        # another process reads the same definitions from PostgreSQL
        code = (f"from recfeast import store\nfs = store.feature_store({str(repo)!r}, 'sqlite', {project!r})\n"
                "print(sorted(s.name for s in fs.list_feature_services()), len(fs.list_feature_views()))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "RECFEAST_REGISTRY": pg_url}, timeout=600)
        assert out.stdout.strip() == f"['ranking_v1'] {len(fs.list_feature_views())}", out.stderr
        user, items = small_data[1]["user_ids"][3], small_data[1]["item_ids"][:6]
        got = OnlineFeatureClient(repo, "sqlite", project=project).get_features(user, items, 893_300_000)
        monkeypatch.delenv("RECFEAST_REGISTRY")
        want = OnlineFeatureClient(src, "sqlite", project=src_project).get_features(user, items, 893_300_000)
        pd.testing.assert_frame_equal(got.status, want.status)
        np.testing.assert_array_equal(got.arrays["text_embedding"], want.arrays["text_embedding"])
        assert got.arrays["rating_count_total"][0] == want.arrays["rating_count_total"][0]
    finally:
        monkeypatch.setenv("RECFEAST_REGISTRY", pg_url)
        store.feature_store(repo, "sqlite", project).registry.delete_project(project, commit=True)
    assert config.registry_url(pg_url).startswith("postgresql+psycopg://")
