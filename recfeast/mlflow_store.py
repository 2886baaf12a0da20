"""Where recfeast's MLflow lives: run tracking and the model registry share one backend.

Default: a SQLite database ``<repo>/data/mlflow.db`` beside the feature tables, artefacts under
``<repo>/data/mlartifacts/`` (``repo`` is the feature repository, see :func:`recfeast.config.repo_path`).
``MLFLOW_TRACKING_URI`` (``http://host:5000``, ``postgresql://...``, ``sqlite:///...``) points both at
another backend; ``MLFLOW_REGISTRY_URI`` moves only the registry (MLflow's own variables).

``import mlflow`` costs seconds, so it happens only inside these functions. A new SQLite database is
copied from a blank one built once per MLflow version (``~/.cache/recfeast``): MLflow's own schema
creation replays every migration and takes ~10 s on a busy machine.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"


def db_path(repo: Path) -> Path:
    """``<repo>/data/mlflow.db``: the default backend of feature repository ``repo``."""
    return Path(repo) / "data" / DB_NAME


def tracking_uri(repo: Path | None) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/data/mlflow.db`` (created when missing).

    Raises:
        ConfigError: neither the variable nor a repository is given.
    """
    env = os.environ.get(TRACKING_ENV, "").strip()
    if env:
        return env
    if repo is None:
        from recfeast.errors import ConfigError

        raise ConfigError(f"no MLflow backend: set {TRACKING_ENV} or give a feature repository")
    path = db_path(repo).resolve()
    ensure_sqlite(path)
    return f"sqlite:///{path}"


def registry_uri(repo: Path | None) -> str:
    """``$MLFLOW_REGISTRY_URI``, else the tracking URI."""
    env = os.environ.get(REGISTRY_ENV, "").strip()
    return env or tracking_uri(repo)


def _quiet() -> None:
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration", "mlflow.store.model_registry"):
        logging.getLogger(name).setLevel(logging.WARNING)


def ensure_sqlite(path: Path) -> None:
    """Create the MLflow SQLite database at ``path`` if missing: a copy of a blank database of this
    MLflow version (built once, atomically), then renamed into place (a concurrent creator loses
    nothing: both copies are blank)."""
    if path.is_file():
        return
    import mlflow

    _quiet()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recfeast"
    blank = cache / f"mlflow-{mlflow.__version__}-blank.db"
    if not blank.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = blank.with_name(f"{blank.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{tmp}", tmp.parent.as_uri())
        store.engine.dispose()
        os.replace(tmp, blank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.copyfile(blank, tmp)
    os.replace(tmp, path)


def client(repo: Path | None, uri: str | None = None):
    """An ``mlflow.MlflowClient`` on the tracking backend of ``repo`` (or ``uri``) and its registry."""
    from mlflow import MlflowClient

    _quiet()
    uri = uri or tracking_uri(repo)
    reg = os.environ.get(REGISTRY_ENV, "").strip() or uri
    return MlflowClient(tracking_uri=uri, registry_uri=reg)


def local_artifact_root(uri: str) -> str | None:
    """``file://`` URI of ``mlartifacts/`` beside a SQLite backend's database file (None for other
    backends: a server keeps its own). Without it MLflow would put artefacts in ``./mlruns`` of
    whatever the working directory is."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return (db.resolve().parent / ARTIFACTS).as_uri()


def experiment_id(c, name: str, repo: Path | None = None) -> str:
    """Id of experiment ``name``, created when missing (on a SQLite backend its artefacts go to
    ``mlartifacts/`` beside the database: ``<repo>/data/mlartifacts`` by default; a server's default
    elsewhere)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        # the kind tag makes MLflow's UI open the experiment on its training runs (not the GenAI views)
        return c.create_experiment(name, artifact_location=local_artifact_root(str(c.tracking_uri)),
                                   tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:                      # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
