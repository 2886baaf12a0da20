"""What run tracking costs a training run: recfeast's tracker against MLflow's own fluent API.

Both log the same run to the same local SQLite backend: the parameters of ``TrainConfig``,
``--epochs`` epochs x 5 variants x 2 curves, 40 final metrics, two artefact files and the lineage
tags. recfeast's tracker (``training/tracking.py``) batches each epoch into one ``log_batch`` and
also writes the TensorBoard files; the anchor calls ``mlflow.log_metric`` per value (what a
training loop written against MLflow's quick-start does). Median of ``--repeat`` runs, after one
warm-up run each (the database, the imports).

    .venv/bin/python -m bench.bench_tracking --epochs 30 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = ("behavior only", "+ text", "+ image", "+ sequence", "all")


def _recfeast(cfg, out: Path, repo: Path, epochs: int, files: list[Path]) -> None:
    from recfeast.training import tracking

    @tracking.tracked("bench")
    def task(cfg, log=print):
        tracking.current().start(cfg, {"recfeast.feature_service": "ranking_v1"}, out, repo)
        for v in VARIANTS:
            for e in range(1, epochs + 1):
                tracking.current().log_epoch(v, e, {"train_loss": 1 / e, "val_loss": 1.1 / e})
        tracking.current().log_result({"ablation": [{"variant": v, **{f"m{i}": i / 10 for i in range(8)}}
                                                    for v in VARIANTS]}, files, {"recfeast.model.text": "m@sha256:1"})

    task(cfg, log=lambda *_: None)


def _fluent(cfg, epochs: int, files: list[Path]) -> None:
    import dataclasses

    import mlflow

    from recfeast import mlflow_store

    mlflow.set_experiment(experiment_id=mlflow_store.experiment_id(mlflow.MlflowClient(), "bench-fluent"))
    with mlflow.start_run():
        mlflow.log_params({k: str(v) for k, v in dataclasses.asdict(cfg).items()})
        mlflow.set_tags({"recfeast.feature_service": "ranking_v1", "recfeast.model.text": "m@sha256:1"})
        for v in VARIANTS:
            name = v.replace("+ ", "").replace(" ", "_")
            for e in range(1, epochs + 1):
                mlflow.log_metric(f"{name}/train_loss", 1 / e, step=e)
                mlflow.log_metric(f"{name}/val_loss", 1.1 / e, step=e)
        for v in VARIANTS:
            for i in range(8):
                mlflow.log_metric(f"ablation/{v.replace('+ ', '').replace(' ', '_')}/m{i}", i / 10)
        for f in files:
            mlflow.log_artifact(str(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from bench.common import machine
    from recfeast import mlflow_store
    from recfeast.training.config import TrainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench_tracking_"))
    repo = tmp / "repo"
    (repo / "data").mkdir(parents=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["RECFEAST_TRACKING"] = "1"
    files = [tmp / "ablation.md", tmp / "curves.png"]
    files[0].write_text("| a |\n" * 50)
    files[1].write_bytes(os.urandom(80_000))
    cfg = TrainConfig(out_dir=str(tmp / "out"))
    uri = mlflow_store.tracking_uri(repo)
    import mlflow

    mlflow.set_tracking_uri(uri)
    times = {"mlflow fluent API (anchor)": [], "recfeast tracker": []}
    for i in range(args.repeat + 1):
        t = time.perf_counter()
        _fluent(cfg, args.epochs, files)
        a = time.perf_counter() - t
        t = time.perf_counter()
        _recfeast(cfg, tmp / "out", repo, args.epochs, files)
        b = time.perf_counter() - t
        if i:
            times["mlflow fluent API (anchor)"].append(a)
            times["recfeast tracker"].append(b)
    anchor = statistics.median(times["mlflow fluent API (anchor)"])
    print(f"{machine()}; load {os.getloadavg()}; {args.epochs} epochs x {len(VARIANTS)} variants x 2 curves")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} s | {anchor / med:.2f}x | runs {', '.join(f'{x:.2f}' for x in ts)} |")


if __name__ == "__main__":
    main()
