"""The ``recfeast`` command: thin wrappers over importable functions.

- ``recfeast materialize --data-dir DIR``: :func:`recfeast.materialize.job.run`
- ``recfeast lookup --user U --items I1,I2``: :class:`recfeast.serving.sdk.OnlineFeatureClient`
- ``recfeast train --data-dir DIR``: :func:`recfeast.training.train`
- ``recfeast schedule --data-dir DIR`` / ``recfeast jobs``: :mod:`recfeast.materialize.schedule`
- ``recfeast ingest [FILE]``: :class:`recfeast.materialize.ingest.Ingestor`
- ``recfeast replay-check --data-dir DIR``: :func:`recfeast.materialize.replay.replay_check`
- ``recfeast finetune text|sequence``: :mod:`recfeast.training.text_finetune`, :mod:`recfeast.training.sequence_task`
- ``recfeast models list|register|promote``: :mod:`recfeast.model_registry`, :mod:`recfeast.materialize.rollout`
- ``recfeast serve``: :func:`recfeast.serving.api.serve`; ``recfeast keys create|list|revoke``: :mod:`recfeast.cli_keys`
- ``recfeast datasets download movielens-100k``: :mod:`recfeast.datasets` (``recfeast/cli_datasets.py``)
- ``recfeast reset``: :mod:`recfeast.housekeeping` (``recfeast/cli_reset.py``)
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
    from recfeast.redact import redact

    click.echo(f"error: {redact(exc)}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Every command's unexpected error ends as one redacted line, never a traceback that could
    quote a connection string (``RECFEAST_DEBUG=1`` shows the traceback, redacted)."""

    def invoke(self, ctx):
        import os

        from recfeast.redact import redact

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except RecfeastError as exc:
            _fail(exc)
        except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a message
            if os.environ.get("RECFEAST_DEBUG"):
                import traceback

                click.echo(redact(traceback.format_exc()), err=True)
            click.echo(f"error: {type(exc).__name__}: {redact(exc)} (set RECFEAST_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="recfeast")
def main() -> None:
    """recfeast: real-time feature platform for search and recommendation, on Feast."""
    _quiet_library_warnings()


_repo_opt = click.option("--repo-path", type=click.Path(file_okay=False), default=None,
                         help="Feature repository (folder with feature_store.yaml). "
                              "Default: $RECFEAST_REPO_PATH or ./feature_repo.")
_engine_opts = [
    click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="Where encoding and the online load run: this process, or a Ray cluster "
                      "(Ray Data actor pools; partitioned online writes)."),
    click.option("--ray-address", default=None, envvar="RAY_ADDRESS",
                 help="Ray cluster (host:port of the head's GCS) for --engine ray. "
                      "Default: $RAY_ADDRESS, else a local cluster started for the run."),
]


def _with_engine_opts(f):
    for opt in reversed(_engine_opts):
        f = opt(f)
    return f


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
@_with_engine_opts
def materialize(data_dir, repo_path, online_store, image_backbone, image_weights, no_apply, no_online, quiet,
                engine, ray_address):
    """Read, clean and encode DATA_DIR into feature tables, then feast apply and materialize."""
    from recfeast.materialize.job import JobConfig, run
    from recfeast.materialize.schedule import recorded_run

    cfg = JobConfig(data_dir=data_dir, repo=repo_path, online_store=online_store, image_backbone=image_backbone,
                    image_weights=image_weights, apply=not no_apply, materialize=not no_online, progress=not quiet,
                    engine=engine, ray_address=ray_address)

    try:
        # recorded in `recfeast jobs`; waits for a scheduled job that holds the tables lock
        with recorded_run(config.repo_path(repo_path), "materialize") as rec:
            summary = run(cfg)
            rec.rows = sum(t.get("rows", 0) for t in summary.tables.values())
            rec.detail = json.dumps({"online_store": summary.online_store or None,
                                     "new_or_changed": {k: t.get("new_or_changed", 0) for k, t in summary.tables.items()},
                                     "loaded_online": {k: t["loaded_online"] for k, t in summary.tables.items()
                                                       if "loaded_online" in t}})
    except RecfeastError as exc:
        _fail(exc)
    click.echo(summary.render())


