"""The offline event log: every behaviour event ingested, append-only, in SQLite.

One file per feature repository (``<repo>/data/events/events.sqlite``, WAL mode). An append is one
transaction, so a batch is in the log entirely or not at all, also when the process is killed.
Each event has an ``event_id`` (a hash of user, item, action, value and event time: the same
definition of "the same event" as the batch cleaning's ``duplicate_event`` rule), unique in the
log, so re-sending a batch (at-least-once delivery, a retried request) adds nothing. ``seq`` is the
arrival order; ``(event_timestamp, seq)`` is the order every computation uses.

SQLite rather than Parquet segments: appends of one event must be cheap and atomic, duplicates must
be refused at append time, and the ingest path reads one user's newest events by index.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    value REAL NOT NULL,
    ts_us INTEGER NOT NULL,          -- event time, microseconds since the epoch, UTC
    ingested_us INTEGER NOT NULL     -- arrival time, microseconds since the epoch, UTC
);
CREATE INDEX IF NOT EXISTS events_user_time ON events (user_id, ts_us, seq);
"""
COLUMNS = ("seq", "event_id", "user_id", "item_id", "action", "value", "ts_us", "ingested_us")


def event_ids(df: pd.DataFrame) -> list[str]:
    """``(n,)`` event ids (20 hex chars of sha1) of clean events (user_id, item_id, action, value, ts_us)."""
    return [hashlib.sha1(f"{u}|{i}|{a}|{v!r}|{t}".encode()).hexdigest()[:20]
            for u, i, a, v, t in zip(df["user_id"], df["item_id"], df["action"], df["value"].astype(float),
                                     df["ts_us"])]


def log_path(repo: Path) -> Path:
    """``<repo>/data/events/events.sqlite``."""
    return Path(repo) / "data" / "events" / "events.sqlite"


