"""``recfeast ingest-worker`` and ``recfeast status``: the event stream's consumers and freshness.

- ``recfeast ingest-worker``: :class:`recfeast.materialize.stream.IngestWorker` (one consumer of the
  Redis event stream's ``ingest`` group; run as many as the load needs, on any machines);
- ``recfeast status``: per feature view, rows, newest event loaded online, event-time lag, last load,
  state (:func:`recfeast.freshness.report`), and the event log's backlog.
"""

from __future__ import annotations

import json
import sys

import click

from recfeast.cli import _fail, _repo_opt, _store_opt
from recfeast.errors import RecfeastError

_log_opt = click.option("--event-log", default=None, envvar="RECFEAST_EVENT_LOG",
                        help="'sqlite' or a Redis URL (redis://HOST:PORT/DB). Default: $RECFEAST_EVENT_LOG or sqlite.")
_project_opt = click.option("--project", default=None, envvar="RECFEAST_PROJECT",
                            help="Feast project (default: feature_store.yaml's; $RECFEAST_PROJECT).")


@click.command("ingest-worker")
@_repo_opt
@_store_opt
@_project_opt
@_log_opt
@click.option("--consumer", default=None, help="Consumer name, unique per live worker. Default: <host>-<pid>.")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(min=1), help="Entries per read.")
@click.option("--block-ms", default=1000, show_default=True, type=click.IntRange(min=0),
              help="How long a read waits for new entries.")
@click.option("--min-idle-ms", default=30_000, show_default=True, type=click.IntRange(min=0),
              help="Entries pending this long in another consumer (dead or stuck) are taken over (XAUTOCLAIM).")
@click.option("--lock-ttl-ms", default=30_000, show_default=True, type=click.IntRange(min=100),
              help="Per-user lock lifetime: the longest a dead worker blocks its users.")
@click.option("--idle-exit", default=None, type=click.FloatRange(min=0),
              help="Exit after this many seconds without events (default: run until SIGTERM).")
@click.option("--quiet", is_flag=True, help="No line per batch; print only the final summary.")
@click.option("--torch-threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads of the sequence encoder per worker: scale with workers, not threads.")
@click.option("--delays-out", type=click.Path(dir_okay=False), default=None,
              help="At exit, write (arrival us, event-to-online seconds) per event as an (n, 2) .npy (benchmarks).")
def ingest_worker(repo_path, online_store, project, event_log, consumer, batch, block_ms, min_idle_ms, lock_ttl_ms,
                  idle_exit, quiet, torch_threads, delays_out):
    """Consume the Redis event stream: compute each user's real-time state and push it online.

    Reads with XREADGROUP (group 'ingest'), takes over entries of dead workers with XAUTOCLAIM,
    pushes under per-user locks, then XACKs. SIGTERM finishes the batch and exits. Prints a JSON
    summary at exit.
    """
    import torch

    from recfeast.materialize.stream import IngestWorker

    torch.set_num_threads(torch_threads)
    try:
        worker = IngestWorker(repo_path, online_store, project, event_log, consumer, batch, block_ms, min_idle_ms,
                              lock_ttl_ms)
        click.echo(f"ingest-worker {worker.consumer} on {worker.log.name}", err=True)
        try:
            stats = worker.run(idle_exit_s=idle_exit, log=None if quiet else (lambda m: click.echo(m, err=True)))
        finally:
            worker.close()
            if delays_out:
                import numpy as np

                np.save(delays_out, np.asarray(worker.delays, np.float64).reshape(-1, 2))
    except RecfeastError as exc:
        _fail(exc)
    click.echo(json.dumps(stats.to_json()))


def _age(seconds) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


@click.command()
@_repo_opt
@_store_opt
@_project_opt
@_log_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--check", is_flag=True, help="Exit with status 1 when a view is stale (for cron/alerting).")
def status(repo_path, online_store, project, event_log, as_json, check):
    """Freshness per feature view (rows, newest event online, event-time lag, last load, state) and
    the event log's backlog. Thresholds: freshness.<view>.max_lag in <repo>/catalog.yaml."""
    from recfeast import config
    from recfeast import store as store_ops
    from recfeast.eventlog import is_streamed, open_event_log
    from recfeast.freshness import report
    from recfeast.redact import redact

    try:
        repo = config.repo_path(repo_path)
        fs = store_ops.feature_store(repo, online_store, project)
        views = report(fs)
        log = open_event_log(repo, event_log, project)
        try:
            stream = {"backend": "redis" if is_streamed(log) else "sqlite",
                      "where": log.name if is_streamed(log) else str(log.path), "events": log.count()}
            if is_streamed(log):
                stream.update(log.group_info())
        finally:
            log.close()
    except RecfeastError as exc:
        _fail(exc)
    except Exception as exc:   # e.g. Redis unreachable
        _fail(RecfeastError(redact(f"{type(exc).__name__}: {exc}")))
    if as_json:
        click.echo(json.dumps({"project": fs.config.project, "online_store": fs.config.online_store.type,
                               "views": views, "event_log": stream}, indent=2, default=str))
    else:
        click.echo(f"project {fs.config.project}, online store {fs.config.online_store.type}")
        click.echo(f"{'view':<26}{'rows':>8}  {'newest event online':<27}{'lag':>9}  {'last load':<27}"
                   f"{'max lag':>8}  state")
        for v in views:
            click.echo(f"{v['view']:<26}{(v['rows'] if v['rows'] is not None else '-'):>8}  "
                       f"{(v['newest_event'] or '-')[:25]:<27}{_age(v['lag_s']):>9}  {(v['last_load'] or '-')[:25]:<27}"
                       f"{_age(v['max_lag_s']):>8}  {v['state']}")
            if v["visibility"]:
                vis = v["visibility"]
                click.echo(f"{'':<26}event-to-online: {vis['count']} events, mean {vis['sum_s'] / vis['count'] * 1000:.1f} ms")
        extra = "".join(f", {k} {stream[k]}" for k in ("pending", "lag", "consumers") if k in stream)
        click.echo(f"event log: {stream['backend']} {stream['where']}: {stream['events']} events{extra}")
    if check and any(v["state"] == "stale" for v in views):
        sys.exit(1)
