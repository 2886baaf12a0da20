"""The ``recfeast`` command: thin wrappers over importable functions.

- ``recfeast materialize --data-dir DIR``: :func:`recfeast.materialize.job.run`
- ``recfeast lookup --user U --items I1,I2``: :class:`recfeast.serving.sdk.OnlineFeatureClient`
- ``recfeast train --data-dir DIR``: :func:`recfeast.training.train`
- ``recfeast schedule --data-dir DIR`` / ``recfeast jobs``: :mod:`recfeast.materialize.schedule`
"""

from __future__ import annotations

import json
import re
import sys
import warnings

import click

from recfeast import config
from recfeast.errors import RecfeastError


def _quiet_library_warnings() -> None:
    # Feast warns that on-demand views are experimental on every apply; ibis warns about a
    # DuckDB deprecation on every read. Neither is actionable for a recfeast user.
    for category in (DeprecationWarning, RuntimeWarning, UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(feast|ibis|duckdb|transformers)(\.|$)")


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="recfeast")
def main() -> None:
    """recfeast: real-time feature platform for search and recommendation, on Feast."""
    _quiet_library_warnings()


_repo_opt = click.option("--repo-path", type=click.Path(file_okay=False), default=None,
                         help="Feature repository (folder with feature_store.yaml). "
                              "Default: $RECFEAST_REPO_PATH or ./feature_repo.")
_store_opt = click.option("--online-store", type=click.Choice(["sqlite", "redis"]), default=None,
                          help="Online store. Default: $RECFEAST_ONLINE_STORE or sqlite. "
                               "Redis address: $REDIS_CONNECTION_STRING (default 127.0.0.1:6379).")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder (MovieLens-100k layout or canonical items/users/events files). "
                   "Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@_store_opt
@click.option("--image-backbone", type=click.Choice(["efficientnet-lite0", "resnet18", "resnet50"]),
              default="efficientnet-lite0", show_default=True, help="CNN for image embeddings.")
@click.option("--image-weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Local weights file for the image backbone (needed for ResNets without torchvision's cache).")
@click.option("--no-apply", is_flag=True, help="Write the feature tables only; skip feast apply and materialize.")
@click.option("--no-online", is_flag=True, help="Apply, but do not load the online store.")
@click.option("--quiet", is_flag=True, help="No progress output; print only the summary.")
def materialize(data_dir, repo_path, online_store, image_backbone, image_weights, no_apply, no_online, quiet):
    """Read, clean and encode DATA_DIR into feature tables, then feast apply and materialize."""
    from recfeast.materialize.job import JobConfig, run

    cfg = JobConfig(data_dir=data_dir, repo=repo_path, online_store=online_store, image_backbone=image_backbone,
                    image_weights=image_weights, apply=not no_apply, materialize=not no_online, progress=not quiet)
    try:
        summary = run(cfg)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(summary.render())


def _compact_json(obj) -> str:
    """Indented JSON with each list of numbers kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


@main.command()
@click.option("--user", "user_id", type=int, required=True, help="User id.")
@click.option("--items", "items", required=True, help="Comma-separated item ids, e.g. 242,302,377.")
@click.option("--feature-service", default="ranking_v1", show_default=True)
@click.option("--request-ts", type=int, default=None, help="Request time, unix seconds (default: now).")
@_repo_opt
@_store_opt
def lookup(user_id, items, feature_service, request_ts, repo_path, online_store):
    """Print, as JSON, the feature service's online features for one user and some items."""
    from recfeast.serving.sdk import OnlineFeatureClient

    try:
        item_ids = [int(x) for x in items.split(",") if x.strip()]
    except ValueError:
        _fail(RecfeastError(f"--items {items!r}: expected comma-separated integers, e.g. 242,302,377"))
    try:
        client = OnlineFeatureClient(repo_path, online_store, feature_service)
        feats = client.get_features(user_id, item_ids, request_ts)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(_compact_json(feats.to_json()))


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder read by the tables job. Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--online-stores", default="sqlite", show_default=True,
              help="Comma-separated online stores the load_online job fills (sqlite, redis).")