class EventLog:
    """Append-only event log of one feature repository.

    Args:
        path: the SQLite file (created with its folder if missing).

    Thread safety: one connection per instance; use one instance per thread.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints, never corrupt
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def append(self, events: pd.DataFrame) -> pd.DataFrame:
        """Append clean events in one transaction; events already in the log are skipped.

        Args:
            events: columns user_id int64, item_id int64, action str, value float64, ts_us int64.

        Returns:
            The rows added (with ``seq``, ``event_id``, ``ingested_us``), in input order; duplicates
            of logged events and repeats within ``events`` are not in it.
        """
        df = events.reset_index(drop=True).copy()
        df["event_id"] = event_ids(df)
        df = df.drop_duplicates("event_id", keep="first")
        now = int(time.time() * 1_000_000)
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            known: set[str] = set()
            ids = df["event_id"].tolist()
            for start in range(0, len(ids), 900):   # SQLite's bound-parameter limit
                chunk = ids[start:start + 900]
                cur.execute(f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)
                known.update(r[0] for r in cur.fetchall())
            df = df[~df["event_id"].isin(known)].copy()
            df["ingested_us"] = now
            rows = list(zip(df["event_id"], df["user_id"].astype(int), df["item_id"].astype(int),
                            df["action"].astype(str), df["value"].astype(float), df["ts_us"].astype(int),
                            df["ingested_us"]))
            cur.executemany("INSERT INTO events (event_id, user_id, item_id, action, value, ts_us, ingested_us) "
                            "VALUES (?,?,?,?,?,?,?)", rows)
            last = cur.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        # AUTOINCREMENT within one transaction is consecutive
        df["seq"] = np.arange(last[0] - len(df) + 1, last[0] + 1, dtype=np.int64) if len(df) else np.zeros(0, np.int64)
        return df.reset_index(drop=True)

    def tails(self, user_ids, limit: int) -> pd.DataFrame:
        """Each user's newest ``limit`` events (columns user_id, item_id, ts_us, seq), newest first
        within each user; one indexed query per user, in one read transaction."""
        cur = self.conn.cursor()
        rows = []
        cur.execute("BEGIN")
        try:
            for u in user_ids:
                cur.execute("SELECT user_id, item_id, ts_us, seq FROM events WHERE user_id=? "
                            "ORDER BY ts_us DESC, seq DESC LIMIT ?", (int(u), int(limit)))
                rows += cur.fetchall()
        finally:
            cur.execute("COMMIT")
        return pd.DataFrame(rows, columns=["user_id", "item_id", "ts_us", "seq"]).astype("int64")

    def read(self, columns=COLUMNS) -> pd.DataFrame:
        """The whole log in ``seq`` order."""
        with contextlib.closing(self.conn.cursor()) as cur:
            cur.execute(f"SELECT {', '.join(columns)} FROM events ORDER BY seq")
            df = pd.DataFrame(cur.fetchall(), columns=list(columns))
        for col in ("seq", "user_id", "item_id", "ts_us", "ingested_us"):
            if col in df:
                df[col] = df[col].astype("int64")
        return df

    def count(self) -> int:
        """Number of events in the log."""
        return self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


# ---------------------------------------------------------------------------------------------------
# Backends. ``EventLog`` above is the SQLite one (the embedded default); :class:`RedisEventLog` keeps
# the same log in Redis (a stream, for a consumer group of ingest workers, plus per-user indexes).
# :func:`open_event_log` chooses by configuration: ``$RECFEAST_EVENT_LOG`` or an explicit ``url``.

SqliteEventLog = EventLog
SQLITE = "sqlite"

# KEYS: 1 stream, 2 id set, 3 seq counter. ARGV: 1 key prefix, 2 arrival time (us), then 6 per event:
# event_id, user_id, item_id, action, value, ts_us. Returns the new seq per event, 0 for a duplicate.
# One script call is atomic: the id set, the stream and the user index never disagree.
_APPEND_LUA = """
local out = {}
local n = (#ARGV - 2) / 6
for i = 0, n - 1 do
  local b = 3 + i * 6
  local eid = ARGV[b]
  if redis.call('SADD', KEYS[2], eid) == 1 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[1], '*', 'seq', seq, 'event_id', eid, 'user_id', ARGV[b + 1], 'item_id', ARGV[b + 2],
               'action', ARGV[b + 3], 'value', ARGV[b + 4], 'ts_us', ARGV[b + 5], 'ingested_us', ARGV[2])
    redis.call('ZADD', ARGV[1] .. ':user:' .. ARGV[b + 1], ARGV[b + 5], string.format('%015d', seq) .. ':' .. ARGV[b + 2])
    out[#out + 1] = seq
  else
    out[#out + 1] = 0
  end
end
return out
"""
# KEYS: 1 lock key. ARGV: 1 token. Deletes the lock only if this worker still holds it.
_UNLOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: 1 hash. ARGV: field, value pairs. Sets each field to max(old, value).
_HMAX_LUA = """
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""
_APPEND_CHUNK = 1000   # events per script call (one call blocks Redis for ~its duration)


def _project_of(repo: Path) -> str:
    """The Feast project of ``repo``: ``$RECFEAST_PROJECT`` or ``project:`` of its feature_store.yaml."""
    import yaml

    from recfeast import config

    override = config.project()
    if override:
        return override
    path = Path(repo) / "feature_store.yaml"
    try:
        return str(yaml.safe_load(path.read_text())["project"])
    except (OSError, KeyError, TypeError) as exc:
        from recfeast.errors import ConfigError

        raise ConfigError(f"{path}: cannot read the Feast project name ({exc})") from exc


class RedisEventLog:
    """The event log in Redis: the production backend, shared by every ingest process and worker.

    Keys (``<prefix>`` = ``recfeast:<Feast project>``):

    - ``<prefix>:events``: a Redis Stream, one entry per event (fields seq, event_id, user_id,
      item_id, action, value, ts_us, ingested_us), in arrival order; the consumer group ``ingest``
      of ``recfeast ingest-worker`` processes reads it;
    - ``<prefix>:event_ids``: a SET of every logged ``event_id``: an append of a known id adds nothing
      (the same rule as the SQLite log's UNIQUE column), so a resent event is never logged twice;
    - ``<prefix>:seq``: the arrival counter (``seq``, as SQLite's AUTOINCREMENT);
    - ``<prefix>:user:<user_id>``: a sorted set of the user's events, score = event time (us),
      member = ``<seq, 15 digits>:<item_id>``, so ``(event time, seq)`` order is the set's order:
      the worker reads a user's newest events by index, as the SQLite log does.

    Appends go through one Lua script per chunk of 1,000 events (atomic: id set, stream and index
    agree). The stream is never trimmed by recfeast: it is the history the batch jobs read.
    Keys outside ``KEYS`` are touched by the script, so it needs a single Redis (not Redis Cluster).

    Args:
        url: ``redis://[:password@]host:port[/db]`` (redis-py's ``Redis.from_url`` forms).
        prefix: key prefix, e.g. ``recfeast:movielens``.

    Raises:
        StoreError: Redis cannot be reached (at the first command).
    """

    GROUP = "ingest"

    def __init__(self, url: str, prefix: str):
        import redis

        self.url, self.prefix = url, prefix
        self.r = redis.Redis.from_url(url)
        self.stream, self.ids_key, self.seq_key = f"{prefix}:events", f"{prefix}:event_ids", f"{prefix}:seq"
        self.pushed_key = f"{prefix}:pushed"
        self._append = self.r.register_script(_APPEND_LUA)
        self._unlock = self.r.register_script(_UNLOCK_LUA)
        self._hmax = self.r.register_script(_HMAX_LUA)

    @property
    def name(self) -> str:
        """Where the log is, password redacted (for messages and the ``source`` of batch rows)."""
        from recfeast.redact import redact

        return redact(f"{self.url}#{self.stream}")

    def close(self) -> None:
        self.r.close()

    def user_key(self, user_id: int) -> str:
        return f"{self.prefix}:user:{int(user_id)}"

    def append(self, events: pd.DataFrame) -> pd.DataFrame:
        """As :meth:`EventLog.append`: the rows added (``seq``, ``event_id``, ``ingested_us``), without
        duplicates of logged events or repeats within ``events``. Atomic per chunk of 1,000 events;
        a resend after a failure adds only what is missing."""
        from recfeast.errors import StoreError

        df = events.reset_index(drop=True).copy()
        df["event_id"] = event_ids(df)
        df = df.drop_duplicates("event_id", keep="first").reset_index(drop=True)
        now = int(time.time() * 1_000_000)
        seqs: list[int] = []
        cols = list(zip(df["event_id"], df["user_id"].astype(int), df["item_id"].astype(int), df["action"].astype(str),
                        df["value"].astype(float), df["ts_us"].astype(int)))
        try:
            for start in range(0, len(cols), _APPEND_CHUNK):
                args: list = [self.prefix, now]
                for eid, u, i, a, v, t in cols[start:start + _APPEND_CHUNK]:
                    args += [eid, u, i, a, repr(v), t]
                seqs += [int(s) for s in self._append(keys=[self.stream, self.ids_key, self.seq_key], args=args)]
        except Exception as exc:
            raise StoreError(f"appending to the event log {self.name} failed: {exc}") from exc
        df["seq"] = np.asarray(seqs, np.int64) if seqs else np.zeros(0, np.int64)
        df = df[df["seq"] > 0].copy()
        df["ingested_us"] = now
        return df.reset_index(drop=True)

    def tails(self, user_ids, limit: int) -> pd.DataFrame:
        """As :meth:`EventLog.tails`: each user's newest ``limit`` events (user_id, item_id, ts_us, seq),
        newest first, from the per-user sorted sets in one pipelined round trip."""
        users = [int(u) for u in user_ids]
        with self.r.pipeline(transaction=False) as pipe:
            for u in users:
                pipe.zrevrange(self.user_key(u), 0, int(limit) - 1, withscores=True)
            res = pipe.execute()
        rows = []
        for u, members in zip(users, res):
            for member, score in members:
                seq, item = member.split(b":")
                rows.append((u, int(item), int(score), int(seq)))
        return pd.DataFrame(rows, columns=["user_id", "item_id", "ts_us", "seq"]).astype("int64")

    def versions(self, user_ids) -> list[int]:
        """Events logged per user (a number that only grows: the version of the user's history)."""
        with self.r.pipeline(transaction=False) as pipe:
            for u in user_ids:
                pipe.zcard(self.user_key(u))
            return [int(n) for n in pipe.execute()]

    def read(self, columns=COLUMNS) -> pd.DataFrame:
        """The whole log (the stream, read in pages of 10,000 with XRANGE) in ``seq`` order."""
        rows, start = [], "-"
        while True:
            page = self.r.xrange(self.stream, min=start, max="+", count=10_000)
            rows += [f for _, f in page]
            if len(page) < 10_000:
                break
            start = "(" + page[-1][0].decode()
        df = _entries_frame(rows)
        return df.sort_values("seq", kind="stable").reset_index(drop=True)[list(columns)]

    def count(self) -> int:
        """Number of events in the log (XLEN)."""
        return int(self.r.xlen(self.stream))

    # -------------------------------------------------------------- consumer group (ingest workers)
    def ensure_group(self) -> None:
        """Create the consumer group ``ingest`` (from the stream's start) if it does not exist."""
        import redis

        try:
            self.r.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def register_consumer(self, consumer: str) -> None:
        """Create ``consumer`` in the group now (XGROUP CREATECONSUMER), so it is listed before its
        first delivery (``recfeast status``, XINFO)."""
        self.r.xgroup_createconsumer(self.stream, self.GROUP, consumer)

    def read_group(self, consumer: str, count: int, block_ms: int, min_idle_ms: int) -> tuple[list, bool]:
        """Entries for ``consumer``: first entries pending longer than ``min_idle_ms`` in a (dead or
        stuck) consumer, taken over with XAUTOCLAIM; else new ones (XREADGROUP ``>``, waiting up to
        ``block_ms``). Returns ``([(entry id, {field: bytes})], claimed)``."""
        claimed = self.r.xautoclaim(self.stream, self.GROUP, consumer, min_idle_ms, "0-0", count=count)
        entries = [(i, f) for i, f in claimed[1] if f]   # an entry deleted meanwhile comes back empty
        if entries:
            return entries, True
        got = self.r.xreadgroup(self.GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms or None)
        return (got[0][1] if got else []), False

    def ack(self, entry_ids: list) -> int:
        """XACK ``entry_ids``; returns how many were pending."""
        return int(self.r.xack(self.stream, self.GROUP, *entry_ids)) if entry_ids else 0

    def group_info(self) -> dict:
        """``{"length", "pending", "lag", "consumers", "last_delivered"}`` of the ``ingest`` group
        (``lag``: entries not yet delivered; None when Redis cannot tell); {} without a group."""
        import redis

        try:
            groups = self.r.xinfo_groups(self.stream)
        except redis.ResponseError:
            return {}
        g = next((g for g in groups if g["name"] in (self.GROUP, self.GROUP.encode())), None)
        if g is None:
            return {}
        return {"length": self.count(), "pending": int(g["pending"]), "lag": g.get("lag"),
                "consumers": int(g["consumers"]), "last_delivered": g["last-delivered-id"].decode()}

    def lock(self, user_id: int, token: str, ttl_ms: int) -> bool:
        """Take the user's lock (SET NX PX); True when taken."""
        return bool(self.r.set(f"{self.prefix}:lock:{int(user_id)}", token, nx=True, px=ttl_ms))

    def unlock(self, user_id: int, token: str) -> None:
        """Release the user's lock if ``token`` still holds it."""
        self._unlock(keys=[f"{self.prefix}:lock:{int(user_id)}"], args=[token])

    def lock_many(self, user_ids: list[int], token: str, ttl_ms: int) -> list[int]:
        """Try to take each user's lock (one pipelined round trip); returns the users now held."""
        with self.r.pipeline(transaction=False) as pipe:
            for u in user_ids:
                pipe.set(f"{self.prefix}:lock:{int(u)}", token, nx=True, px=ttl_ms)
            return [u for u, ok in zip(user_ids, pipe.execute()) if ok]

    def unlock_many(self, user_ids: list[int], token: str) -> None:
        """Release the locks of ``user_ids`` that ``token`` still holds (one round trip)."""
        with self.r.pipeline(transaction=False) as pipe:
            for u in user_ids:
                self._unlock(keys=[f"{self.prefix}:lock:{int(u)}"], args=[token], client=pipe)
            pipe.execute()

    def pushed_versions(self, user_ids) -> list[int]:
        """The history version (:meth:`versions`) of each user's last pushed state (-1: none)."""
        vals = self.r.hmget(self.pushed_key, [str(int(u)) for u in user_ids]) if len(user_ids) else []
        return [int(v) if v is not None else -1 for v in vals]

    def set_pushed(self, versions: dict[int, int]) -> None:
        """Record the pushed versions (each only raised, never lowered)."""
        if versions:
            args = [x for u, v in versions.items() for x in (str(int(u)), int(v))]
            self._hmax(keys=[self.pushed_key], args=args)


def _entries_frame(fields: list[dict]) -> pd.DataFrame:
    """Stream entries (field -> bytes) -> the log's columns and dtypes."""
    df = pd.DataFrame({
        "seq": [int(f[b"seq"]) for f in fields], "event_id": [f[b"event_id"].decode() for f in fields],
        "user_id": [int(f[b"user_id"]) for f in fields], "item_id": [int(f[b"item_id"]) for f in fields],
        "action": [f[b"action"].decode() for f in fields], "value": [float(f[b"value"]) for f in fields],
        "ts_us": [int(f[b"ts_us"]) for f in fields], "ingested_us": [int(f[b"ingested_us"]) for f in fields]},
        columns=list(COLUMNS))
    return df.astype({"seq": "int64", "user_id": "int64", "item_id": "int64", "value": "float64",
                      "ts_us": "int64", "ingested_us": "int64"})


def entries_frame(entries: list[tuple[bytes, dict]]) -> pd.DataFrame:
    """Consumer-group entries ``[(id, fields)]`` -> DataFrame of :data:`COLUMNS` plus ``entry_id`` (str)."""
    df = _entries_frame([f for _, f in entries])
    df["entry_id"] = [i.decode() if isinstance(i, bytes) else str(i) for i, _ in entries]
    return df


def event_log_url(value: str | None = None) -> str:
    """The configured event log: ``value``, else ``$RECFEAST_EVENT_LOG``, else ``sqlite``.

    Raises:
        ConfigError: neither ``sqlite`` nor a ``redis://`` / ``rediss://`` / ``unix://`` URL.
    """
    import os

    from recfeast.errors import ConfigError
    from recfeast.redact import redact

    raw = (value or os.environ.get("RECFEAST_EVENT_LOG") or SQLITE).strip()
    if raw.lower() == SQLITE:
        return SQLITE
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"RECFEAST_EVENT_LOG / --event-log={redact(raw)!r}: expected 'sqlite' or a Redis URL "
                          "like redis://127.0.0.1:6379/0")
    return raw


def open_event_log(repo: Path, url: str | None = None, project: str | None = None):
    """The event log of feature repository ``repo``: :class:`EventLog` (SQLite, ``<repo>/data/events``)
    or :class:`RedisEventLog` (prefix ``recfeast:<project>``; ``project`` default: the repo's), chosen by
    :func:`event_log_url`. Both have append, tails, read, count, close.

    Raises:
        ConfigError: a bad URL, or no project name.
    """
    url = event_log_url(url)
    if url == SQLITE:
        return EventLog(log_path(repo))
    return RedisEventLog(url, f"recfeast:{project or _project_of(repo)}")


def is_streamed(log) -> bool:
    """True for a log consumed by ingest workers (Redis), False for the embedded SQLite log."""
    return isinstance(log, RedisEventLog)


def event_log_exists(repo: Path, url: str | None = None, project: str | None = None) -> bool:
    """Whether ``repo`` has logged events (SQLite: the file exists; Redis: the stream is non-empty)."""
    if event_log_url(url) == SQLITE:
        return log_path(repo).is_file()
    log = open_event_log(repo, url, project)
    try:
        return log.count() > 0
    finally:
        log.close()


def logged_events(repo: Path, columns=COLUMNS, url: str | None = None, project: str | None = None) -> pd.DataFrame:
    """Every logged event of ``repo`` as a DataFrame (``columns`` of :data:`COLUMNS`, ``seq`` order),
    from whichever backend is configured; empty (with the columns) when there is no log yet.
    The batch jobs read the log through this function."""
    if event_log_url(url) == SQLITE and not log_path(repo).is_file():
        return _entries_frame([])[list(columns)]
    log = open_event_log(repo, url, project)
    try:
        return log.read(tuple(columns))
    finally:
        log.close()


def with_logged_events(events: pd.DataFrame, items: pd.DataFrame, repo: Path, q, project=None) -> pd.DataFrame:
    """The clean raw events plus the events ingested into the repository's event log (already
    validated at ingest), without repeats; logged events of items no longer in the catalog are
    quarantined (``unknown_item``). The batch job's features and training's labels both read this
    one event set; ``project`` names the Redis Streams log's key prefix (SQLite: ignored).

    Returns:
        The events frame of :func:`recfeast.cleaning.clean_events`, sorted by time.
    """
    from recfeast.schema import ROW_REJECTED

    logged = logged_events(repo, ("seq", "user_id", "item_id", "action", "value", "ts_us"), project=project)
    if not len(logged):
        return events
    logged = pd.DataFrame({
        "user_id": logged["user_id"], "item_id": logged["item_id"], "action": logged["action"],
        "value": logged["value"].astype("float64"),
        "event_timestamp": pd.to_datetime(logged["ts_us"], unit="us", utc=True).astype("datetime64[ns, UTC]"),
        "source": "events.sqlite:seq=" + logged["seq"].astype(str)})
    gone = ~logged["item_id"].isin(items["item_id"])
    if gone.any():
        q.add_frame(logged[gone], "events", "unknown_item", ROW_REJECTED, "item_id",
                    lambda r: f"item_id={r['item_id']} (logged event) is not in the clean items table")
    key = ["user_id", "item_id", "action", "value", "event_timestamp"]
    out = pd.concat([events, logged[~gone]], ignore_index=True).drop_duplicates(key, keep="first")
    return out.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
