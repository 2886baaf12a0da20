"""The online load sentinel: what the last online load wrote, kept inside the online store itself.

Each :func:`recfeast.materialize.online.load` ends by writing one small JSON record into the store it
loaded (:func:`write_sentinel`): when it ran, and per batch view the table file it loaded from (rows,
size, a hash of its Parquet footer, modification time) and one entity that must now be online. Serving reads it back
(``/health``) and compares it with the tables (:func:`check`):

- no sentinel: the store is empty, was flushed (``FLUSHDB``), restarted without persistence, or was
  loaded by a recfeast without sentinels -> ``degraded`` ("empty");
- a sample entity missing online: keys were evicted or deleted -> ``degraded`` ("incomplete");
- a table whose content differs from the loaded one (footer hash, size or rows), rewritten longer
  ago than the allowed lag -> ``degraded`` ("behind").

Storage: Redis, the string key ``recfeast:<project>:load_sentinel`` (so ``FLUSHDB`` removes it with the
features); SQLite, the table ``recfeast_load_sentinel(project, value)`` in the online database.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

SQLITE_TABLE = "recfeast_load_sentinel"
VERSION = 1


def redis_key(project: str) -> bytes:
    """Redis key of ``project``'s sentinel. It does not end with the project name, so it is not taken
    for one of Feast's entity hashes (they do); a Feast teardown leaves it, and the sample entities
    (:func:`check`) then report the store as incomplete."""
    return f"recfeast:{project}:load_sentinel".encode()


def table_signature(path: Path) -> dict | None:
    """``{"file", "rows", "size", "footer", "mtime_ns"}`` of a Parquet table, None if absent or not Parquet.

    ``footer`` is the SHA-256 (first 16 hex digits) of the Parquet footer (schema, row groups, column
    offsets, sizes and min/max statistics): it changes when the content does, and not when the file
    is only copied or touched. Only the footer is read (a few KB whatever the table's size).
    """
    import hashlib
    import struct

    path = Path(path)
    try:
        st = path.stat()
        with open(path, "rb") as fh:
            fh.seek(-8, 2)
            tail = fh.read(8)
            if tail[4:] != b"PAR1":
                return None
            n = struct.unpack("<I", tail[:4])[0]
            fh.seek(-8 - n, 2)
            footer = fh.read(n)
    except (OSError, ValueError, struct.error):
        return None
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        return None
    return {"file": path.name, "rows": int(rows), "size": int(st.st_size),
            "footer": hashlib.sha256(footer).hexdigest()[:16], "mtime_ns": int(st.st_mtime_ns)}


def make_sentinel(views: dict[str, dict], loaded_at: float | None = None) -> dict:
    """The record of one load. ``views``: view -> ``table_signature(...)`` plus ``"sample":
    {"join_key", "id"}`` (an entity that the load put online) or None."""
    t = time.time() if loaded_at is None else loaded_at
    return {"version": VERSION, "loaded_at": datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds"),
            "loaded_at_s": t, "views": views}


def write_sentinel(store, record: dict) -> None:
    """Write ``record`` into ``store``'s online store (Redis key or SQLite table, see module doc).

    Raises:
        Exception from the store client (the caller wraps it into a StoreError).
    """
    cfg = store.config
    value = json.dumps(record, sort_keys=True)
    online = store._get_provider().online_store
    if cfg.online_store.type == "redis":
        online._get_client(cfg.online_store).set(redis_key(cfg.project), value)
        return
    conn = online._get_conn(cfg)
    with conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SQLITE_TABLE} (project TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(f"INSERT OR REPLACE INTO {SQLITE_TABLE} (project, value) VALUES (?, ?)", (cfg.project, value))


def mark_sentinel(store, **fields) -> bool:
    """Rewrite ``store``'s sentinel with ``fields`` added (e.g. ``interrupted_at_s`` after a load that
    failed part way), its record of the loaded tables unchanged: :func:`check` answers as before,
    and a reader that keys on the sentinel's bytes (the serving item cache,
    :mod:`recfeast.serving.itemcache`) sees a change. Returns False when the store has no sentinel
    (nothing is written then).

    Raises:
        Exception from the store client.
    """
    cfg = store.config
    online = store._get_provider().online_store
    if cfg.online_store.type == "redis":
        rec = decode(online._get_client(cfg.online_store).get(redis_key(cfg.project)))
    else:
        try:
            row = online._get_conn(cfg).execute(f"SELECT value FROM {SQLITE_TABLE} WHERE project = ?",
                                                (cfg.project,)).fetchone()
        except sqlite3.OperationalError:   # no such table: never loaded by a recfeast with sentinels
            row = None
        rec = decode(row[0]) if row else None
    if rec is None:
        return False
    write_sentinel(store, {**rec, **fields})
    return True


def decode(raw) -> dict | None:
    """The sentinel record from its stored bytes/text (None when absent or unreadable)."""
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("views"), dict) else None


def check(sentinel: dict | None, tables_dir: Path, max_lag_s: float = 600.0, now: float | None = None,
          missing_samples: list[str] = ()) -> list[str]:
    """Problems of the online store against the tables; an empty list means healthy.

    Args:
        sentinel: the stored record (:func:`decode`), None when absent.
        tables_dir: folder of the feature tables (``recfeast.config.tables_dir``).
        max_lag_s: how long a table may have been rewritten without a load before it counts as behind.
        now: unix seconds (default the clock).
        missing_samples: views whose sample entity the caller did not find online.

    Returns:
        Human-readable problems, each starting with ``empty``, ``incomplete`` or ``behind``.
    """
    if sentinel is None:
        return ["empty: the online store has no load sentinel (empty, flushed or restarted without "
                "persistence, or never loaded by this recfeast); reload it"]
    now = time.time() if now is None else now
    out = [f"incomplete: the sample entity of view {v!r} is not in the online store (evicted or deleted keys)"
           for v in missing_samples]
    for view, rec in sorted(sentinel["views"].items()):
        cur = table_signature(Path(tables_dir) / rec.get("file", f"{view}.parquet"))
        if cur is None:
            continue
        changed = (cur["footer"], cur["size"], cur["rows"]) != (rec.get("footer"), rec.get("size"), rec.get("rows"))
        age = now - cur["mtime_ns"] / 1e9
        if changed and age > max_lag_s:
            out.append(f"behind: table {cur['file']} ({cur['rows']} rows) was rewritten {age:.0f} s ago, after the "
                       f"last online load at {sentinel.get('loaded_at')} ({rec.get('rows')} rows); reload it")
    return out
