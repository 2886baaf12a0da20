"""Scheduled jobs (apscheduler): rebuild the feature tables and load the online stores.

Three jobs, each on its own trigger (interval or cron):

- ``embeddings``: the main job's embedding part (:func:`recfeast.materialize.job.run` with
  ``parts=("embeddings",)``, no online load): re-embeds only new or changed items (unchanged
  embeddings are reused) and writes the item embedding tables;
- ``aggregates``: the main job's aggregate part: item content, user profile and behaviour
  aggregates, sequence embeddings and the real-time table, from the raw events plus the event log;
- ``load_online``: :func:`recfeast.materialize.online.load` into each configured online store: it
  clears the entities whose latest row changed or vanished and loads every row whatever its event
  time, so a row that arrived late is never skipped (Feast's ``materialize_incremental`` would skip
  it: it uses event time as its watermark).

Guarantees: a job never overlaps itself, also across scheduler processes on one machine (an
``fcntl`` lock per job in the state folder; a run that finds the lock taken is recorded as
``skipped``); jobs that write tables or load them wait for one shared ``tables`` lock, so a load
never forgets rows a table writer marked stale in the meantime; missed runs coalesce into one (apscheduler ``coalesce=True``); the job store is a
SQLite file (``SQLAlchemyJobStore``), so the schedule survives a restart; SIGTERM/SIGINT stop the
scheduler after the running job finishes. Each run is recorded in ``runs.sqlite`` (start, end,
status, rows, error) and ``recfeast jobs`` lists them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from recfeast import config
from recfeast.errors import ConfigError

JOBS = ("embeddings", "aggregates", "load_online")
DEFAULT_TRIGGERS = {"embeddings": {"interval_minutes": 60}, "aggregates": {"interval_minutes": 30},
                    "load_online": {"interval_minutes": 10}}


@dataclass
class ScheduleConfig:
    """What the scheduler runs and when."""

    data_dir: str                        # raw data folder read by the tables job
    repo: str | None = None              # feature repository; default recfeast.config.repo_path()
    online_stores: tuple[str, ...] = ("sqlite",)  # stores the load_online job fills
    triggers: dict = field(default_factory=lambda: dict(DEFAULT_TRIGGERS))
    # each trigger: {"interval_minutes": N} or {"cron": "m h dom mon dow"} (crontab syntax, UTC)
    engine: str = "local"                # where jobs encode and load: local | ray (materialize/engine.py)
    ray_address: str | None = None       # Ray cluster for engine="ray"; default $RAY_ADDRESS or a local one


def state_dir(repo: Path) -> Path:
    """Folder of the scheduler's job store, run records and locks: ``<repo>/data/scheduler``."""
    path = Path(repo) / "data" / "scheduler"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ run records
def _private_file(path: Path) -> Path:
    """Create ``path`` (or tighten an existing one) readable by its owner only (0600), like the tables."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


def _runs_db(repo: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(_private_file(state_dir(repo) / "runs.sqlite"), timeout=30)
    conn.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, "
                 "started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL, rows INTEGER, detail TEXT, pid INTEGER)")
    if "pid" not in {c[1] for c in conn.execute("PRAGMA table_info(runs)")}:   # records of an older version
        conn.execute("ALTER TABLE runs ADD COLUMN pid INTEGER")
    return conn


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


_GONE = "the process running it ({}) is gone; the next run redoes its work"


def _close_dead_runs(repo: Path, db: sqlite3.Connection) -> int:
    """Mark ``running`` records whose process is gone as ``interrupted``: by pid when recorded (a pid
    not alive on this machine), else when nobody holds the job's lock. Returns how many."""
    n = 0
    for run_id, job, pid in db.execute("SELECT id, job, pid FROM runs WHERE status='running'").fetchall():
        if pid is not None:
            gone = not _pid_alive(pid)
        else:
            with job_lock(repo, job) as free:
                gone = free
        if gone:
            db.execute("UPDATE runs SET status='interrupted', ended_at=?, detail=? WHERE id=? AND status='running'",
                       (_now(), _GONE.format(f"pid {pid}" if pid else "no lock holder"), run_id))
            n += 1
    db.commit()
    return n


def recent_runs(repo: Path, limit: int = 20) -> list[dict]:
    """The latest ``limit`` runs, newest first: id, job, started_at, ended_at, status, rows, detail, pid.

    Runs whose process is gone (killed) are marked ``interrupted`` first; details are redacted
    (:func:`recfeast.redact.redact`: records of older versions may quote a connection string)."""
    from recfeast.redact import redact

    with contextlib.closing(_runs_db(repo)) as conn:
        _close_dead_runs(repo, conn)
        cur = conn.execute("SELECT id, job, started_at, ended_at, status, rows, detail, pid FROM runs "
                           "ORDER BY id DESC LIMIT ?", (limit,))
        cols = [c[0] for c in cur.description]
        runs = [dict(zip(cols, row)) for row in cur.fetchall()]
    for r in runs:
        if r["detail"] is not None:
            r["detail"] = redact(r["detail"])
    return runs


