"""Seen, not only stored: `mlflow server` on a repository's backend shows the training runs (with
their parameters and metrics side by side) and the registered model versions with the production
alias, checked in headless Chromium. Screenshots go to ``$RECFEAST_SCREENSHOT_DIR`` (default: the
test's temporary folder)."""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from recfeast import mlflow_store, model_registry as registry
from recfeast.training import tracking
from tests.browser import chromium_path, free_port, headless_page, web_server
from tests.conftest import make_repo
from tests.materialize.test_mlflow_registry import _encoder

pytestmark = pytest.mark.slow
PORTS = range(18510, 18530)


@dataclass
class _Cfg:
    lr: float
    max_epochs: int
    out_dir: str


@pytest.fixture
def tracked_repo(tmp_path, monkeypatch):
    """A repository whose MLflow holds two ranking runs with other settings and two sequence
    versions, the second in production."""
    for var in (mlflow_store.TRACKING_ENV, mlflow_store.REGISTRY_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    repo = make_repo(tmp_path / "repo")

    @tracking.tracked("ranking")
    def task(cfg, log=print):
        tracking.current().start(cfg, {"recfeast.feature_service": "ranking_v1"}, repo=repo)
        for epoch in range(1, cfg.max_epochs + 1):
            tracking.current().log_epoch("all", epoch, {"train_loss": 1 / (epoch * cfg.lr * 100),
                                                        "val_loss": 1.1 / (epoch * cfg.lr * 100)})
        tracking.current().log_result({"test": {"auc": 0.6 + cfg.lr}}, [])

    for lr, epochs in ((0.001, 3), (0.01, 5)):
        task(_Cfg(lr, epochs, str(tmp_path / f"runs/lr{lr}")), log=lambda *_: None)
    ids = []
    for seed in (1, 2):
        path, mid = _encoder(tmp_path, seed)
        ids.append(registry.register(repo, "sequence", path)["model_id"])
    registry.switch(repo, {"sequence": ids[1]}, "proj_ui", {"to": "ui"})
    return repo, ids


@pytest.fixture
def mlflow_server(tracked_repo, tmp_path):
    repo, _ = tracked_repo
    port = free_port(PORTS)
    url = f"http://127.0.0.1:{port}"
    with web_server([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                     f"sqlite:///{mlflow_store.db_path(repo).resolve()}", "--host", "127.0.0.1",
                     "--port", str(port), "--workers", "1"], url + "/health", tmp_path / "mlflow_server.log",
                    timeout=120):
        yield url


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_mlflow_ui_lists_runs_and_registered_versions(mlflow_server, tracked_repo, tmp_path):
    _, ids = tracked_repo
    shots = Path(os.environ.get("RECFEAST_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    c = mlflow_store.client(tracked_repo[0])
    exp = c.get_experiment_by_name("recfeast-ranking")
    runs = c.search_runs([exp.experiment_id])
    with headless_page(1500, 900) as page:
        page.goto(f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs", timeout=120_000)
        for r in runs:
            page.get_by_text(r.info.run_name).first.wait_for(timeout=120_000)
        page.screenshot(path=str(shots / "mlflow_runs.png"), full_page=True)

        ids_param = ",".join(f'"{r.info.run_id}"' for r in runs)
        page.goto(f"{mlflow_server}/#/compare-runs?runs=[{ids_param}]&experiments=[\"{exp.experiment_id}\"]",
                  timeout=120_000)
        page.get_by_text("max_epochs").first.wait_for(timeout=120_000)
        page.get_by_text("test/auc").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow_compare.png"), full_page=True)

        page.goto(f"{mlflow_server}/#/models/recfeast-sequence", timeout=120_000)
        page.get_by_text("Version 2").first.wait_for(timeout=120_000)
        page.get_by_text("production").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow_models.png"), full_page=True)
        page.goto(f"{mlflow_server}/#/models/recfeast-sequence/versions/2", timeout=120_000)
        page.get_by_text(ids[1]).first.wait_for(timeout=120_000)          # recfeast's identity, as a tag
        page.screenshot(path=str(shots / "mlflow_model_version.png"), full_page=True)
    for name in ("mlflow_runs.png", "mlflow_compare.png", "mlflow_models.png", "mlflow_model_version.png"):
        assert (shots / name).stat().st_size > 10_000, name
