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


def with_logged_events(events: pd.DataFrame, items: pd.DataFrame, repo: Path, q) -> pd.DataFrame:
    """The clean raw events plus the events ingested into the repository's event log (already
    validated at ingest), without repeats; logged events of items no longer in the catalog are
    quarantined (``unknown_item``). The batch job's features and training's labels both read this
    one event set.

    Returns:
        The events frame of :func:`recfeast.cleaning.clean_events`, sorted by time.
    """
    from recfeast.schema import ROW_REJECTED

    path = log_path(repo)
    if not path.is_file():
        return events
    log = EventLog(path)
    try:
        logged = log.read(("seq", "user_id", "item_id", "action", "value", "ts_us"))
    finally:
        log.close()
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