def mark_interrupted(repo: Path) -> int:
    """Close the records of runs whose process died (SIGKILL, power cut): a ``running`` record whose
    pid is not alive (or, for records without a pid, whose job lock nobody holds) becomes
    ``interrupted``. Called when a scheduler starts and whenever runs are listed. Returns how many."""
    repo = config.repo_path(repo)
    with contextlib.closing(_runs_db(repo)) as db:
        return _close_dead_runs(repo, db)


@contextlib.contextmanager
def record_run(repo: Path, job: str):
    """Record one run of ``job`` (e.g. ``materialize`` from the CLI) in ``runs.sqlite``: ``running``
    with this pid, then ``ok`` or ``failed`` with the (redacted) error; the error is re-raised.
    Yields a dict whose ``rows`` and ``detail`` the caller may set."""
    from recfeast.redact import redact

    repo = config.repo_path(repo)
    out = {"rows": None, "detail": None}
    with contextlib.closing(_runs_db(repo)) as db:
        run_id = db.execute("INSERT INTO runs (job, started_at, status, pid) VALUES (?,?,?,?)",
                            (job, _now(), "running", os.getpid())).lastrowid
        db.commit()
    status = "ok"
    try:
        yield out
    except BaseException as exc:
        status, out["detail"] = "failed", f"{type(exc).__name__}: {exc}"[:4000]
        raise
    finally:
        with contextlib.closing(_runs_db(repo)) as db:
            db.execute("UPDATE runs SET ended_at=?, status=?, rows=?, detail=? WHERE id=?",
                       (_now(), status, out["rows"], None if out["detail"] is None else redact(out["detail"]), run_id))
            db.commit()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_held = threading.local()   # locks this thread holds: path -> depth (a holder may take its lock again)


