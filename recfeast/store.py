"""Feast operations recfeast runs: build the store for a repo, apply its definitions, materialize.

Feast is imported lazily (``import feast`` costs seconds: it imports torch).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from recfeast import config
from recfeast.errors import ConfigError, StoreError

DEFINITIONS_FILE = "feature_definitions.py"


class _DropServeWhileMaterializingNotice(logging.Filter):
    """Feast 0.67 logs that ``serve_features_while_materializing`` "typically has no effect" on a file
    registry; it does have one (reads during and after a crashed load keep working, see
    tests/materialize/test_online_refresh.py), so the notice only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing" not in record.getMessage()


logging.getLogger("feast.repo_config").addFilter(_DropServeWhileMaterializingNotice())


@contextlib.contextmanager
def _quiet():
    """Silence warnings that are not actionable for a recfeast user: Feast's "on demand feature
    view is experimental" on every apply and ibis' DuckDB deprecation notice on every read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
        yield


def repo_config(repo: Path, online_store: str | None = None, project: str | None = None,
                redis_connection_string: str | None = None, offline_store: str | None = None):
    """Feast ``RepoConfig`` from ``repo/feature_store.yaml`` with recfeast's overrides.

    Args:
        repo: feature repository folder.
        online_store: ``sqlite`` or ``redis``; default :func:`recfeast.config.online_store`
            (``$RECFEAST_ONLINE_STORE``, else sqlite). ``redis`` swaps in a Redis online store at
            :func:`recfeast.config.redis_connection_string`.
        offline_store: override the offline store type (``file`` for Feast's default dask store,
            used as the benchmark anchor); default the yaml's (``duckdb``).
        project: override the project name; default ``$RECFEAST_PROJECT``, else the registry's serving
            project (set by a model promotion, :mod:`recfeast.materialize.rollout`), else the yaml's
            (tests use their own so they never touch the user's keys).

    ``$RECFEAST_REGISTRY`` (:func:`recfeast.config.registry_url`) swaps the yaml's file registry for
    Feast's SQL registry on PostgreSQL.

    Raises:
        ConfigError: the yaml is missing or Feast rejects it.
    """
    from feast.repo_config import RepoConfig

    repo = Path(repo).resolve()
    path = repo / "feature_store.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no feature_store.yaml")
    try:
        raw = yaml.safe_load(os.path.expandvars(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (project, registry, ...), got {type(raw).__name__}")
    # Reads keep serving the last loaded values while a view is being materialized (Feast 0.67
    # refuses them otherwise, also after a load that crashed). Set here rather than in the yaml: Feast's
    # own CLI serves no reads and would log a misleading notice about it (recfeast.feast_compat).
    registry = raw.get("registry")
    if isinstance(registry, str):
        registry = raw["registry"] = {"path": registry}
    if isinstance(registry, dict):
        registry.setdefault("serve_features_while_materializing", True)
    kind = config.online_store(online_store)
    if kind == "redis":
        raw["online_store"] = {"type": "redis",
                               "connection_string": config.redis_connection_string(redis_connection_string)}
    if offline_store:
        raw["offline_store"] = {"type": offline_store}
    registry_url = config.registry_url()
    if registry_url:   # Feast's SQL registry (PostgreSQL): one registry for several processes or machines
        keep = raw.get("registry") if isinstance(raw.get("registry"), dict) else {}
        raw["registry"] = {"registry_type": "sql", "path": registry_url, "cache_ttl_seconds": 60,
                           "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
                           **{k: v for k, v in keep.items() if k == "serve_features_while_materializing"}}
    project = config.project(project)
    if not project:   # after a model promotion the production features live in a project of their own
        from recfeast.model_registry import serving_project

        project = serving_project(repo)
    if project:
        raw["project"] = project
    try:
        cfg = RepoConfig(**raw)
    except Exception as exc:  # pydantic ValidationError and Feast's own
        raise ConfigError(f"{path}: {exc}") from exc
    cfg.repo_path = repo
    return cfg


def feature_store(repo: Path | None = None, online_store: str | None = None, project: str | None = None):
    """A ``feast.FeatureStore`` for ``repo`` (default :func:`recfeast.config.repo_path`)."""
    from feast import FeatureStore

    from recfeast import feast_compat

    feast_compat.install()
    repo = config.repo_path(repo)
    return FeatureStore(repo_path=str(repo), config=repo_config(repo, online_store, project))


def load_definitions(repo: Path) -> list:
    """Import ``repo/feature_definitions.py`` (fresh each call) and return its Feast objects.

    Raises:
        ConfigError: the file is missing or fails to import.
    """
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource

    path = Path(repo) / DEFINITIONS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing feature definitions")
    name = f"_recfeast_defs_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses/dill need the module registered while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot import feature definitions: {exc}") from exc
    finally:
        sys.modules.pop(name, None)
    kinds = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
    seen, objects = set(), []
    for value in vars(module).values():
        if isinstance(value, kinds) and id(value) not in seen:
            seen.add(id(value))
            objects.append(value)
    return objects


def apply(store) -> int:
    """Register the repo's definitions and create online tables (what ``feast apply`` does).

    Returns:
        Number of Feast objects applied.

    Raises:
        StoreError: Feast refuses the definitions.
    """
    objects = load_definitions(Path(store.repo_path))
    try:
        with _quiet():
            store.apply(objects)
    except Exception as exc:
        raise StoreError(f"feast apply failed for {store.repo_path}: {exc}") from exc
    return len(objects)


def load_window(start: datetime | None = None, end: datetime | None = None) -> tuple[datetime, datetime]:
    """The event-time window :func:`materialize` loads (both ends inclusive, as Feast's offline pull):
    from ``start`` (default 1970-01-01) less one second of margin, to ``end`` (default now); tz-aware UTC."""
    start = start or datetime(1970, 1, 1, tzinfo=timezone.utc)
    return start - timedelta(seconds=1), end or datetime.now(timezone.utc)


def materialize(store, views: list[str] | None = None, end: datetime | None = None,
                start: datetime | None = None, quiet: bool = False) -> None:
    """Load the latest row per entity of every (or the named) feature view into the online store.

    Covers event time from ``start`` (default 1970-01-01; pass the tables' earliest timestamp when
    rows may be older) to ``end`` (default now): the online store ends up with each entity's latest
    values whatever their age. ``quiet`` hides Feast's progress output. Rerunning writes the same
    values again (Redis skips them, SQLite overwrites them), so nothing is duplicated.

    Raises:
        StoreError: the offline read or the online write fails (e.g. Redis unreachable).
    """
    start, end = load_window(start, end)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_quiet())
            if quiet:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            store.materialize(start_date=start, end_date=end, feature_views=views)
    except Exception as exc:
        raise StoreError(f"feast materialize into {store.config.online_store.type} failed: {exc}") from exc