def _compact_json(obj) -> str:
    """Indented JSON with each list of numbers kept on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


@main.command()
@click.option("--user", "user_id", required=True,
              help="User id: an integer, or a string where the catalog spec declares string user ids.")
@click.option("--items", "items", required=True,
              help="Comma-separated item ids, e.g. 242,302,377 (strings where the spec says so).")
@click.option("--feature-service", default="ranking_v1", show_default=True)
@click.option("--request-ts", type=int, default=None, help="Request time, unix seconds (default: now).")
@_repo_opt
@_store_opt
def lookup(user_id, items, feature_service, request_ts, repo_path, online_store):
    """Print, as JSON, the feature service's online features for one user and some items."""
    import warnings

    from recfeast.errors import EmptyResultWarning
    from recfeast.serving.sdk import OnlineFeatureClient

    try:
        client = OnlineFeatureClient(repo_path, online_store, feature_service)
        ids = [x.strip() for x in items.split(",") if x.strip()]
        item_ids = [client.parse_key(x, f"--items[{n}]") for n, x in enumerate(ids)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyResultWarning)   # said below, once, with the exit code
            feats = client.get_features(client.parse_key(user_id, "--user"), item_ids, request_ts)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(_compact_json(feats.to_json()))
    if feats.nothing_found:
        click.echo(f"error: nothing found for user {user_id} or items {items} in the {client.online_store} online "
                   f"store of {client.store.repo_path} (project {client.store.project!r}): the store is empty, was "
                   "never loaded, or these ids do not exist. Load it with `recfeast materialize` (same "
                   "--online-store).", err=True)
        sys.exit(1)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, exists=True), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder read by the tables job. Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--online-stores", default="sqlite", show_default=True,
              help="Comma-separated online stores the load_online job fills (sqlite, redis).")
@click.option("--embeddings-every", default="60", show_default=True,
              help="embeddings job (re-embed new or changed items) trigger: minutes between runs, or a "
                   "crontab line in quotes (UTC).")
@click.option("--aggregates-every", default="30", show_default=True,
              help="aggregates job (behaviour, content, sequence and real-time tables) trigger.")
@click.option("--load-every", default="10", show_default=True,
              help="load_online job trigger: minutes between runs, or a crontab line (UTC).")
@_with_engine_opts
def schedule(data_dir, repo_path, online_stores, embeddings_every, aggregates_every, load_every, engine, ray_address):
    """Run the scheduled jobs in the foreground (stop with SIGTERM or Ctrl-C)."""
    from recfeast.materialize.schedule import ScheduleConfig, serve

    def trigger(text):
        if re.fullmatch(r"[0-9]+(\.[0-9]*)?", text.strip()):
            return {"interval_minutes": float(text)}
        return {"cron": text}

    stores = tuple(s.strip() for s in online_stores.split(",") if s.strip())
    if not stores:
        _fail(RecfeastError("--online-stores is empty: name at least one of sqlite, redis"))
    try:
        for kind in stores:
            config.online_store(kind)
        serve(ScheduleConfig(data_dir=data_dir, repo=repo_path, online_stores=stores, engine=engine,
                             ray_address=ray_address,
                             triggers={"embeddings": trigger(embeddings_every),
                                       "aggregates": trigger(aggregates_every), "load_online": trigger(load_every)}),
              log=click.echo)
    except RecfeastError as exc:
        _fail(exc)