def lock_holder(repo: Path, job: str) -> int | None:
    """Pid written by the last holder of the lock ``job`` (None when never taken or unreadable)."""
    try:
        return int((state_dir(repo) / f"{job}.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def job_lock(repo: Path, job: str, wait: bool = False, on_wait=None, reentrant: bool = False):
    """Yield True while holding the lock ``job``, False when another process (or another thread)
    holds it (``wait``: block until it is free instead; ``on_wait(pid)`` is called once first when
    the lock is taken, with the holder's pid, so a caller can say why it waits).

    The lock is an ``fcntl.flock`` on ``<repo>/data/scheduler/<job>.lock`` (released by the kernel
    when the holder dies). With ``reentrant``, a thread that already holds it gets it again at once
    (the main job takes ``tables`` itself and is also run under it by the scheduler and by
    promotion); without, a second taking in the same thread is refused like another process's."""
    path = state_dir(repo) / f"{job}.lock"
    depth = getattr(_held, "locks", None)
    if depth is None:
        depth = _held.locks = {}
    key = str(path.resolve())
    if reentrant and depth.get(key):
        depth[key] += 1
        try:
            yield True
        finally:
            depth[key] -= 1
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait(lock_holder(repo, job))
            fcntl.flock(fh, fcntl.LOCK_EX)
        outer = depth.get(key, 0)
        depth[key] = outer + 1
        try:
            fh.seek(0), fh.truncate(), fh.write(f"{os.getpid()}\n"), fh.flush()
            yield True
        finally:
            depth[key] = outer
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_job(job: str, data_dir: str, repo: str, online_stores: tuple[str, ...] = ("sqlite",),
            engine: str = "local", ray_address: str | None = None) -> dict:
    """Run one scheduled job now, under its lock, and record the run. ``engine``/``ray_address``:
    where its encoding and online load run (:mod:`recfeast.materialize.engine`; a Ray connection is
    opened for the run and closed after it).

    Returns:
        The run record (``status`` is ``ok``, ``failed`` or ``skipped``). A failure is recorded,
        not raised, so the scheduler keeps going and the next run catches up.

    Raises:
        ConfigError: unknown job name.
    """
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; expected one of {JOBS}")
    repo_path = config.repo_path(repo)
    with job_lock(repo_path, job) as held, contextlib.closing(_runs_db(repo_path)) as db:
        started = _now()
        if not held:
            cur = db.execute("INSERT INTO runs (job, started_at, ended_at, status, detail) VALUES (?,?,?,?,?)",
                             (job, started, _now(), "skipped", "another run of this job holds its lock"))
            db.commit()
            return recent_runs(repo_path, 1)[0]
        cur = db.execute("INSERT INTO runs (job, started_at, status, pid) VALUES (?,?,?,?)",
                         (job, started, "running", os.getpid()))
        db.commit()
        run_id = cur.lastrowid
        status, rows, detail = "ok", None, None
        try:
            with job_lock(repo_path, "tables", wait=True):
                rows, detail = _JOB_FUNCS[job](data_dir, repo_path, online_stores,
                                               engine=engine, ray_address=ray_address)
        except Exception as exc:  # recorded with its traceback; the schedule goes on
            from recfeast.redact import redact

            status, detail = "failed", redact(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")[:4000]
        db.execute("UPDATE runs SET ended_at=?, status=?, rows=?, detail=? WHERE id=?",
                   (_now(), status, rows, detail, run_id))
        db.commit()
    return recent_runs(repo_path, 1)[0]


def _tables_job(data_dir, repo, online_stores, parts, engine="local", ray_address=None):
    from recfeast.materialize.job import JobConfig, run

    summary = run(JobConfig(data_dir=data_dir, repo=repo, materialize=False, progress=False, parts=parts,
                            engine=engine, ray_address=ray_address))
    rows = sum(t["rows"] for t in summary.tables.values() if "rows" in t)
    changed = {k: t.get("new_or_changed", 0) for k, t in summary.tables.items()}
    return rows, json.dumps({"new_or_changed": changed, "quarantine": summary.quarantine})


#: load attempts per store and the exponential backoff between them (seconds)
LOAD_ATTEMPTS, LOAD_BACKOFF_MIN_S, LOAD_BACKOFF_MAX_S = 4, 1.0, 8.0


def _load_job(data_dir, repo, online_stores, engine="local", ray_address=None):
    """Load every configured store; a store that fails (Redis down or restarting) is retried with
    exponential backoff (tenacity), then the run fails visibly. What was pending stays pending
    (``online.load`` forgets it only after a successful load), so the next run catches up."""
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    from recfeast.errors import StoreError
    from recfeast import store
    from recfeast.materialize import engine as engines

    @retry(retry=retry_if_exception_type(StoreError), stop=stop_after_attempt(LOAD_ATTEMPTS),
           wait=wait_exponential(min=LOAD_BACKOFF_MIN_S, max=LOAD_BACKOFF_MAX_S), reraise=True)
    def load_one(kind, eng):
        return eng.load_online(store.feature_store(repo, kind), config.tables_dir(repo), quiet=True)

    with engines.opened(engine, ray_address) as eng:
        cleared = {kind: load_one(kind, eng) for kind in online_stores}
    return sum(sum(c.values()) for c in cleared.values()), json.dumps({"cleared": cleared})


_JOB_FUNCS = {
    "embeddings": lambda d, r, s, **e: _tables_job(d, r, s, ("embeddings",), **e),
    "aggregates": lambda d, r, s, **e: _tables_job(d, r, s, ("aggregates",), **e),
    "load_online": _load_job,
}


# ------------------------------------------------------------------ the scheduler
def _trigger(spec: dict):
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if "cron" in spec:
        try:
            return CronTrigger.from_crontab(spec["cron"], timezone="UTC")
        except ValueError as exc:
            raise ConfigError(f"cron {spec['cron']!r}: {exc}") from exc
    minutes = spec.get("interval_minutes")
    if not isinstance(minutes, (int, float)) or not 1 / 60 <= minutes <= 525_600:
        raise ConfigError(f"trigger {spec!r}: expected {{'interval_minutes': N}} with N from 1/60 (one second) "
                          "to 525600 (a year), or {'cron': 'm h dom mon dow'}")
    return IntervalTrigger(minutes=minutes, timezone="UTC")


def build_scheduler(cfg: ScheduleConfig, blocking: bool = True):
    """An apscheduler scheduler with a SQLite job store and both jobs added (replacing earlier ones)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    repo = config.repo_path(cfg.repo)
    mark_interrupted(repo)
    unknown = set(cfg.triggers) - set(JOBS)
    if unknown:
        raise ConfigError(f"unknown job(s) {sorted(unknown)} in triggers; expected {JOBS}")
    store_url = f"sqlite:///{_private_file(state_dir(repo) / 'jobs.sqlite')}"
    cls = BlockingScheduler if blocking else BackgroundScheduler
    sched = cls(jobstores={"default": SQLAlchemyJobStore(url=store_url)}, timezone="UTC",
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
    for job, spec in cfg.triggers.items():
        sched.add_job(run_job, _trigger(spec), id=job, name=job, replace_existing=True,
                      next_run_time=datetime.now(timezone.utc),  # run once at start, then on the trigger
                      kwargs={"job": job, "data_dir": str(cfg.data_dir), "repo": str(repo),
                              "online_stores": tuple(cfg.online_stores), "engine": cfg.engine,
                              "ray_address": cfg.ray_address})
    return sched


def serve(cfg: ScheduleConfig, log=print) -> None:
    """Run the scheduler in the foreground until SIGTERM/SIGINT; the running job finishes first."""
    sched = build_scheduler(cfg, blocking=True)

    def stop(signum, _frame):
        log(f"received signal {signum}: stopping after the running job")
        sched.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for job in sched.get_jobs():
        log(f"job {job.id}: {job.trigger}")
    sched.start()
