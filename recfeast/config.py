"""Where recfeast finds things: data directory, feature repository, online store choice.

Environment variables (all optional):

| variable | meaning | default |
|---|---|---|
| ``RECFEAST_DATA_DIR`` | raw input directory for ``recfeast materialize`` | none: pass ``--data-dir`` |
| ``RECFEAST_REPO_PATH`` | the Feast feature repository (folder with ``feature_store.yaml``) | ``./feature_repo`` |
| ``RECFEAST_ONLINE_STORE`` | ``sqlite`` (embedded default) or ``redis`` | ``sqlite`` |
| ``RECFEAST_PROJECT`` | override ``project`` of ``feature_store.yaml`` | the yaml's value |
| ``REDIS_CONNECTION_STRING`` | Feast Redis connection string ``host:port[,db=N][,password=...]`` | ``127.0.0.1:6379`` |
"""

from __future__ import annotations

import os
from pathlib import Path

from recfeast.errors import ConfigError

ONLINE_STORES = ("sqlite", "redis")
_SOURCE_REPO = Path(__file__).resolve().parents[1] / "feature_repo"


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """Return the raw data directory: ``value``, else ``$RECFEAST_DATA_DIR``.

    Raises:
        ConfigError: neither is given, or the directory does not exist.
    """
    raw = value if value is not None else os.environ.get("RECFEAST_DATA_DIR")
    if not raw:
        raise ConfigError("no data directory: pass --data-dir DIR or set RECFEAST_DATA_DIR")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"data directory {path} does not exist or is not a directory")
    return path


def repo_path(value: str | os.PathLike | None = None) -> Path:
    """Return the feature repository folder (it holds ``feature_store.yaml``).

    Order: ``value``, ``$RECFEAST_REPO_PATH``, ``./feature_repo``, ``.`` when it holds a
    ``feature_store.yaml``, and last the ``feature_repo/`` of the source checkout.

    Raises:
        ConfigError: the chosen folder has no ``feature_store.yaml``.
    """
    raw = value if value is not None else os.environ.get("RECFEAST_REPO_PATH")
    if raw:
        candidates = [Path(raw)]
    else:
        candidates = [Path.cwd() / "feature_repo", Path.cwd(), _SOURCE_REPO]
    for cand in candidates:
        if (cand / "feature_store.yaml").is_file():
            return cand.expanduser().resolve()
    raise ConfigError(
        f"no feature_store.yaml in {', '.join(str(c) for c in candidates)}; "
        "pass --repo-path or set RECFEAST_REPO_PATH"
    )


def tables_dir(repo: Path) -> Path:
    """Folder of the Parquet feature tables of feature repository ``repo`` (``repo/data/tables``).

    ``feature_repo/feature_definitions.py`` builds its FileSource paths from the same rule.
    """
    return repo / "data" / "tables"


def online_store(value: str | None = None) -> str:
    """Return the online store kind: ``value``, else ``$RECFEAST_ONLINE_STORE``, else ``"sqlite"``.

    Raises:
        ConfigError: the value is not one of ``sqlite``, ``redis``.
    """
    kind = (value or os.environ.get("RECFEAST_ONLINE_STORE") or "sqlite").strip().lower()
    if kind not in ONLINE_STORES:
        raise ConfigError(f"RECFEAST_ONLINE_STORE={kind!r}: expected one of {', '.join(ONLINE_STORES)}")
    return kind


def text_precision(value: str | None = None) -> str:
    """Return the text encoder's precision: ``value``, else ``$RECFEAST_TEXT_PRECISION``, else ``"fp32"``
    (``bf16``: :mod:`recfeast.encoders.text`). The one place the main job and the query path read it.

    Raises:
        ConfigError: not ``fp32`` or ``bf16``.
    """
    p = (value or os.environ.get("RECFEAST_TEXT_PRECISION") or "fp32").strip().lower()
    if p not in ("fp32", "bf16"):
        raise ConfigError(f"RECFEAST_TEXT_PRECISION={p!r}: expected fp32 or bf16")
    return p


def redis_connection_string(value: str | None = None) -> str:
    """Return the Feast Redis connection string (``host:port[,db=N]``); default ``127.0.0.1:6379``."""
    return value or os.environ.get("REDIS_CONNECTION_STRING") or "127.0.0.1:6379"


def project(value: str | None = None) -> str | None:
    """Feast project override: ``value``, else ``$RECFEAST_PROJECT``, else None (use the yaml's)."""
    return value or os.environ.get("RECFEAST_PROJECT") or None
