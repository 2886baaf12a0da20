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
scheduler within seconds (:func:`serve`: the running job gets a short grace, then is interrupted and
recorded as such; runs waiting for the tables lock are cancelled). Each run is recorded in
``runs.sqlite`` (``waiting`` for the tables lock, then ``running`` from the moment it took the lock,
then ``ok``/``failed``/``skipped``/``interrupted``/``cancelled``, with rows and error), and
``recfeast jobs`` lists them, with ``recfeast materialize`` runs (:func:`recorded_run`).
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
from recfeast.errors import ConfigError, RecfeastError

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
    """Mark ``running`` / ``waiting`` records whose process is gone as ``interrupted``: by pid when recorded (a pid
    not alive on this machine), else when nobody holds the job's lock. Returns how many."""
    n = 0
    for run_id, job, pid in db.execute("SELECT id, job, pid FROM runs WHERE status IN ('running', 'waiting')").fetchall():
        if pid is not None:
            gone = not _pid_alive(pid)
        else:
            with job_lock(repo, job) as free:
                gone = free
        if gone:
            db.execute("UPDATE runs SET status='interrupted', ended_at=?, detail=? WHERE id=? AND status IN ('running', 'waiting')",
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
    """Close the records of runs whose process died (SIGKILL, power cut): a ``running`` or ``waiting``
    record whose pid is not alive (or, for records without a pid, whose job lock nobody holds)
    becomes ``interrupted``. Called when a scheduler starts and whenever runs are listed. Returns how many."""
    repo = config.repo_path(repo)
    with contextlib.closing(_runs_db(repo)) as db:
        return _close_dead_runs(repo, db)


class RunCancelled(RecfeastError):
    """A run that was waiting for the tables lock when its scheduler was stopped (recorded ``cancelled``)."""


#: set when this process's scheduler is stopping: runs that get the tables lock afterwards do not start
_STOPPING = threading.Event()

#: runs of this process not yet closed: run id -> (repo, status); read by the SIGTERM path of serve()
_ACTIVE: dict[int, tuple[Path, str]] = {}
_ACTIVE_LOCK = threading.Lock()


def _set_status(db, run_id: int, repo: Path, status: str, **cols) -> None:
    sets = ", ".join(f"{k}=?" for k in ("status", *cols))
    db.execute(f"UPDATE runs SET {sets} WHERE id=?", (status, *cols.values(), run_id))
    db.commit()
    with _ACTIVE_LOCK:
        if status in ("waiting", "running"):
            _ACTIVE[run_id] = (repo, status)
        else:
            _ACTIVE.pop(run_id, None)


class RunRecord:
    """What a recorded run reports back: set ``rows`` and ``detail`` inside :func:`recorded_run`."""

    def __init__(self, run_id: int):
        self.id, self.rows, self.detail = run_id, None, None


@contextlib.contextmanager
def recorded_run(repo: Path, job: str, lock_tables: bool = True):
    """Record one run of ``job`` in ``runs.sqlite`` around the ``with`` body (scheduled jobs and
    ``recfeast materialize`` alike).

    The record is ``waiting`` while the shared ``tables`` lock is awaited (``lock_tables``), then
    ``running`` with ``started_at`` = the moment the lock was taken, then ``ok`` or ``failed`` (the
    exception, with a short traceback, is recorded and re-raised). Yields a :class:`RunRecord`.
    """
    repo = config.repo_path(repo)
    with contextlib.closing(_runs_db(repo)) as db:
        cur = db.execute("INSERT INTO runs (job, started_at, status, pid) VALUES (?,?,?,?)",
                         (job, _now(), "waiting" if lock_tables else "running", os.getpid()))
        db.commit()
        rec = RunRecord(cur.lastrowid)
        with _ACTIVE_LOCK:
            _ACTIVE[rec.id] = (repo, "waiting" if lock_tables else "running")
        try:
            with job_lock(repo, "tables", wait=True, on_wait=lambda pid: _say_waiting(repo, job, pid)) \
                    if lock_tables else contextlib.nullcontext(True):
                if _STOPPING.is_set():   # the scheduler was stopped while this run waited
                    _set_status(db, rec.id, repo, "cancelled", ended_at=_now(),
                                detail="the scheduler was stopped while this run waited for the tables lock")
                    raise RunCancelled(f"run {rec.id} of {job} cancelled: the scheduler is stopping")
                _set_status(db, rec.id, repo, "running", started_at=_now())
                yield rec
        except RunCancelled:
            raise
        except BaseException as exc:
            from recfeast.redact import redact

            detail = redact(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")[:4000]
            _set_status(db, rec.id, repo, "failed", ended_at=_now(), detail=detail, rows=rec.rows)
            raise
        _set_status(db, rec.id, repo, "ok", ended_at=_now(), rows=rec.rows, detail=rec.detail)


def _say_waiting(repo: Path, job: str, pid) -> None:
    import sys

    print(f"recfeast: {job} is waiting for the tables lock of {repo} (held by pid {pid}: another materialize, a "
          "scheduled job or a model promotion); it starts when the lock is released", file=sys.stderr, flush=True)


def close_active_runs(reason: str) -> int:
    """Close every run of this process still ``running`` (-> ``interrupted``) or ``waiting`` for the
    tables lock (-> ``cancelled``) with ``reason``; used when the scheduler is stopped. Returns how many."""
    with _ACTIVE_LOCK:
        active = dict(_ACTIVE)
        _ACTIVE.clear()
    for run_id, (repo, status) in active.items():
        new = "interrupted" if status == "running" else "cancelled"
        with contextlib.closing(_runs_db(repo)) as db:
            db.execute("UPDATE runs SET status=?, ended_at=?, detail=? WHERE id=? AND status IN ('running', 'waiting')",
                       (new, _now(), reason, run_id))
            db.commit()
    return len(active)


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
    with job_lock(repo_path, job) as held:
        if not held:
            with contextlib.closing(_runs_db(repo_path)) as db:
                cur = db.execute("INSERT INTO runs (job, started_at, ended_at, status, detail) VALUES (?,?,?,?,?)",
                                 (job, _now(), _now(), "skipped", "another run of this job holds its lock"))
                db.commit()
            return _run(repo_path, cur.lastrowid)
        run_id = None
        try:
            with recorded_run(repo_path, job) as rec:
                run_id = rec.id
                rec.rows, rec.detail = _JOB_FUNCS[job](data_dir, repo_path, online_stores,
                                                       engine=engine, ray_address=ray_address)
        except Exception:  # recorded with its traceback by recorded_run; the schedule goes on
            pass
    return _run(repo_path, run_id) if run_id is not None else recent_runs(repo_path, 1)[0]


def _run(repo: Path, run_id: int) -> dict:
    with contextlib.closing(_runs_db(repo)) as conn:
        cur = conn.execute("SELECT id, job, started_at, ended_at, status, rows, detail FROM runs WHERE id=?", (run_id,))
        cols = [c[0] for c in cur.description]
        return dict(zip(cols, cur.fetchone()))


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


#: seconds a stop waits for the running job to finish before interrupting it
STOP_GRACE_S = 5.0


def serve(cfg: ScheduleConfig, log=print, grace_s: float | None = None) -> None:
    """Run the scheduler in the foreground until SIGTERM/SIGINT, then stop within seconds.

    On the signal: no new run starts, runs waiting for the tables lock are recorded ``cancelled``,
    the running job gets ``grace_s`` (default :data:`STOP_GRACE_S`) to finish, else it is recorded
    ``interrupted`` and the process exits without waiting for it. Interrupting is safe: every table
    write is atomic and what a load had pending stays pending (``tests/materialize/test_crash.py``
    kills jobs at every write), so the next run redoes the work.
    """
    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    # A background scheduler, stopped from this thread: a signal handler only sets an event. (Shutting
    # the scheduler down inside the handler, as before, let its loop submit a due run to the closed
    # executor: "RuntimeError: cannot schedule new futures after shutdown".)
    sched = build_scheduler(cfg, blocking=False)
    stop_requested = threading.Event()
    signals = []

    def stop(signum, _frame):
        signals.append(signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for job in sched.get_jobs():
        log(f"job {job.id}: {job.trigger}")
    sched.start()
    while not stop_requested.wait(1.0):
        pass
    _STOPPING.set()
    log(f"received signal {signals[0]}: stopping (no new runs; the running job gets {grace_s:g} s, "
        "then it is interrupted)")
    sched.pause()                    # the scheduler's loop submits nothing more ...
    sched.shutdown(wait=False)       # ... and stops; queued runs never start
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with _ACTIVE_LOCK:
            if not any(st == "running" for _, st in _ACTIVE.values()):
                break
        time.sleep(0.1)
    n = close_active_runs(f"stopped by a signal to the scheduler (pid {os.getpid()}); the next run redoes its work")
    log(f"stopped: {n} run(s) interrupted or cancelled" if n else "stopped: no run was in progress")
    if n:
        # a job thread is still inside a run: leave without joining it (its writes are atomic)
        import sys

        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