@click.option("--tables-every", default="60", show_default=True,
              help="Tables job trigger: minutes between runs, or a crontab line in quotes (UTC).")
@click.option("--load-every", default="10", show_default=True,
              help="load_online job trigger: minutes between runs, or a crontab line (UTC).")
def schedule(data_dir, repo_path, online_stores, tables_every, load_every):
    """Run the scheduled jobs in the foreground (stop with SIGTERM or Ctrl-C)."""
    from recfeast.materialize.schedule import ScheduleConfig, serve

    def trigger(text):
        return {"interval_minutes": float(text)} if text.replace(".", "", 1).isdigit() else {"cron": text}

    stores = tuple(s.strip() for s in online_stores.split(",") if s.strip())
    try:
        for kind in stores:
            config.online_store(kind)
        serve(ScheduleConfig(data_dir=data_dir, repo=repo_path, online_stores=stores,
                             triggers={"tables": trigger(tables_every), "load_online": trigger(load_every)}),
              log=click.echo)
    except RecfeastError as exc:
        _fail(exc)


@main.command()
@_repo_opt
@click.option("--limit", default=20, show_default=True, help="Runs to list, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def jobs(repo_path, limit, as_json):
    """List recent runs of the scheduled jobs (start, end, status, rows, detail)."""
    from recfeast.materialize.schedule import recent_runs

    try:
        runs = recent_runs(config.repo_path(repo_path), limit)
    except RecfeastError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    click.echo(f"{'id':>5}  {'job':<12}{'started (UTC)':<27}{'ended (UTC)':<27}{'status':<9}{'rows':>8}  detail")
    for r in runs:
        detail = (r["detail"] or "").splitlines()[0][:60] if r["detail"] else ""
        click.echo(f"{r['id']:>5}  {r['job']:<12}{r['started_at']:<27}{(r['ended_at'] or ''):<27}"
                   f"{r['status']:<9}{(r['rows'] if r['rows'] is not None else ''):>8}  {detail}")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder (the labels come from its events). Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--out-dir", default="runs/ranking", show_default=True, help="Checkpoint, metrics, plots.")
@click.option("--val-start", default="1998-03-01", show_default=True, help="T1: validation from here.")
@click.option("--test-start", default="1998-03-29", show_default=True, help="T2: test from here.")
@click.option("--negatives", default=2, show_default=True, type=click.IntRange(min=1),
              help="Sampled negatives per positive.")
@click.option("--groups", default="behavior,text,image,sequence", show_default=True,
              help="Feature groups of the model (behavior is always on).")
@click.option("--max-epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--eval-users", default=300, show_default=True, type=click.IntRange(min=0),
              help="Users in the NDCG/HR evaluation (0 = all).")
@click.option("--eval-negatives", default=99, show_default=True, type=click.IntRange(min=1),
              help="Never-rated items ranked against each positive.")
@click.option("--no-ablation", is_flag=True, help="Train only the configured model (and the popularity baseline).")
@click.option("--reproducible", is_flag=True, help="Hide feature rows created after each example's time.")
@click.option("--seed", default=0, show_default=True)
def train(data_dir, repo_path, out_dir, val_start, test_start, negatives, groups, max_epochs, eval_users,
          eval_negatives, no_ablation, reproducible, seed):
    """Build a point-in-time training set, train the ranking model, print test metrics and the ablation."""
    from recfeast.training.config import TrainConfig
    from recfeast.training.task import train as run_train

    cfg = TrainConfig(repo=repo_path, data_dir=data_dir, out_dir=out_dir, val_start=val_start,
                      test_start=test_start, negatives_per_positive=negatives,
                      groups=tuple(g.strip() for g in groups.split(",") if g.strip()), max_epochs=max_epochs,
                      eval_max_users=eval_users or None, eval_negatives=eval_negatives, ablation=not no_ablation, reproducible=reproducible,
                      seed=seed)
    try:
        run_train(cfg, log=click.echo)
    except RecfeastError as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