@main.command()
@_repo_opt
@click.option("--limit", default=20, show_default=True, help="Runs to list, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def jobs(repo_path, limit, as_json):
    """List recent runs of the scheduled jobs and of `recfeast materialize` (start, end, status, rows,
    detail; passwords redacted).

    Status: waiting (for the tables lock), running (since it took the lock), ok, failed, skipped
    (another run of the job held its lock), interrupted (the scheduler was stopped, or its process is
    gone: shown, and recorded, as interrupted), cancelled (the scheduler was stopped while the run waited)."""
    from recfeast.materialize.schedule import recent_runs

    try:
        runs = recent_runs(config.repo_path(repo_path), limit)
    except RecfeastError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo(f"no runs yet in {config.repo_path(repo_path)}: `recfeast materialize` and `recfeast schedule` "
                   "record theirs here")
        return
    click.echo(f"{'id':>5}  {'job':<12}{'started (UTC)':<27}{'ended (UTC)':<27}{'status':<9}{'rows':>8}  detail")
    for r in runs:
        detail = (r["detail"] or "").splitlines()[0][:60] if r["detail"] else ""
        click.echo(f"{r['id']:>5}  {r['job']:<12}{r['started_at']:<27}{(r['ended_at'] or ''):<27}"
                   f"{r['status']:<9}{(r['rows'] if r['rows'] is not None else ''):>8}  {detail}")


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@_repo_opt
@_store_opt
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Events per ingest call (one log transaction and one push each).")
def ingest(source, repo_path, online_store, batch_size):
    """Ingest behaviour events from SOURCE (JSON lines; default stdin) and update real-time features.

    Each line: {"user_id": 196, "item_id": 242, "action": "click", "event_timestamp": 1700000000}
    ("value" is required for action "rate"). Bad lines are reported with the reason and set aside in
    <repo>/data/events/rejected.jsonl; the rest go through. Prints a JSON summary.

    With the online store down every valid event is still logged: the summary lists the batches
    (line ranges) that were pushed, pushed at the end (one retry), or wait for the next load, and
    the command exits with status 3 when some wait.
    """
    from recfeast.materialize.ingest import Ingestor, InvalidRecord

    def batches():
        batch, line_of = [], []
        for n, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            try:
                batch.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                batch.append(InvalidRecord(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                                           raw.decode("utf-8", errors="replace").rstrip("\n")))
            except json.JSONDecodeError as exc:
                batch.append(InvalidRecord(f"not valid JSON ({exc.msg} at column {exc.colno})",
                                           raw.decode("utf-8").rstrip("\n")))
            except ValueError as exc:   # e.g. an integer of more than 4300 digits
                batch.append(InvalidRecord(f"not usable JSON ({str(exc)[:80]})", raw.decode("utf-8")[:200]))
            line_of.append(n)
            if len(batch) >= batch_size:
                yield f"lines {line_of[0]}-{line_of[-1]}", batch, [f"line {k}" for k in line_of]
                batch, line_of = [], []
        if batch:
            yield f"lines {line_of[0]}-{line_of[-1]}", batch, [f"line {k}" for k in line_of]

    def store_down(error):
        click.echo(f"warning: the online store refused a push ({error}); every valid event is still logged; "
                   "going on without pushing, one retry at the end", err=True)

    try:
        ing = Ingestor(repo_path, online_store)
        report = ing.ingest_batches(batches(), on_store_error=store_down)
    except RecfeastError as exc:
        _fail(exc)
    report["first_rejections"] = [{"line": int(r["source"].split()[-1]), "reason": r["reason"]}
                                  for r in report["first_rejections"]]
    click.echo(json.dumps(report, indent=2))
    if report["waiting"]:
        click.echo(f"warning: {report['waiting_users']} users' real-time features ({', '.join(report['waiting'])}) "
                   "wait for the next load (`recfeast schedule`'s load_online job, or the next ingest of those "
                   "users); their events are in the event log", err=True)
        sys.exit(3)


@main.command("replay-check")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder whose ratings are replayed. Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@_store_opt
@click.option("--days", default=14.0, show_default=True, help="Stream this many final days; backfill the rest.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Events per ingest call while streaming (1 = event by event).")
@click.option("--no-backfill", is_flag=True, help="Stream only the final days, without the earlier history.")
def replay_check_cmd(data_dir, repo_path, online_store, days, batch_size, no_backfill):
    """Stream the final DAYS of ratings through the ingest path, then check online == batch recomputation."""
    from recfeast.materialize.replay import replay_check

    try:
        report = replay_check(data_dir, repo_path, online_store, days=days, batch_size=batch_size,
                              backfill=not no_backfill)
    except RecfeastError as exc:
        _fail(exc)
    out = report.to_json()
    out["mismatches"] = out["mismatches"][:20]
    click.echo(json.dumps(out, indent=2, default=str))
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder (the labels come from its events). Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--out-dir", default="runs/ranking", show_default=True, help="Checkpoint, metrics, plots.")
@click.option("--val-start", default=None, help="T1: validation from here (a date). Default: the catalog spec's split.")
@click.option("--test-start", default=None, help="T2: test from here (a date). Default: the catalog spec's split.")
@click.option("--positive-min-value", type=float, default=None,
              help="Override the spec's threshold for valued positives (e.g. ratings >= 4).")
@click.option("--negatives", default=2, show_default=True, type=click.IntRange(min=1),
              help="Sampled negatives per positive.")
@click.option("--embedding-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 0.95),
              help="Drop each projected embedding per example in training: 0.5 stops content vectors from "
                   "memorising items on sparse catalogs (BENCHMARKS.md, H&M).")
@click.option("--groups", default="behavior,text,image,sequence", show_default=True,
              help="Feature groups of the model (behavior is always on).")
@click.option("--max-epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--eval-users", default=300, show_default=True, type=click.IntRange(min=0),
              help="Users in the NDCG/HR evaluation (0 = all).")
@click.option("--eval-negatives", default=99, show_default=True, type=click.IntRange(min=1),
              help="Never-rated items ranked against each positive.")
@click.option("--no-ablation", is_flag=True, help="Train only the configured model (and the popularity baseline).")
@click.option("--keep-training-set", is_flag=True,
              help="Also write the joined training set, vectors included (about 8 KB a row on MovieLens), as "
                   "training_set.parquet. By default only its entity rows and provenance are kept "
                   "(training_entities.parquet), from which the feature service rebuilds it.")
@click.option("--allow-values-created-later", "allow_later", is_flag=True,
              help="Also join feature values created after each example's time (backfills, late corrections). "
                   "Off by default: such values leak the future into training.")
@click.option("--seed", default=0, show_default=True)
def train(data_dir, repo_path, out_dir, val_start, test_start, positive_min_value, negatives, embedding_dropout, groups,
          max_epochs, eval_users, eval_negatives, no_ablation, keep_training_set, allow_later, seed):
    """Build a point-in-time training set, train the ranking model, print test metrics and the ablation."""
    from recfeast.training.config import TrainConfig
    from recfeast.training.task import train as run_train

    cfg = TrainConfig(repo=repo_path, data_dir=data_dir, out_dir=out_dir, val_start=val_start,
                      test_start=test_start, positive_min_value=positive_min_value, negatives_per_positive=negatives,
                      embedding_dropout=embedding_dropout,
                      groups=tuple(g.strip() for g in groups.split(",") if g.strip()), max_epochs=max_epochs,
                      eval_max_users=eval_users or None, eval_negatives=eval_negatives, ablation=not no_ablation, allow_values_created_later=allow_later,
                      keep_training_set=keep_training_set,
                      seed=seed)
    try:
        run_train(cfg, log=click.echo)
    except RecfeastError as exc:
        _fail(exc)


def _not_nan(value: float, param) -> float:
    """``value``, refusing NaN (click's FloatRange lets it through: every comparison with it is false).

    Raises:
        click.BadParameter: ``value`` is NaN.
    """
    if value != value:
        raise click.BadParameter("expected a number, not nan", param=param)
    return value


@main.command()
@_repo_opt
@_store_opt
@click.option("--model", "checkpoint", default="runs/ranking/ranking_model.pt", show_default=True,
              type=click.Path(dir_okay=False), help="Ranking model checkpoint written by `recfeast train`.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--as-of", type=int, default=None,
              help="Unix seconds used as 'now' for request-time features, to replay historical data "
                   "(MovieLens-100k ends at 893286638). Default: the clock.")
@click.option("--candidates", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Items retrieved by nearest-neighbour search before ranking.")
@click.option("--no-search", is_flag=True, help="Do not load the text encoder (/search answers 422).")
@click.option("--refresh-every", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between checks of the tables for new item embeddings (0: never).")
@click.option("--torch-threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads per model call; requests run in parallel on top.")
@click.option("--api-keys-file", "--keys-file", "api_keys_file", type=click.Path(dir_okay=False), envvar="RECFEAST_API_KEYS_FILE", default=None,
              help="Keys file of `recfeast keys create`. Default: $RECFEAST_API_KEYS_FILE, else "
                   "<repo>/data/api_keys.json when it exists. Keys can also come from $RECFEAST_API_KEYS.")
@click.option("--allow-anonymous", envvar="RECFEAST_API_ALLOW_ANONYMOUS", is_flag=True,
              help="Serve requests without an API key (local development only: anyone who reaches the port "
                   "can read and write).")
@click.option("--max-body-bytes", envvar="RECFEAST_API_MAX_BODY_BYTES", default=1_048_576, show_default=True, type=click.IntRange(min=1024),
              help="Largest request body (413 above).")
@click.option("--max-items", envvar="RECFEAST_API_MAX_ITEMS", default=1000, show_default=True, type=click.IntRange(1, 1000),
              help="Item ids per /features call.")
@click.option("--max-items-vectors", envvar="RECFEAST_API_MAX_ITEMS_VECTORS", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="Item ids per /features call with vectors.")
@click.option("--rate-limit", envvar="RECFEAST_API_RATE_PER_S", default=50.0, show_default=True, type=click.FloatRange(min=0),
              help="Requests per second per API key (per client address without a key); 0: no limit.")
@click.option("--burst", envvar="RECFEAST_API_BURST", default=100, show_default=True, type=click.IntRange(min=1),
              help="Requests allowed at once above the rate.")
@click.option("--compute-threads", envvar="RECFEAST_API_COMPUTE_THREADS", default=1, show_default=True,
              type=click.IntRange(1, 64),
              help="/recommend, /search and /features requests computed at once (they hold Python's GIL; "
                   "a second thread hides the round trip of a store on another host; run more processes "
                   "for more cores).")
@click.option("--health-max-lag", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a feature table may be newer than the last online load before /health says 'behind'.")
@click.option("--item-cache", default=20_000, show_default=True, type=click.IntRange(min=0),
              help="Items whose features are kept in process between online loads (emptied by each "
                   "`recfeast` load, after --item-cache-age, or when full); 0: read every candidate from the store.")
@click.option("--item-cache-age", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              callback=lambda ctx, param, value: _not_nan(value, param),
              help="Seconds a cached item row serves at most (bounds staleness after a `feast materialize`, "
                   "which leaves no load sentinel).")
def serve(repo_path, online_store, checkpoint, host, port, as_of, candidates, no_search, refresh_every,
          torch_threads, api_keys_file, allow_anonymous, max_body_bytes, max_items, max_items_vectors, rate_limit,
          burst, compute_threads, health_max_lag, item_cache, item_cache_age):
    """Serve /features, /recommend, /search, /events, /health, /metrics and /admin/reload over HTTP
    (FastAPI). Refuses to start without an API key unless --allow-anonymous."""
    from pathlib import Path

    from recfeast.serving.api import serve as run_server
    from recfeast.serving.security import ApiSettings
    from recfeast.serving.service import ServiceConfig

    try:
        if api_keys_file is None:
            default = config.repo_path(repo_path) / "data" / "api_keys.json"
            api_keys_file = default if default.is_file() else None
        settings = ApiSettings(keys_file=Path(api_keys_file) if api_keys_file else None,
                               allow_anonymous=allow_anonymous, max_body_bytes=max_body_bytes, max_items=max_items,
                               max_items_vectors=max_items_vectors, rate_per_s=rate_limit, burst=burst,
                               compute_threads=compute_threads)
        cfg = ServiceConfig(checkpoint=checkpoint, repo=repo_path, online_store=online_store, as_of=as_of,
                            candidates=candidates, load_query_encoder=not no_search, refresh_every_s=refresh_every,
                            health_max_lag_s=health_max_lag, item_cache=item_cache,
                            item_cache_max_age_s=item_cache_age)
        run_server(cfg, host=host, port=port, torch_threads=torch_threads, log=click.echo,
                   ingestor_factory=_service_ingestor, settings=settings, reloader_factory=_service_reloader)
    except RecfeastError as exc:
        _fail(exc)
    except ValueError as exc:   # pydantic's ValidationError from RECFEAST_API_* values
        _fail(RecfeastError(f"API settings: {exc}"))


def _service_ingestor(service):
    """The /events ingest path of a running server: the materialize package's Ingestor on the
    service's repository, store and project (the CLI wires the siblings together)."""
    from recfeast.materialize.ingest import Ingestor

    store = service.client.store
    return Ingestor(repo=store.repo_path, online_store=service.client.online_store, project=store.project)


def _service_reloader(service):
    """The /admin/reload path of a running server: ``() -> dict`` that reloads the service's online
    store from its tables (:func:`recfeast.materialize.online.load`) under the tables lock the
    scheduler and promotion take, so it never runs beside another writer."""
    from pathlib import Path

    def reload() -> dict:
        from recfeast.materialize import online
        from recfeast.materialize.schedule import job_lock

        store = service.client.store
        repo = Path(store.repo_path)
        with job_lock(repo, "tables", wait=True):
            cleared = online.load(store, config.tables_dir(repo), quiet=True)
        return {"cleared": cleared}

    return reload


@main.group()
def finetune() -> None:
    """Train the encoders on the platform's own data."""


@finetune.command("sequence")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder (the rating sequences come from its events). Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--item-embeddings", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Item table (item_id, text_embedding, text_model). "
                   "Default: <repo>/data/tables/item_text_embedding.parquet from `recfeast materialize`.")
@click.option("--out-dir", default="runs/sequence", show_default=True,
              help="Checkpoint (sequence_encoder.pt), metrics.json, results.md, training_curve.png.")
@click.option("--cell", type=click.Choice(["gru", "lstm"]), default="gru", show_default=True)
@click.option("--hidden-dim", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--max-len", default=20, show_default=True, type=click.IntRange(min=1),
              help="Items the encoder reads (materialization reads 20).")
@click.option("--temperature", default=0.05, show_default=True, type=float, help="Softmax temperature on cosines.")
@click.option("--window-stride", default=10, show_default=True, type=click.IntRange(min=1),
              help="Targets per training window (1 = one window per target, as at inference).")
@click.option("--max-epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--patience", default=3, show_default=True, type=click.IntRange(min=1),
              help="Epochs without a better validation NDCG before stopping.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--val-start", default="1998-03-01", show_default=True, help="T1: validation targets from here.")
@click.option("--test-start", default="1998-03-29", show_default=True, help="T2: test targets from here.")
@click.option("--max-users", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeded sample of users for a quick run (0 = all).")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--seed", default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--register", is_flag=True, help="Register the trained encoder in the repository's model registry.")
def finetune_sequence(data_dir, repo_path, item_embeddings, out_dir, cell, hidden_dim, max_len, temperature,
                      window_stride, max_epochs, patience, batch_size, lr, val_start, test_start, max_users, threads,
                      seed, quiet, register):
    """Train the GRU/LSTM sequence encoder on next-item prediction; print test Recall@10 / NDCG@10
    against the untrained encoder, the last item and popularity."""
    from recfeast.training.sequence_task import SequenceTrainConfig, train_sequence

    cfg = SequenceTrainConfig(repo=repo_path, data_dir=data_dir, item_embeddings=item_embeddings, out_dir=out_dir,
                              cell=cell, hidden_dim=hidden_dim, max_len=max_len, temperature=temperature,
                              window_stride=window_stride, max_epochs=max_epochs, patience=patience,
                              batch_size=batch_size, lr=lr, val_start=val_start, test_start=test_start,
                              max_users=max_users or None, threads=threads, seed=seed, progress=not quiet)
    try:
        train_sequence(cfg, log=click.echo)
        if register:
            from pathlib import Path

            from recfeast import model_registry as registry

            e = registry.register(config.repo_path(repo_path), "sequence", Path(out_dir) / "sequence_encoder.pt")
            click.echo(f"registered sequence model {e['model_id']} (trained on {e['lineage'].get('text_model')})")
    except RecfeastError as exc:
        _fail(exc)


@finetune.command("text")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder (items and ratings). Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--out-dir", default="runs/text_finetune", show_default=True,
              help="model/ (transformers folder + genre head + finetune.json), metrics.json, training_curves.png.")
@click.option("--tasks", default="genre,contrastive", show_default=True,
              help="genre (multi-label head from genre-free text) and/or contrastive (co-rated pairs).")
@click.option("--max-epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--pairs-per-epoch", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=8), help="Tokens per text.")
@click.option("--train-layers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Top transformer layers to update (0 = all: end to end). Fewer is faster on a CPU.")
@click.option("--lr", default=2e-5, show_default=True, type=float)
@click.option("--max-items", default=0, show_default=True, type=click.IntRange(min=0),
              help="Most-rated items only, for a quick run (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--register", is_flag=True, help="Register the result in the repository's model registry.")
def finetune_text(data_dir, repo_path, out_dir, tasks, max_epochs, pairs_per_epoch, max_length, train_layers, lr,
                  max_items, seed, register):
    """Fine-tune the BERT text encoder end to end (genre head + contrastive pairs); print before/after
    genre micro-F1 and next-item Recall@10 / NDCG@10 on a held-out period."""
    from recfeast.training.text_finetune import TextFinetuneConfig, finetune_text as run_finetune

    cfg = TextFinetuneConfig(data_dir=data_dir, out_dir=out_dir, max_epochs=max_epochs, pairs_per_epoch=pairs_per_epoch,
                             tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), max_length=max_length,
                             train_layers=train_layers or None, lr=lr, max_items=max_items or None, seed=seed)
    try:
        res = run_finetune(cfg, log=click.echo)
        if register:
            from recfeast import model_registry as registry

            e = registry.register(config.repo_path(repo_path), "text", res["model_dir"])
            click.echo(f"registered text model {e['model_id']}")
    except RecfeastError as exc:
        _fail(exc)
    click.echo(json.dumps({"model_id": res["model_id"], "metrics": res["metrics"]}, indent=2, default=str))


@main.group()
def models() -> None:
    """The model registry: list, register and promote encoder versions."""


def _headline(metrics: dict) -> str:
    """A registered model's key test metrics on one line."""
    if isinstance(metrics.get("after"), dict):        # recfeast finetune text
        a = metrics["after"]
        return (f"genre micro-F1 {a.get('genre_probe_micro_f1', float('nan')):.4f}, next-item "
                f"recall@10 {a.get('recall@10', float('nan')):.4f} ndcg@10 {a.get('ndcg@10', float('nan')):.4f}")
    if isinstance(metrics.get("test"), dict) and "auc" in metrics["test"]:   # recfeast train (ranking)
        t = metrics["test"]
        return " ".join(f"{k.upper()} {v:.4f}" for k, v in t.items() if k.startswith(("auc", "ndcg@", "hr@")) and v is not None)
    for row in metrics.get("test") or []:            # recfeast finetune sequence
        if isinstance(row, dict) and row.get("method") == "trained":
            return f"next-item recall@10 {row['recall@10']:.4f} ndcg@10 {row['ndcg@10']:.4f}"
    return ""


@models.command("list")
@_repo_opt
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def models_list(repo_path, as_json):
    """Registered encoders (production marked with *), and the serving project."""
    from recfeast import model_registry as registry

    try:
        reg = registry.load(config.repo_path(repo_path))
    except RecfeastError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(reg, indent=2))
        return
    for kind in registry.REGISTRABLE:
        prod = reg["production"].get(kind)
        if kind in registry.KINDS:
            click.echo(f"{kind}: production = {prod or 'default (built in)'}")
        elif any(m["kind"] == kind for m in reg["models"]):
            click.echo(f"{kind}:")
        for m in (m for m in reg["models"] if m["kind"] == kind):
            click.echo(f"  {'*' if m['model_id'] == prod else ' '} {m['model_id']}  registered {m['registered_at']}  "
                       f"{_headline(m.get('metrics') or {})}")
    click.echo(f"serving project: {reg.get('serving_project') or 'the feature_store.yaml project'}")


