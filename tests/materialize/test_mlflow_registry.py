"""The model registry lives in MLflow: versions are MLflow model versions tagged with recfeast's
identity, production is an alias, the serving switch is one alias move, a registry.json from
before is imported once. Small seeded sequence encoders keep this in the fast tier (no model)."""

import json
import shutil

import pytest
from click.testing import CliRunner

from recfeast import mlflow_store, model_registry as registry
from recfeast.encoders.sequence import SequenceEncoder, SequenceEncoderConfig
from recfeast.errors import ConfigError
from tests.conftest import make_repo


def _encoder(tmp_path, seed: int, metrics: dict | None = None):
    path = tmp_path / f"seq{seed}" / "sequence_encoder.pt"
    path.parent.mkdir()
    enc = SequenceEncoder(SequenceEncoderConfig(input_dim=8, hidden_dim=4, max_len=5, seed=seed))
    enc.save(path)
    (path.parent / "metrics.json").write_text(json.dumps({
        "config": {"cell": "gru"}, "test": (metrics or {}).get("test", []), "best_epoch": 2,
        "item_embedding_model": "text@sha256:abc", "data": {"users": 3}}))
    return path, enc.model_id


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for var in (mlflow_store.TRACKING_ENV, mlflow_store.REGISTRY_ENV):
        monkeypatch.delenv(var, raising=False)
    return make_repo(tmp_path / "repo")


def test_versions_are_mlflow_model_versions_and_production_an_alias(tmp_path, repo):
    assert registry.load(repo) == registry._empty() and not mlflow_store.db_path(repo).exists()   # no MLflow needed
    mlflow_store.ensure_sqlite(mlflow_store.db_path(repo))     # a tracked training run made the database
    assert not registry._has_registry(repo) and registry.load(repo) == registry._empty()    # still no MLflow needed
    path, mid = _encoder(tmp_path, 1, {"test": [{"method": "trained", "recall@10": 0.25, "ndcg@10": 0.125}]})
    e = registry.register(repo, "sequence", path)
    assert e["model_id"] == mid and e["version"] == "1" and e["lineage"]["text_model"] == "text@sha256:abc"
    assert registry.register(repo, "sequence", path) == e                            # idempotent
    assert registry._has_registry(repo)
    assert registry.artefact_path(repo, e) == registry.models_dir(repo) / "sequence" / mid.rsplit(":", 1)[1] / "model.pt"
    assert SequenceEncoder.load(registry.artefact_path(repo, e)).model_id == mid       # the copy under the identity

    c = mlflow_store.client(repo)
    (mv,) = c.search_model_versions("name='recfeast-sequence'")
    assert mv.tags["recfeast.model_id"] == mid and mv.tags["metric.test/trained/ndcg_at_10"] == "0.125"
    assert mv.source == registry.artefact_path(repo, e).parent.resolve().as_uri()
    assert registry.production(repo, "sequence") is None

    path2, mid2 = _encoder(tmp_path, 2)
    e2 = registry.register(repo, "sequence", path2)
    registry.switch(repo, {"sequence": mid2}, "proj_a", {"to": "a"})
    assert str(c.get_model_version_by_alias("recfeast-sequence", "production").version) == e2["version"] == "2"
    assert c.get_model_version_by_alias("recfeast-serving", "production").tags["recfeast.serving_project"] == "proj_a"
    assert registry.production(repo, "sequence")["model_id"] == mid2 and registry.serving_project(repo) == "proj_a"
    registry.switch(repo, {"sequence": None}, None, {"to": "b"})                       # back to the built-in default
    reg = registry.load(repo)
    assert reg["production"] == {"text": None, "sequence": None} and reg["serving_project"] is None
    assert reg["history"] == [{"to": "a"}, {"to": "b"}]
    assert not c.get_registered_model("recfeast-sequence").aliases
    with pytest.raises(ConfigError, match="no sequence model 'x@sha256:0'"):
        registry.switch(repo, {"sequence": "x@sha256:0"}, "p", {})

    from recfeast.cli import main

    out = CliRunner().invoke(main, ["models", "list", "--repo-path", str(repo)])
    assert out.exit_code == 0 and mid in out.output and mid2 in out.output and "recall@10 0.2500" in out.output


def test_registry_json_is_imported_once(tmp_path, repo):
    path, mid = _encoder(tmp_path, 3)
    rel = f"sequence/{mid.rsplit(':', 1)[1]}"
    (registry.models_dir(repo) / rel).mkdir(parents=True)
    shutil.copy(path, registry.models_dir(repo) / rel / "model.pt")
    old = {"models": [{"kind": "sequence", "model_id": mid, "path": f"{rel}/model.pt", "metrics": {"m": 1},
                       "lineage": {"text_model": None}, "config": {}, "registered_at": "2026-01-01T00:00:00+00:00"}],
           "production": {"text": None, "sequence": mid}, "serving_project": "proj_old",
           "history": [{"from": None, "to": "old", "at": "2026-01-01"}]}
    (registry.models_dir(repo) / registry.REGISTRY).write_text(json.dumps(old))
    reg = registry.load(repo)
    assert not (registry.models_dir(repo) / registry.REGISTRY).exists()
    assert (registry.models_dir(repo) / (registry.REGISTRY + ".imported")).is_file()
    assert [(m["model_id"], m["path"], m["metrics"], m["registered_at"]) for m in reg["models"]] == [
        (mid, f"{rel}/model.pt", {"m": 1}, "2026-01-01T00:00:00+00:00")]
    assert reg["production"] == {"text": None, "sequence": mid} and reg["serving_project"] == "proj_old"
    assert reg["history"] == old["history"]
    assert registry.load(repo) == reg                                                 # once: nothing doubled
    assert registry.sequence_encoder(repo, 8, 5).model_id == mid                     # production is served


def test_registry_down_is_a_clear_error(repo, monkeypatch):
    from recfeast.errors import StoreError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:18598")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(StoreError, match="MLflow model registry .* unreachable"):
        registry.load(repo)
