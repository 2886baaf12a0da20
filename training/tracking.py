"""Run tracking: every training run goes to MLflow and to TensorBoard, and tracking never fails a run.

A training task is wrapped in :func:`tracked` and calls, through :func:`current`:

- ``start(config, tags)`` once its settings are checked: opens an MLflow run in experiment
  ``recfeast-<task>`` with the typed config as parameters (nested fields as ``a.b``) and a TensorBoard
  writer in ``<out_dir>/tensorboard/<run name>/``;
- ``log_epoch(variant, epoch, metrics)`` per epoch: numeric values as MLflow metrics
  ``<variant>/<name>`` at step ``epoch``, and the same TensorBoard scalars;
- ``log_result(metrics, artifacts, tags)`` at the end: final metrics flattened to ``a/b/c``
  (``ci95`` pairs become ``ci95_low``/``ci95_high``, lists of rows are keyed by their ``variant`` or
  ``method``), the files (plots, metrics table, metrics JSON) as artefacts, lineage as tags.

The run ends FINISHED when the task returns and FAILED when it raises.

Backend: :mod:`recfeast.mlflow_store` (``<repo>/data/mlflow.db`` by default, ``MLFLOW_TRACKING_URI``
for a server). Any failure of MLflow or TensorBoard is reported in one line through the task's
``log`` and switches that sink off for the rest of the run; the run itself goes on. An HTTP
backend is probed first (``GET /health``, 3 s) so a server that is down costs seconds, not
MLflow's default retries (minutes); the retries of later calls are capped the same way
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` unless set).

TensorBoard: ``tensorboard --logdir runs/`` finds every run written under ``runs/``; its
HPARAMS tab lines the runs' parameters up against their test metrics.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import math
import os
import re
import time
from pathlib import Path

from recfeast.redact import redact

_current: contextvars.ContextVar["RunTracker | None"] = contextvars.ContextVar("recfeast_tracker", default=None)
MAX_BATCH = 1000          # MLflow's limit of metrics per log_batch call
PROBE_TIMEOUT_S = 3.0


def slug(name: str) -> str:
    """A metric-name-safe form of a variant or metric name: ``"+ text"`` -> ``"text"``,
    ``"behavior only"`` -> ``"behavior_only"``, ``"ndcg@10"`` -> ``"ndcg_at_10"``."""
    s = str(name).replace("@", "_at_").replace("+", " ").strip()
    s = re.sub(r"[^\w\-.]+", "_", s).strip("_")
    return s or "_"


def flatten_params(config) -> dict[str, str]:
    """A dataclass or dict as MLflow parameters: nested dicts joined with ``.``, lists and tuples as
    JSON, every value a string of at most 6000 characters (MLflow's limit)."""
    raw = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    out: dict[str, str] = {}

    def walk(prefix, value):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[re.sub(r"[^\w\-. :/]", "_", prefix)] = text[:6000]

    walk("", raw)
    return out


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a/b/c": float}`` (see the module docstring);
    None, strings and booleans are skipped."""
    out: dict[str, float] = {}

    def walk(path, value):
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            walk(path, value.item())
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{path}/{slug(k)}" if path else slug(k), v)
        elif isinstance(value, (list, tuple)):
            if path.endswith("ci95") and len(value) == 2:
                walk(f"{path}_low", value[0])
                walk(f"{path}_high", value[1])
            elif value and all(isinstance(v, dict) and ("variant" in v or "method" in v) for v in value):
                for v in value:
                    walk(f"{path}/{slug(v.get('variant', v.get('method')))}", v)

    walk(slug(prefix) if prefix else "", metrics)
    return out


def lineage(info, training_set: str | os.PathLike | None = None,
            entities: str | os.PathLike | None = None) -> dict[str, str]:
    """Tags naming what a ranking run was trained on, from a :class:`~recfeast.training.dataset.TrainingSetInfo`:
    ``recfeast.feature_service``, ``recfeast.model.<table column>`` (embedding model identities, comma
    separated), ``recfeast.training_set.*`` (rows, rows per split, time range, features, reproducible,
    the kept set's path and sha256 when ``training_set`` names a file, and ``entities.path`` /
    ``entities.sha256``: the entity rows it was joined from, which rebuild it)."""
    import hashlib

    d = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
    tags = {"recfeast.feature_service": d.get("feature_service", ""),
            "recfeast.training_set.rows": str(d.get("rows")),
            "recfeast.training_set.rows_by_split": d.get("rows_by_split", {}),
            "recfeast.training_set.time_range": list(d.get("time_range") or ()),
            "recfeast.training_set.features": d.get("features", []),
            "recfeast.training_set.reproducible": str(d.get("reproducible"))}
    for col, ids in (d.get("model_ids") or {}).items():
        tags[f"recfeast.model.{col}"] = ",".join(map(str, ids))
    for prefix, path in (("recfeast.training_set", training_set), ("recfeast.training_set.entities", entities)):
        if path is not None and Path(path).is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            tags[f"{prefix}.path"] = str(Path(path).resolve())
            tags[f"{prefix}.sha256"] = h.hexdigest()
    return tags


def _finite(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))


class RunTracker:
    """One training run's MLflow run and TensorBoard writer (see the module docstring).

    Args:
        task: ``ranking``, ``text-finetune``, ``sequence``: the MLflow experiment is ``recfeast-<task>``.
        log: where the one-line reports go (the task's ``log``).
    """

    def __init__(self, task: str, log=print):
        self.task, self.log = task, log
        self.client = self.run_id = self.writer = None
        self.uri = self.tb_dir = None
        self.started = False
        self._hparams: dict = {}
        self._final: dict = {}

    # -- sinks -----------------------------------------------------------------------------
    def _mlflow_off(self, what: str, exc: BaseException) -> None:
        if self.client is not None:
            msg = redact(f"{type(exc).__name__}: {exc}").splitlines()[0][:300]
            self.log(f"tracking: MLflow {what} failed at {redact(str(self.uri))} ({msg}); "
                     "the run goes on without MLflow tracking")
        self.client = None

    def _tb_off(self, exc: BaseException) -> None:
        if self.writer is not None:
            self.log(f"tracking: TensorBoard writer failed ({type(exc).__name__}: {exc}); the run goes on without it")
            try:
                self.writer.close()
            except Exception:
                pass
        self.writer = None

    def _mlflow(self, what: str, fn, *args, **kwargs):
        if self.client is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # tracking never fails a run
            self._mlflow_off(what, exc)
            return None

    @staticmethod
    def _probe(uri: str) -> None:
        """Raise when an HTTP tracking server does not answer ``/health`` within the probe timeout."""
        import urllib.request

        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as resp:
            if resp.status >= 500:
                raise ConnectionError(f"HTTP {resp.status}")

    # -- API -------------------------------------------------------------------------------
    def start(self, config, tags: dict | None = None, out_dir: str | os.PathLike | None = None,
              repo: str | os.PathLike | None = None) -> "RunTracker":
        """Open the MLflow run and the TensorBoard writer.

        Args:
            config: the typed config (a dataclass); its fields become parameters.
            tags: lineage and context (values: strings, or anything JSON can write).
            out_dir: the run's output folder (default ``config.out_dir``); TensorBoard writes under it.
            repo: feature repository of the default MLflow backend (default ``config.repo``, then
                :func:`recfeast.config.repo_path`); unused when ``MLFLOW_TRACKING_URI`` is set.
        """
        self.started = True
        out = Path(out_dir if out_dir is not None else getattr(config, "out_dir", "runs"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._hparams = flatten_params(config)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = out / "tensorboard" / f"{stamp}-{os.getpid()}"
            self.writer = SummaryWriter(log_dir=str(self.tb_dir))
        except Exception as exc:
            self.writer = True   # so that _tb_off reports
            self._tb_off(exc)
        try:
            from recfeast import config as rconfig, mlflow_store

            if not os.environ.get(mlflow_store.TRACKING_ENV, "").strip():
                try:
                    repo = rconfig.repo_path(repo if repo is not None else getattr(config, "repo", None))
                except Exception:
                    repo = Path.cwd()
            self.uri = mlflow_store.tracking_uri(repo)
            if self.uri.startswith(("http://", "https://")):
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                self._probe(self.uri)
            self.client = mlflow_store.client(repo, self.uri)
            exp = mlflow_store.experiment_id(self.client, f"recfeast-{self.task}", repo)
            all_tags = {"recfeast.task": self.task, "recfeast.out_dir": str(out.resolve()),
                        **({"recfeast.tensorboard": str(self.tb_dir.resolve())} if self.tb_dir else {}),
                        **(tags or {})}
            run = self.client.create_run(exp, run_name=f"{self.task}-{stamp}", tags=self._tags(all_tags))
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in self._hparams.items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        except Exception as exc:
            if self.client is None:
                self.client = True   # so that _mlflow_off reports
            self._mlflow_off("start", exc)
        return self

    @staticmethod
    def _tags(tags: dict) -> dict[str, str]:
        return {str(k): (v if isinstance(v, str) else json.dumps(v, default=str))[:8000] for k, v in tags.items()}

    def log_epoch(self, variant: str, epoch: int, metrics: dict) -> None:
        """Log one epoch's numeric values (``epoch`` itself and None values are skipped) as
        ``<variant>/<name>`` at step ``epoch``."""
        if not self.started:
            return
        vals = {f"{slug(variant)}/{slug(k)}": float(v) for k, v in metrics.items()
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            try:
                for k, v in vals.items():
                    self.writer.add_scalar(k, v, int(epoch))
                self.writer.flush()
            except Exception as exc:
                self._tb_off(exc)
        if self.client is not None and vals:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._mlflow("log_epoch", self.client.log_batch, self.run_id,
                         metrics=[Metric(k, v, now, int(epoch)) for k, v in vals.items()])

    def log_result(self, metrics: dict, artifacts=(), tags: dict | None = None, hparam_metrics=None) -> None:
        """Log the final metrics (flattened), the artefact files that exist, and ``tags``.

        Args:
            hparam_metrics: prefixes of the flattened metrics shown in TensorBoard's HPARAMS tab
                (default: every final metric, at most 50).
        """
        if not self.started:
            return
        flat = {k: v for k, v in flatten_metrics(metrics).items() if _finite(v)}
        keep = [k for k in flat if hparam_metrics is None or k.startswith(tuple(hparam_metrics))][:50]
        self._final = {k: flat[k] for k in keep}
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            ms = [Metric(k, v, now, 0) for k, v in flat.items()]
            for i in range(0, len(ms), MAX_BATCH):
                self._mlflow("log_result", self.client.log_batch, self.run_id, metrics=ms[i:i + MAX_BATCH])
            for k, v in self._tags(tags or {}).items():
                self._mlflow("set_tag", self.client.set_tag, self.run_id, k, v)
            for path in artifacts:
                if Path(path).is_file():
                    self._mlflow("log_artifact", self.client.log_artifact, self.run_id, str(path))

    def end(self, failed: bool = False) -> None:
        """Close the run (FINISHED, or FAILED) and the writer; report where the run can be seen."""
        if not self.started:
            return
        if self.writer is not None:
            try:
                hp = {k: v for k, v in self._hparams.items()}
                self.writer.add_hparams(hp, self._final or {"finished": 0.0 if failed else 1.0}, run_name=".")
                self.writer.close()
            except Exception as exc:
                self._tb_off(exc)
        if self.client is not None:
            self._mlflow("end", self.client.set_terminated, self.run_id, "FAILED" if failed else "FINISHED")
        where = (f"MLflow run {self.run_id} (experiment recfeast-{self.task}) at {redact(str(self.uri))}"
                 if self.client is not None else "not in MLflow")
        self.log(f"tracking: {where}" + (f"; TensorBoard: {self.tb_dir}" if self.tb_dir else ""))
        self.started = False


class _Null(RunTracker):
    """What :func:`current` gives outside a tracked task: every call does nothing."""

    def __init__(self):
        super().__init__("none", log=lambda *_: None)

    def start(self, *args, **kwargs):
        return self


def current() -> RunTracker:
    """The tracker of the task running in this context (a no-op one outside :func:`tracked`)."""
    return _current.get() or _Null()


def tracked(task: str):
    """Decorator for a training task ``fn(cfg, log=print)``: gives it a :class:`RunTracker` (reached
    with :func:`current`; the task calls ``start`` itself once its settings are valid) and ends the
    run FINISHED or FAILED with the task. Tracking is off when ``RECFEAST_TRACKING=0``."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if os.environ.get("RECFEAST_TRACKING", "1").strip() in ("0", "false", "no", "off"):
                return fn(*args, **kwargs)
            tracker = RunTracker(task, log=kwargs.get("log", args[1] if len(args) > 1 else print))
            token = _current.set(tracker)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                tracker.end(failed=True)
                raise
            finally:
                _current.reset(token)
            tracker.end()
            return result

        return inner

    return wrap
