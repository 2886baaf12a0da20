"""``recfeast reset``: a thin wrapper over :mod:`recfeast.housekeeping`."""

from __future__ import annotations

import sys

import click

from recfeast.errors import RecfeastError


@click.command()
@click.option("--repo-path", type=click.Path(file_okay=False), default=None,
              help="Feature repository. Default: $RECFEAST_REPO_PATH or ./feature_repo.")
@click.option("--redis", "with_redis", is_flag=True,
              help="Also remove the repository's projects' keys from Redis ($REDIS_CONNECTION_STRING).")
@click.option("--redis-only", is_flag=True, help="Only remove the Redis keys; keep <repo>/data.")
@click.option("--all", "everything", is_flag=True,
              help="Also delete the embedding cache and the registered (fine-tuned) models.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(repo_path, with_redis, redis_only, everything, yes):
    """Delete what recfeast generated for a repository (<repo>/data: tables, registry, SQLite online
    store, event log, scheduler state; the embedding cache and registered models are kept unless
    --all), and with --redis the Redis keys of its Feast projects. Training outputs (runs/) are not
    touched."""
    from recfeast import config, housekeeping

    try:
        repo = config.repo_path(repo_path)
        what = [] if redis_only else [f"{repo / 'data'}" + ("" if everything else
                                                             f" (keeping {', '.join(housekeeping.KEEP)})")]
        if with_redis or redis_only:
            what.append(f"Redis keys of projects {', '.join(housekeeping.projects(repo))}")
        if not yes:
            click.confirm("delete " + " and ".join(what) + "?", abort=True)
        if with_redis or redis_only:
            for project, n in housekeeping.drop_redis(repo).items():
                click.echo(f"redis: project {project}: {n} keys deleted")
        if not redis_only:
            removed = housekeeping.reset_repo(repo, everything)
            click.echo(f"{repo / 'data'}: removed {', '.join(removed) or 'nothing (already clean)'}")
    except RecfeastError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
