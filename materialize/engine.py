"""Where the expensive stages of a job run: in this process (:class:`LocalEngine`, the default) or on
a Ray cluster (:class:`RayEngine`).

The main job (:mod:`recfeast.materialize.job`) and the scheduler's jobs call two methods and never
touch Ray themselves:

- :meth:`Engine.encode` embeds the inputs the embedding cache could not supply (the cache decides
  what must be computed, so only the misses leave the driver). On Ray this is a Ray Data
  ``map_batches`` over an actor pool: each actor loads the model once (from a picklable factory) and
  embeds batches; with GPUs in the cluster each actor takes one (``num_gpus=1``), otherwise
  ``num_cpus`` CPUs. The recipe of Ray's batch-inference guide and of Feast's ``ray_rag`` template.
- :meth:`Engine.load_online` brings the online store up to date with the feature tables
  (:func:`recfeast.materialize.online.load`: clear stale rows, write the latest row per entity,
  re-push real-time state). On Ray the write is partitioned: entity ``k`` of a view goes to partition
  ``k mod P``, and one Ray task per (view, partition) reads the view's Parquet table itself, keeps
  the latest row per entity by ``(event_timestamp, created_timestamp)`` inside the load window (what
  Feast's materialize does) and writes it with Feast's own ``_convert_arrow_to_proto`` and
  ``online_write_batch``, so the stored bytes are the ones Feast's local engine writes. Nothing
  funnels through the driver.

Same result on both engines: the text encoder batches by token count inside each call and the image
encoder per image, so splitting the inputs into Ray blocks changes only padding, and float results
agree within 1e-6 (measured: equal to the last bit on this machine's CPUs, see
tests/materialize/test_ray_engine.py); the online rows are written by the same Feast functions.

Failures: a worker process that dies (killed, OOM) is restarted by Ray and its batch retried
(actors: ``max_restarts``/``max_task_retries``; load tasks: ``max_retries``), at most
:data:`RETRIES` times, so a model that always crashes fails the job instead of looping. Both stages
are idempotent (a retried batch recomputes the same vectors; a retried partition writes the same
rows again), so a retry or a rerun of the whole job ends where a clean run ends.

Feast's own Ray compute engine (``batch_engine: type: ray.engine``, contrib) is available as
``RayEngine(load="feast")``; see :meth:`RayEngine.load_online` for why it is not the default.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recfeast import faults
from recfeast.errors import ConfigError, ModelError, StoreError

#: restarts of a dead actor / retries of a batch or load partition before the job fails
RETRIES = 3
ENGINES = ("local", "ray")


class Engine:
    """Interface of the engines (see the module docstring)."""

    name = "engine"

    def encode(self, factory: Callable[[], Any], inputs: Sequence, batch_size: int, *, local=None,
               model_id: str | None = None, progress: bool = False):
        """Embed ``inputs`` with the encoder ``factory()`` builds.

        Args:
            factory: picklable zero-argument callable returning a text or image encoder (an object
                with ``encode(inputs, batch_size)`` and ``model_id``), e.g.
                ``functools.partial(model_registry.text_encoder, repo, model_id)``.
            inputs: n texts (str) or image paths.
            batch_size: inputs per forward pass.
            local: an encoder already loaded in this process (the local engine uses it instead of
                loading another; Ray actors always load their own).
            model_id: identity the encoder must have; a worker whose model differs (another
                package version on a remote node) fails the job with :class:`ModelError`.
            progress: show a progress bar.

        Returns:
            What the encoder's ``encode`` returns for all n inputs, in input order: a ``(n, dim)``
            float32 array (text), or an :class:`recfeast.encoders.image.ImageEncoding` whose
            ``errors`` are keyed by position in ``inputs`` (images).
        """
        raise NotImplementedError

    def load_online(self, store, tables_dir: Path, quiet: bool = False, sequence_model: str | None = None) -> dict:
        """:func:`recfeast.materialize.online.load` with this engine's writer; returns
        ``{view: entities cleared}``. Raises :class:`StoreError` as ``online.load`` does."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds (a Ray connection it opened)."""