@models.command("register")
@click.argument("kind", type=click.Choice(["text", "sequence", "ranking"]))
@click.argument("artefact", type=click.Path(exists=True))
@_repo_opt
def models_register(kind, artefact, repo_path):
    """Register a trained model (a transformers folder for text, a checkpoint file for sequence, the
    ranking_model.pt of `recfeast train` for ranking) in the MLflow model registry."""
    from recfeast import model_registry as registry

    try:
        e = registry.register(config.repo_path(repo_path), kind, artefact)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(f"registered {kind} model {e['model_id']} -> {e['path']}")


@models.command("promote")
@click.option("--text", "text_id", default=None, help="Text model id to serve, or 'default' (packaged MiniLM).")
@click.option("--sequence", "sequence_id", default=None, help="Sequence model id, or 'default' (seeded GRU).")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="RECFEAST_DATA_DIR", required=True,
              help="Raw data folder the tables are rebuilt from. Default: $RECFEAST_DATA_DIR.")
@_repo_opt
@click.option("--online-stores", default="sqlite", show_default=True, help="Comma-separated: sqlite, redis.")
def models_promote(text_id, sequence_id, data_dir, repo_path, online_stores):
    """Roll a version forward (or back): rebuild the tables with it, load a Feast project of its own,
    then switch production and the serving project together."""
    from recfeast.materialize.rollout import promote

    if text_id is None and sequence_id is None:
        _fail(RecfeastError("nothing to promote: pass --text ID and/or --sequence ID (or 'default')"))
    stores = tuple(s.strip() for s in online_stores.split(",") if s.strip())
    try:
        res = promote(repo_path, data_dir, text_id, sequence_id, stores, log=click.echo)
    except RecfeastError as exc:
        _fail(exc)
    click.echo(json.dumps(res, indent=2, default=str))


from recfeast.cli_keys import keys as _keys_group  # noqa: E402

main.add_command(_keys_group)
from recfeast import cli_stream  # noqa: E402  (new commands attach below, after main exists)

main.add_command(cli_stream.ingest_worker), main.add_command(cli_stream.status)
from recfeast.cli_datasets import datasets as _datasets  # noqa: E402

main.add_command(_datasets)
main.add_command(__import__("recfeast.cli_reset", fromlist=["reset"]).reset)

if __name__ == "__main__":  # pragma: no cover
    main()
