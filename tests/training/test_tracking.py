"""Run tracking: MLflow runs (params, per-epoch curves, final metrics, artefacts, lineage) and
TensorBoard event files, and a tracking backend that is down does not fail a run."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from recfeast import mlflow_store
from recfeast.training import tracking
from tests.conftest import slice_split_dates


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard event files under ``tb_dir``: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@dataclass
class _Cfg:
    lr: float = 0.01
    hidden: tuple = (8, 4)
    out_dir: str = ""
    extra: dict = field(default_factory=lambda: {"a": 1})


def test_flatten_keys_are_mlflow_names():
    flat = tracking.flatten_metrics({"test": {"auc": 0.7, "ndcg@10": 0.3, "variant": "all", "groups": ["a"]},
                                     "lift": {"hr@10": {"diff": 0.1, "ci95": [-0.1, 0.2]}},
                                     "ablation": [{"variant": "+ text", "auc": 0.6, "log_loss": None}]})
    assert flat == {"test/auc": 0.7, "test/ndcg_at_10": 0.3, "lift/hr_at_10/diff": 0.1,
                    "lift/hr_at_10/ci95_low": -0.1, "lift/hr_at_10/ci95_high": 0.2, "ablation/text/auc": 0.6}
    assert tracking.flatten_params(_Cfg(out_dir="x")) == {"lr": "0.01", "hidden": "[8, 4]", "out_dir": "x",
                                                         "extra.a": "1"}
    assert tracking.slug("behavior only") == "behavior_only" and tracking.slug("most popular (as of time)") == \
        "most_popular_as_of_time"


def test_tracker_writes_mlflow_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow_store.ensure_sqlite(tmp_path / "mlflow.db")
    (tmp_path / "table.md").write_text("| a |\n")
    lines = []

    @tracking.tracked("unit")
    def task(cfg, log=print):
        tracking.current().start(cfg, {"recfeast.lineage": {"x": 1}}, repo=tmp_path)
        for epoch, loss in enumerate([0.9, 0.5, 0.4], start=1):
            tracking.current().log_epoch("+ text", epoch, {"epoch": epoch, "train_loss": loss, "val_loss": None})
        tracking.current().log_result({"test": {"auc": 0.75}}, [tmp_path / "table.md", tmp_path / "missing.png"],
                                      {"recfeast.model.text": "m@sha256:1"})
        return 1

    assert task(_Cfg(out_dir=str(tmp_path / "out")), log=lines.append) == 1
    c = mlflow_store.client(None)
    exp = c.get_experiment_by_name("recfeast-unit")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()              # beside the database
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01", "hidden": "[8, 4]", "out_dir": str(tmp_path / "out"), "extra.a": "1"}
    assert run.data.metrics == {"text/train_loss": 0.4, "test/auc": 0.75}
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "text/train_loss")] == \
        [(1, 0.9), (2, 0.5), (3, 0.4)]
    assert run.data.tags["recfeast.lineage"] == '{"x": 1}' and run.data.tags["recfeast.model.text"] == "m@sha256:1"
    assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["table.md"]
    tb = Path(run.data.tags["recfeast.tensorboard"])
    assert tb.parent == tmp_path / "out" / "tensorboard"
    assert _scalars(tb)["text/train_loss"] == [(1, pytest.approx(0.9)), (2, 0.5), (3, pytest.approx(0.4))]
    assert len(lines) == 1 and lines[0].startswith(f"tracking: MLflow run {run.info.run_id}")

    @tracking.tracked("unit")
    def failing(cfg, log=print):
        tracking.current().start(cfg, repo=tmp_path)
        raise ValueError("boom")

    with pytest.raises(ValueError):
        failing(_Cfg(out_dir=str(tmp_path / "out2")), log=lines.append)
    statuses = sorted(r.info.status for r in c.search_runs([run.info.experiment_id]))
    assert statuses == ["FAILED", "FINISHED"]


def test_tracking_server_down_is_reported_and_the_task_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:18599")   # nothing listens there
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    lines = []

    @tracking.tracked("unit")
    def task(cfg, log=print):
        tracking.current().start(cfg)
        tracking.current().log_epoch("all", 1, {"train_loss": 0.5})
        tracking.current().log_result({"test": {"auc": 0.5}}, [])
        return "done"

    assert task(_Cfg(out_dir=str(tmp_path / "out")), log=lines.append) == "done"
    assert len(lines) == 2 and "MLflow start failed" in lines[0] and "the run goes on" in lines[0]
    assert "secret" not in "".join(lines) and lines[1].startswith("tracking: not in MLflow; TensorBoard:")
    (tb,) = (tmp_path / "out" / "tensorboard").iterdir()
    assert _scalars(tb)["all/train_loss"] == [(1, 0.5)]


@pytest.mark.slow
def test_two_train_runs_compare_in_mlflow_and_tensorboard(small_run, small_data, tmp_path, monkeypatch):
    from recfeast.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    repo, _, project = small_run
    val_start, test_start = slice_split_dates(small_data)
    outs = {}
    for epochs, groups in ((2, "behavior,text"), (3, "behavior,sequence")):
        out = tmp_path / f"runs/e{epochs}"
        res = CliRunner().invoke(main, [
            "train", "--data-dir", str(small_data[0]), "--repo-path", str(repo), "--out-dir", str(out),
            "--val-start", val_start, "--test-start", test_start, "--max-epochs", str(epochs), "--eval-users", "20",
            "--eval-negatives", "9", "--no-ablation", "--groups", groups], env={"RECFEAST_PROJECT": project})
        assert res.exit_code == 0, res.output
        assert "tracking: MLflow run " in res.output
        outs[str(out.resolve())] = (epochs, groups)
    assert mlflow_store.db_path(repo).is_file()                       # the default backend: beside the tables
    c = mlflow_store.client(repo)
    exp = c.get_experiment_by_name("recfeast-ranking")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("recfeast.out_dir") in outs]
    assert len(runs) == 2
    import json

    for r in runs:
        epochs, groups = outs[r.data.tags["recfeast.out_dir"]]
        metrics = json.loads(Path(r.data.tags["recfeast.out_dir"], "metrics.json").read_text())
        assert r.info.status == "FINISHED"
        assert r.data.params["max_epochs"] == str(epochs) and json.loads(r.data.params["groups"]) == groups.split(",")
        hist = metrics["history"]["all"]
        curve = c.get_metric_history(r.info.run_id, "all/val_loss")
        assert [(m.step, m.value) for m in curve] == [(h["epoch"], pytest.approx(h["val_loss"])) for h in hist]
        assert r.data.metrics["test/auc"] == pytest.approx(metrics["test"]["auc"])
        assert r.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test"]["ndcg@10"])
        assert r.data.metrics["ablation/most_popular_as_of_time/hr_at_10"] == pytest.approx(metrics["ablation"][0]["hr@10"])
        assert r.data.tags["recfeast.feature_service"] == "ranking_v1"
        assert r.data.tags["recfeast.model.text_model"].startswith("all-MiniLM-L6-v2@sha256:")
        # the light default: the entity rows are kept (and hashed), the joined set is not written
        assert len(r.data.tags["recfeast.training_set.entities.sha256"]) == 64
        assert "recfeast.training_set.sha256" not in r.data.tags
        assert not Path(r.data.tags["recfeast.out_dir"], "training_set.parquet").exists()
        assert sorted(a.path for a in c.list_artifacts(r.info.run_id)) == [
            "ablation.md", "ablation.png", "metrics.json", "training_curves.png"]
        local = Path(c.download_artifacts(r.info.run_id, "ablation.md", str(tmp_path / r.info.run_id)))
        assert local.read_text() == Path(r.data.tags["recfeast.out_dir"], "ablation.md").read_text()
        tb = _scalars(Path(r.data.tags["recfeast.tensorboard"]))
        assert [s for s, _ in tb["all/val_loss"]] == [h["epoch"] for h in hist]
        assert [v for _, v in tb["all/val_loss"]] == pytest.approx([h["val_loss"] for h in hist])
    # the ranking model becomes an MLflow model version tagged with its identity and test metrics
    out = next(iter(outs))
    res = CliRunner().invoke(main, ["models", "register", "ranking", f"{out}/ranking_model.pt", "--repo-path", str(repo)])
    assert res.exit_code == 0, res.output
    (mv,) = c.search_model_versions("name='recfeast-ranking'")
    metrics = json.loads(Path(out, "metrics.json").read_text())
    assert mv.tags["recfeast.model_id"].startswith("ranking-mlp@sha256:") and mv.tags["recfeast.path"].startswith("ranking/")
    assert float(mv.tags["metric.test/auc"]) == pytest.approx(metrics["test"]["auc"], rel=1e-5)
    assert json.loads(mv.tags["recfeast.lineage"])["embedding_models"] == metrics["training_set"]["model_ids"]
    listed = CliRunner().invoke(main, ["models", "list", "--repo-path", str(repo)])
    assert listed.exit_code == 0 and mv.tags["recfeast.model_id"] in listed.output and "ranking:" in listed.output
    # `tensorboard --logdir runs/` sees both runs
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs"))
    mux.Reload()
    assert sum("all/val_loss" in tags.get("scalars", []) for tags in mux.Runs().values()) == 2


@pytest.mark.slow
def test_train_finishes_when_the_tracking_server_is_down(small_run, small_data, tmp_path, monkeypatch):
    from recfeast.cli import main

    repo, _, project = small_run
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    val_start, test_start = slice_split_dates(small_data)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data-dir", str(small_data[0]), "--repo-path", str(repo), "--out-dir", str(out),
        "--val-start", val_start, "--test-start", test_start, "--max-epochs", "2", "--eval-users", "10",
        "--eval-negatives", "5", "--no-ablation"],
        env={"RECFEAST_PROJECT": project, "MLFLOW_TRACKING_URI": "http://127.0.0.1:18597"})   # nothing listens
    assert res.exit_code == 0, res.output
    down = [line for line in res.output.splitlines() if "MLflow start failed" in line]
    assert len(down) == 1 and "http://127.0.0.1:18597" in down[0] and "the run goes on" in down[0]
    assert "tracking: not in MLflow; TensorBoard:" in res.output
    assert (out / "metrics.json").is_file() and (out / "ranking_model.pt").is_file()
    (tb,) = (out / "tensorboard").iterdir()
    assert [s for s, _ in _scalars(tb)["all/val_loss"]] == [1, 2]


@pytest.mark.slow
def test_finetune_text_and_sequence_runs_are_tracked(tmp_path, data_dir, slice_items, text_encoder, tiny_text_finetune,
                                                    monkeypatch):
    """`finetune text` and `finetune sequence`: one MLflow run each, with curves, test metrics,
    artefacts and the identities of the models involved."""
    from recfeast.training.sequence_task import SequenceTrainConfig, train_sequence

    _, res, uri = tiny_text_finetune                      # tracked in its own MLflow database
    monkeypatch.setenv("RECFEAST_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = mlflow_store.client(None)

    (run,) = c.search_runs([c.get_experiment_by_name("recfeast-text-finetune").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["max_items"] == "40"
    assert run.data.tags["recfeast.model_id"] == res["model_id"] and run.data.tags["recfeast.model.base"] == res["base_model_id"]
    curves = {k: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)]
              for k in ("encoder/train", "encoder/val_genre")}
    assert [s for s, _ in curves["encoder/train"]] == [1] and [s for s, _ in curves["encoder/val_genre"]] == [0, 1]
    assert run.data.metrics["after/ndcg_at_10"] == pytest.approx(res["metrics"]["after"]["ndcg@10"])
    assert "next_item_ndcg_lift/ci95_low" in run.data.metrics
    assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == ["metrics.json", "training_curves.png"]

    # the sequence encoder on item embeddings of the real text encoder (the 250 most rated items)
    metrics = train_sequence(SequenceTrainConfig(data_dir=str(data_dir), item_embeddings=str(slice_items), max_users=60,
                                                 hidden_dim=16, max_epochs=2, patience=2, bootstrap=50,
                                                 out_dir=str(tmp_path / "seq"), progress=False), log=lambda *_: None)
    (run,) = c.search_runs([c.get_experiment_by_name("recfeast-sequence").experiment_id])
    assert run.data.tags["recfeast.model_id"] == metrics["model_id"]
    assert run.data.tags["recfeast.model.item_embedding"] == text_encoder.model_id
    hist = c.get_metric_history(run.info.run_id, "encoder/val_loss")
    assert [(m.step, m.value) for m in hist] == [(h["epoch"], pytest.approx(h["val_loss"])) for h in metrics["history"]]
    trained = next(r for r in metrics["test"] if r["method"] == "trained")
    assert run.data.metrics["test/trained/ndcg_at_10"] == pytest.approx(trained["ndcg@10"])
    d = metrics["diff"]["trained - popular"]["recall@10"]
    assert run.data.metrics["diff/trained_-_popular/recall_at_10/ci95_high"] == pytest.approx(d["ci95"][1])
    assert sorted(a.path for a in c.list_artifacts(run.info.run_id)) == ["metrics.json", "results.md",
                                                                         "training_curve.png"]