class LocalEngine(Engine):
    """Everything in this process: the behaviour recfeast has always had, and the default."""

    name = "local"

    def encode(self, factory, inputs, batch_size, *, local=None, model_id=None, progress=False):
        enc = local if local is not None else factory()
        if model_id is not None and enc.model_id != model_id:
            raise ModelError(f"encoder is {enc.model_id}, expected {model_id}")
        return enc.encode(list(inputs), batch_size, show_progress_bar=progress)

    def load_online(self, store, tables_dir, quiet=False, sequence_model=None):
        from recfeast.materialize import online

        return online.load(store, tables_dir, quiet=quiet, sequence_model=sequence_model)


# ------------------------------------------------------------------ Ray side (runs in workers)
_FORWARDED_ENV = (faults.ENV, faults.ONCE_ENV)


def _forwarded_env() -> dict:
    """Failpoint settings of the driver, handed to workers explicitly (a remote cluster's workers do
    not inherit the driver's environment)."""
    return {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}


class _EncodeActor:
    """One Ray Data actor: loads the model once, then embeds batches ``{"pos", "input"}`` into
    ``{"pos", "embedding", "error_rule", "error_detail"}``."""

    def __init__(self, factory, model_id, batch_size, env, use_gpu):
        os.environ.update(env)
        self.enc = factory()
        if model_id is not None and self.enc.model_id != model_id:
            raise ModelError(f"worker loaded {self.enc.model_id}, the driver expects {model_id}: the "
                             "cluster's nodes must run the same recfeast and model packages")
        if use_gpu:
            import torch

            self.enc.model.to("cuda")
            self.enc.device = torch.device("cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        faults.point("ray:encode_batch")
        t0 = time.time()
        inputs = [None if x is None else str(x) for x in batch["input"].tolist()]
        res = self.enc.encode(inputs, self.batch_size)
        n = len(inputs)
        rule, detail = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
        image = hasattr(res, "errors")   # an ImageEncoding: vectors plus the reason of each failure
        if image:
            for i, (r, d) in res.errors.items():
                rule[i], detail[i] = r, d
            res = res.embeddings
        return {"pos": batch["pos"], "embedding": np.asarray(res, np.float32), "error_rule": rule,
                "error_detail": detail, "image": np.full(n, image), "t0": np.full(n, t0),
                "t1": np.full(n, time.time())}


def _latest_rows(path: str, key: str, columns: list[str], part: int, parts: int, start, end):
    """Latest row per entity of partition ``part`` (``key mod parts``) of a Parquet feature table,
    rows with ``start <= event_timestamp <= end`` only; ties on ``event_timestamp`` go to the newest
    ``created_timestamp`` (Feast's ``pull_latest_from_table_or_query``). Returns a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=sorted(set([key, "event_timestamp", "created_timestamp", *columns])))
    ts_type = t.schema.field("event_timestamp").type
    keep = pc.and_(pc.greater_equal(t["event_timestamp"], pa.scalar(start, ts_type)),
                   pc.less_equal(t["event_timestamp"], pa.scalar(end, ts_type))).to_numpy()
    keep = keep & (t[key].to_numpy() % parts == part)
    t = t.filter(pa.array(keep))
    if not t.num_rows:
        return t
    t = t.sort_by([(key, "ascending"), ("event_timestamp", "descending"), ("created_timestamp", "descending")])
    k = t[key].to_numpy()
    first = np.ones(len(k), bool)
    first[1:] = k[1:] != k[:-1]
    return t.filter(pa.array(first))


def _load_partition(artifacts, part: int, parts: int, start, end, env: dict) -> int:
    """Write partition ``part`` of one view (see :func:`_latest_rows`) into the online store with
    Feast's converter and writer; runs as a Ray task. Returns rows written."""
    os.environ.update(env)
    from feast.utils import _convert_arrow_to_proto

    fv, online_store, _, repo_config = artifacts.unserialize()
    key = fv.entity_columns[0].name
    table = _latest_rows(fv.batch_source.path, key, [f.name for f in fv.features], part, parts, start, end)
    faults.point("ray:load_partition")
    if not table.num_rows:
        return 0
    types = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
    size = repo_config.materialization_config.online_write_batch_size or table.num_rows
    written = 0
    for batch in table.to_batches(max_chunksize=size):
        rows = _convert_arrow_to_proto(batch, fv, types)
        online_store.online_write_batch(config=repo_config, table=fv, data=rows, progress=None)
        written += len(rows)
    return written


# ------------------------------------------------------------------ Ray side (driver)
class RayEngine(Engine):
    """Encoding and the online load on a Ray cluster.

    Args:
        address: Ray cluster address (``host:port`` of the head node's GCS, as ``ray start --head
            --port`` gives it; ``ray://`` addresses need the ``ray[client]`` extra);
            ``None``: ``$RAY_ADDRESS`` if set, else a local cluster started for this process
            (``num_cpus`` CPUs) and stopped by :meth:`close`.
        workers: encoding actors (and load partitions); default one per GPU when the cluster has
            GPUs, else one per ``cpus_per_worker`` CPUs of the cluster (at least 1).
        cpus_per_worker: CPUs each CPU actor requests (and torch threads it uses).
        load: ``"partitioned"``: the partitioned online write above; ``"feast"``: Feast's Ray
            compute engine (``batch_engine: type: ray.engine``) through ``FeatureStore.materialize``.
            Default: ``$RECFEAST_RAY_LOAD``, else ``partitioned``.
        load_partitions: partitions per view for the online load; default ``workers`` for Redis
            and 1 for SQLite (one file: parallel writers only wait on its lock).
        num_cpus: CPUs of a local cluster this engine starts (default: all).
        object_store_memory: bytes of object store for a local cluster (default: Ray's).

    Paths the workers read (image files, a registered model's folder, the feature tables) must be
    the same on every node: a shared file system, or a single machine.

    Raises:
        ConfigError: Ray is not installed, or the address cannot be reached.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 load: str | None = None, load_partitions: int | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None):
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - a dependency
            raise ConfigError("the ray engine needs Ray: pip install 'ray[data]'") from exc
        load = load or os.environ.get("RECFEAST_RAY_LOAD", "partitioned")
        if load not in ("partitioned", "feast"):
            raise ConfigError(f"RayEngine(load={load!r}): expected 'partitioned' or 'feast'")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_worker, self.load, self.load_partitions = cpus_per_worker, load, load_partitions
        self._owns = False
        # Ray Data's usage collector queries a Prometheus at localhost:9090 after every dataset and
        # reports usage to Anyscale: neither exists where recfeast runs
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
        if not ray.is_initialized():
            from recfeast.redact import redact

            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kwargs.update(num_cpus=num_cpus, object_store_memory=object_store_memory)
            try:
                ray.init(address=self.address, **kwargs)
            except Exception as exc:  # ConnectionError, RuntimeError, ...
                raise ConfigError(f"cannot connect to the Ray cluster at {redact(str(self.address))}: "
                                  f"{redact(str(exc))}") from exc
            self._owns = True
        res = ray.cluster_resources()
        self.gpus = int(res.get("GPU", 0))
        auto = self.gpus or max(1, int(res.get("CPU", 1) // cpus_per_worker))
        self.workers = int(workers or auto)
        if self.workers < 1:
            raise ConfigError(f"RayEngine(workers={workers}): expected at least 1")

    # -------------------------------------------------------------- encode
    def encode(self, factory, inputs, batch_size, *, local=None, model_id=None, progress=False):
        import ray

        inputs = list(inputs)
        n = len(inputs)
        if n == 0:   # nothing to send: the local encoder (or one load) gives the right empty shape
            return LocalEngine().encode(factory, inputs, batch_size, local=local, model_id=model_id)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        if not progress:   # Ray Data logs each dataset's plan and end at INFO, and that bars are off
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        # blocks of a few batches, at least two per actor so a slow actor does not hold the tail
        per_block = max(batch_size, min(8 * batch_size, math.ceil(n / (2 * self.workers))))
        ds = ray.data.from_items([{"pos": i, "input": x} for i, x in enumerate(inputs)],
                                 override_num_blocks=math.ceil(n / per_block))
        use_gpu = self.gpus > 0
        resources = {"num_gpus": 1} if use_gpu else {"num_cpus": self.cpus_per_worker}
        with warnings.catch_warnings():
            # bounded restarts (Ray Data's default, -1, retries a model that always crashes forever);
            # Ray 2.60 takes them only as ``ray_remote_args``, deprecated for 2.64 with no named
            # replacement yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            out = ds.map_batches(
                _EncodeActor, batch_size=per_block, batch_format="numpy",
                fn_constructor_args=(factory, model_id, batch_size, _forwarded_env(), use_gpu),
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, math.ceil(n / per_block))),
                max_restarts=RETRIES, max_task_retries=RETRIES, **resources)
        pos, emb, rule, detail, image, t0, t1 = [], [], [], [], False, np.inf, 0.0
        started = time.time()
        try:
            for b in out.iter_batches(batch_format="numpy", batch_size=None):
                pos.append(b["pos"]), emb.append(b["embedding"]), rule.append(b["error_rule"])
                detail.append(b["error_detail"])
                image = image or bool(b["image"].any())
                t0, t1 = min(t0, float(b["t0"].min())), max(t1, float(b["t1"].max()))
        except Exception as exc:
            cause = _root_cause(exc)
            if isinstance(cause, ModelError):
                raise cause from exc
            raise ModelError(f"encoding on Ray failed: {type(cause).__name__}: {cause}") from exc
        #: wall seconds of the last call: in all, and from the first batch's start to the last one's
        #: end in the actors (the encoding itself, without actor start and model loads)
        self.last_seconds = {"total": time.time() - started, "encoding": t1 - t0}
        pos = np.concatenate(pos)
        if len(pos) != n or len(np.unique(pos)) != n:
            raise ModelError(f"encoding on Ray returned {len(pos)} rows ({len(np.unique(pos))} distinct) "
                             f"for {n} inputs")
        order = np.argsort(pos)
        emb = np.concatenate(emb).astype(np.float32)[order]
        rule, detail = np.concatenate(rule)[order], np.concatenate(detail)[order]
        if image:   # an image encoder: give back its result type
            from recfeast.encoders.image import ImageEncoding

            return ImageEncoding(emb, {int(i): (rule[i], detail[i]) for i in np.flatnonzero(rule != "")})
        return emb

    # -------------------------------------------------------------- online load
    def load_online(self, store, tables_dir, quiet=False, sequence_model=None):
        from recfeast.materialize import online

        writer = self._feast_ray_materialize if self.load == "feast" else self._partitioned_materialize
        return online.load(store, tables_dir, quiet=quiet, sequence_model=sequence_model, writer=writer)

    def _partitions(self, store) -> int:
        if self.load_partitions:
            return int(self.load_partitions)
        return self.workers if store.config.online_store.type != "sqlite" else 1

    def _partitioned_materialize(self, store, views, start, end, quiet=False):
        """Write ``views`` (names) of ``store`` from their tables, partitioned by entity (see the
        module docstring). Raises :class:`StoreError` naming the view when a partition fails after
        its retries."""
        import ray
        from feast.infra.common.serde import SerializedArtifacts

        from recfeast.redact import redact

        parts = self._partitions(store)
        task = ray.remote(_load_partition).options(num_cpus=min(1, self.cpus_per_worker), max_retries=RETRIES)
        env = _forwarded_env()
        refs = {}
        for name in views:
            fv = store.get_feature_view(name)
            art = ray.put(SerializedArtifacts.serialize(feature_view=fv, repo_config=store.config))
            refs[name] = [task.remote(art, p, parts, start, end, env) for p in range(parts)]
        written = {}
        for name, rs in refs.items():
            try:
                written[name] = sum(ray.get(rs))
            except Exception as exc:
                cause = _root_cause(exc)
                raise StoreError(f"loading view {name} into the {store.config.online_store.type} online store "
                                 f"on Ray failed: {type(cause).__name__}: {redact(str(cause))}") from exc
        if not quiet:
            print("online rows written per view: " + ", ".join(f"{k} {v}" for k, v in written.items()), flush=True)
        return written

    def _feast_ray_materialize(self, store, views, start, end, quiet=False):
        """``FeatureStore.materialize`` with Feast's Ray compute engine as ``batch_engine``.

        Feast 0.67's engine reads a DuckDB (or file) retrieval job on the driver (``to_arrow``) and
        distributes only from its Ray offline store or a ``RaySource`` (DESIGN.md fact 12), and its
        writer logs and drops a batch whose write fails (``safe_batch_processor``) instead of
        failing the job. So recfeast checks every view afterwards: each entity of the table must be
        readable online, else :class:`StoreError`.
        """
        from feast import FeatureStore
        from feast.infra.compute_engines.ray.config import RayComputeEngineConfig

        from recfeast import store as store_ops

        cfg = store.config.model_copy(deep=True) if hasattr(store.config, "model_copy") else store.config.copy(deep=True)
        # what ``batch_engine: {type: ray.engine, ...}`` in feature_store.yaml gives
        cfg.batch_engine_config = RayComputeEngineConfig(
            ray_address=self.address, max_workers=self.workers,
            write_concurrency=self._partitions(store)).model_dump()
        cfg._batch_engine = None
        cfg.repo_path = store.config.repo_path
        fs = FeatureStore(repo_path=str(store.repo_path), config=cfg)
        store_ops.materialize(fs, views=views, start=start, end=end, quiet=quiet)
        _check_loaded(store, views)
        return {}

    def close(self) -> None:
        import ray

        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False


def _root_cause(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (``RayTaskError`` carries it as ``cause``)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if nxt is None or not isinstance(nxt, BaseException):
            break
        exc = nxt
    return exc


def _check_loaded(store, views) -> None:
    """Raise :class:`StoreError` when an entity of a view's table is not readable online."""
    import pyarrow.parquet as pq

    for name in views:
        fv = store.get_feature_view(name)
        key = fv.entity_columns[0].name
        ids = sorted(set(pq.read_table(fv.batch_source.path, columns=[key]).column(0).to_pylist()))
        if not ids or not fv.features:
            continue
        feat = f"{name}:{fv.features[0].name}"
        got = store.get_online_features(features=[feat], entity_rows=[{key: i} for i in ids]).to_dict()
        missing = [i for i, v in zip(ids, got[fv.features[0].name]) if v is None]
        if missing:
            raise StoreError(f"Feast's Ray engine left {len(missing)} of {len(ids)} entities of view {name} "
                             f"unloaded (first: {missing[:5]}); rerun with the partitioned load")


def get(engine: "str | Engine | None" = None, ray_address: str | None = None, **kwargs) -> Engine:
    """The engine named ``engine`` (``local`` or ``ray``; an :class:`Engine` passes through).

    Raises:
        ConfigError: unknown name, or Ray unreachable.
    """
    if isinstance(engine, Engine):
        return engine
    name = engine or "local"
    if name == "local":
        if ray_address:
            raise ConfigError("--ray-address needs --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(ray_address, **kwargs)
    raise ConfigError(f"engine {name!r}: expected one of {ENGINES}")


@contextmanager
def opened(engine: "str | Engine | None" = None, ray_address: str | None = None, **kwargs):
    """:func:`get` as a context manager: an engine opened here is closed on exit; one passed in is
    left open for its owner."""
    eng = get(engine, ray_address, **kwargs)
    try:
        yield eng
    finally:
        if eng is not engine:
            eng.close()
