"""`recfeast reset`: what it deletes in <repo>/data and, against the real Redis (db 15), the keys of
the repository's Feast projects and nothing else."""

import pytest
from click.testing import CliRunner

from recfeast.cli import main
from tests.conftest import make_repo


def _fill(repo):
    for name in ("tables", "embedding_cache", "models", "scheduler", "events"):
        (repo / "data" / name).mkdir(parents=True)
        (repo / "data" / name / "x").write_text(name)
    (repo / "data" / "registry.db").write_bytes(b"not read without --redis")


def test_reset_keeps_cache_and_models_unless_all(tmp_path):
    repo = make_repo(tmp_path / "repo")
    _fill(repo)
    out = CliRunner().invoke(main, ["reset", "--repo-path", str(repo), "--yes"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["embedding_cache", "models"]
    assert (repo / "data" / "models" / "x").read_text() == "models"
    assert "removed events, registry.db, scheduler, tables" in out.output
    assert (repo / "feature_definitions.py").is_file()          # definitions are not generated: kept
    out = CliRunner().invoke(main, ["reset", "--repo-path", str(repo), "--yes", "--all"])
    assert out.exit_code == 0 and not (repo / "data").exists()
    assert [p.name for p in repo.iterdir() if p.name.startswith(".data")] == []


def test_reset_asks_first_and_refuses_while_a_job_runs(tmp_path):
    from recfeast.materialize.schedule import job_lock

    repo = make_repo(tmp_path / "repo")
    _fill(repo)
    out = CliRunner().invoke(main, ["reset", "--repo-path", str(repo)], input="n\n")
    assert out.exit_code == 1 and (repo / "data" / "tables" / "x").is_file()
    with job_lock(repo, "tables") as held:
        assert held
        out = CliRunner().invoke(main, ["reset", "--repo-path", str(repo), "--yes"])
    assert out.exit_code == 2 and "holds the tables lock" in out.output
    assert (repo / "data" / "tables" / "x").is_file()


@pytest.mark.slow
def test_reset_redis_removes_only_this_repos_projects(small_run, tmp_path):
    import redis

    from recfeast import store
    from recfeast.materialize import online

    repo, _, project = small_run
    r = redis.Redis(host="127.0.0.1", port=6379, db=15)
    r.set(b"someone_else:key", b"1")                           # a key of no Feast project of ours
    fs = store.feature_store(repo, "redis", project)
    store.apply(fs)
    online.load(fs, repo / "data" / "tables")
    ours = sum(1 for _ in r.scan_iter(match=b"*" + project.encode()))
    assert ours > 0
    out = CliRunner().invoke(main, ["reset", "--repo-path", str(repo), "--redis-only", "--yes"])
    assert out.exit_code == 0, out.output
    assert f"redis: project {project}: {ours} keys deleted" in out.output
    assert sum(1 for _ in r.scan_iter(match=b"*" + project.encode())) == 0
    assert r.get(b"someone_else:key") == b"1"
    assert (repo / "data" / "tables").is_dir()                  # --redis-only keeps the repository
    r.delete(b"someone_else:key")
