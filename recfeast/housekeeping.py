"""Reset a feature repository and remove its projects' keys from Redis (``recfeast reset``).

Everything recfeast generates for a repository lives in ``<repo>/data/`` (tables, quarantine, Feast
registry, SQLite online store, event log, scheduler state and run records, embedding cache,
registered models); Redis holds the online rows of each Feast project the repository applied (the
yaml's project and the ``<project>_<8 hex>`` projects of model promotions). Keys are removed with
Feast's own online-store teardown (per entity join key and project), so nothing outside those
projects is touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from recfeast import config
from recfeast.errors import ConfigError, StoreError

#: kept by :func:`reset_repo` unless ``everything``: expensive to rebuild (embeddings, fine-tuned models)
KEEP = ("embedding_cache", "models")


def projects(repo: Path) -> list[str]:
    """Feast projects this repository applied (from its registry), plus the yaml's project."""
    from recfeast import store

    repo = config.repo_path(repo)
    names = set()
    if (repo / "data" / "registry.db").is_file():
        fs = store.feature_store(repo, "sqlite")
        names |= {p.name for p in fs.registry.list_projects(allow_cache=False)}
    names.add(store.repo_config(repo, "sqlite").project)
    return sorted(names)


def drop_redis(repo: Path) -> dict[str, int]:
    """Delete the Redis online rows of every project of ``repo`` (at ``$REDIS_CONNECTION_STRING``).

    Returns:
        ``{project: keys deleted}``.

    Raises:
        StoreError: Redis cannot be reached (the message names the redacted address).
    """
    from recfeast import store
    from recfeast.redact import redact

    repo = config.repo_path(repo)
    out = {}
    for project in projects(repo):
        fs = store.feature_store(repo, "redis", project)
        try:
            online = fs._get_provider().online_store
            client = online._get_client(fs.config.online_store)
            pattern = b"*" + project.encode()
            before = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
            views = fs.list_feature_views() if (repo / "data" / "registry.db").is_file() else []
            online.teardown(fs.config, views, fs.list_entities() if views else [])
            after = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        except Exception as exc:   # redis ConnectionError and friends
            raise StoreError(f"cannot remove project {project!r}'s keys from Redis at "
                             f"{redact(config.redis_connection_string())}: {exc}") from exc
        out[project] = before - after
    return out


def reset_repo(repo: Path, everything: bool = False) -> list[str]:
    """Delete what recfeast generated in ``<repo>/data/``, keeping :data:`KEEP` unless ``everything``.

    Refuses while a scheduled job or ``recfeast materialize`` holds the tables lock. The folder is
    first renamed away (atomic), then deleted, so an interrupted reset leaves either the old folder
    or none.

    Returns:
        The names removed from ``<repo>/data``.

    Raises:
        ConfigError: a job is running on this repository.
    """
    import fcntl

    repo = config.repo_path(repo)
    data = repo / "data"
    if not data.is_dir():
        return []
    lock = data / "scheduler" / "tables.lock"   # recfeast.materialize.schedule.job_lock(repo, "tables")
    if lock.is_file():
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                raise ConfigError(f"a job holds the tables lock of {repo} (recfeast schedule or materialize "
                                  "is running): stop it first") from None
    keep = [] if everything else [n for n in KEEP if (data / n).exists()]
    trash = Path(tempfile.mkdtemp(dir=repo, prefix=".data.reset-"))
    os.replace(data, trash / "data")
    if keep:
        data.mkdir()
        for name in keep:
            os.replace(trash / "data" / name, data / name)
    removed = sorted(p.name for p in (trash / "data").iterdir())
    shutil.rmtree(trash)
    return removed
