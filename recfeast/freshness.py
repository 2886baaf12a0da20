"""Freshness in event time: how far the online store is behind the events it serves.

Per feature view, two numbers:

- **lag**: now minus the newest event time loaded online for the view (a view loaded a minute ago
  from a table whose newest row is a day old is a day behind; Feast's own freshness gauge measures
  time since the last materialization and would say "one minute");
- **visibility**: for pushed views, seconds from an event's arrival (its ``ingested_us`` in the
  event log) to the moment its user's state was written online, as a cumulative histogram.

The writers (the online load in ``materialize/online.py``, the push of the ingest path and of the
ingest workers) record them in a small record kept *in the online store itself*, so every reader of
that store (``recfeast serve``'s ``/metrics`` and ``/health``, ``recfeast status``) sees the same
numbers, on every machine:

- Redis: the hash ``recfeast:<project>:freshness``;
- SQLite: the table ``recfeast_freshness`` (project, field, value) in the online store's file.

Fields are ``<view>|<name>`` integers: ``newest_event_us`` (only ever raised), ``loaded_us`` (last
write, only raised), ``rows`` (rows written by the last load; for pushed views the total pushed),
``vis_count``, ``vis_sum_us`` and ``vis_le_<i>`` (events visible within :data:`VIS_BUCKETS` [i]).

Thresholds: ``freshness: {view: {max_lag: "2h"}}`` in the catalog spec ``<repo>/catalog.yaml``
(:func:`thresholds`); a view whose lag is past its ``max_lag`` is ``stale``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from recfeast.errors import ConfigError, StoreError

#: upper bounds (seconds) of the event-to-online histogram buckets
VIS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CATALOG = "catalog.yaml"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# KEYS: 1 hash. ARGV: op, field, value triples; op "max" (raise only), "set", "incr".
_OPS_LUA = """
for i = 1, #ARGV, 3 do
  local op, f, v = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if op == 'incr' then redis.call('HINCRBY', KEYS[1], f, v)
  elseif op == 'set' then redis.call('HSET', KEYS[1], f, v)
  else
    local old = tonumber(redis.call('HGET', KEYS[1], f) or '-9.0e18')
    if v > old then redis.call('HSET', KEYS[1], f, v) end
  end
end
return 1
"""
_SQL = {
    "max": "INSERT INTO recfeast_freshness VALUES (?,?,?) ON CONFLICT(project, field) "
           "DO UPDATE SET value = max(value, excluded.value)",
    "set": "INSERT INTO recfeast_freshness VALUES (?,?,?) ON CONFLICT(project, field) DO UPDATE SET value = excluded.value",
    "incr": "INSERT INTO recfeast_freshness VALUES (?,?,?) ON CONFLICT(project, field) "
            "DO UPDATE SET value = value + excluded.value",
}


def parse_duration(text, where: str = "max_lag") -> float:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1w"`` or a number of seconds -> seconds (float).

    Raises:
        ConfigError: anything else (``where`` names the setting in the message).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool) and text >= 0:
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ConfigError(f"{where}={text!r}: expected a duration like '90s', '15m', '2h', '1d' or seconds")
    return float(m.group(1)) * _UNITS[m.group(2)]


def thresholds(repo: Path) -> dict[str, float]:
    """``{view: max_lag seconds}`` from the ``freshness:`` mapping of ``<repo>/catalog.yaml``
    (``{view_name: {max_lag: "2h"}}``); {} when the file or the key is absent.

    Raises:
        ConfigError: the file is not YAML, or the mapping has a bad shape or duration (file and key named).
    """
    import yaml

    path = Path(repo) / CATALOG
    if not path.is_file():
        return {}
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    section = spec.get("freshness") if isinstance(spec, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'freshness' must map view names to {{max_lag: '2h'}}, got {type(section).__name__}")
    out = {}
    for view, conf in section.items():
        if not isinstance(conf, dict) or "max_lag" not in conf:
            raise ConfigError(f"{path}: freshness.{view}: expected a mapping with max_lag, e.g. {{max_lag: '2h'}}")
        out[str(view)] = parse_duration(conf["max_lag"], f"{path}: freshness.{view}.max_lag")
    return out


class FreshnessRecord:
    """The freshness record of one Feast store's online store (see the module docstring).

    Args:
        store: a ``feast.FeatureStore`` whose online store is Redis or SQLite.
        client: the Redis client to use (default Feast's, which retries with backoff for seconds
            when Redis is down; serving passes its fast-failing reader client).

    Raises:
        StoreError: the online store is of another kind, or refused the write/read.
    """

    def __init__(self, store, client=None):
        self.kind, self.project = store.config.online_store.type, store.config.project
        if self.kind == "redis":
            self.client = client or store._get_provider().online_store._get_client(store.config.online_store)
            self.key = f"recfeast:{self.project}:freshness"
            self._ops = self.client.register_script(_OPS_LUA)
        elif self.kind == "sqlite":
            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            self.path = SqliteOnlineStore._get_db_path(store.config)
        else:
            raise StoreError(f"freshness record: online store {self.kind!r} is not supported (redis, sqlite)")

    def _write(self, ops: list[tuple[str, str, int]]) -> None:
        try:
            if self.kind == "redis":
                self._ops(keys=[self.key], args=[x for op in ops for x in op])
                return
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.path, timeout=60) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS recfeast_freshness (project TEXT NOT NULL, field TEXT NOT NULL, "
                             "value INTEGER NOT NULL, PRIMARY KEY (project, field))")
                for op, f, v in ops:
                    conn.execute(_SQL[op], (self.project, f, int(v)))
            conn.close()
        except Exception as exc:
            raise StoreError(f"writing the freshness record to the {self.kind} online store failed: {exc}") from exc

    def record_load(self, view: str, newest_event_us: int | None, rows: int, pushed: bool = False,
                    loaded_us: int | None = None) -> None:
        """Record that ``rows`` rows of ``view`` with newest event time ``newest_event_us`` (us since
        the epoch, UTC; None: no rows) were written online now. ``pushed``: add to the row count
        (push-fed views) instead of replacing it (batch loads)."""
        loaded_us = int(time.time() * 1e6) if loaded_us is None else int(loaded_us)
        ops = [("max", f"{view}|loaded_us", loaded_us), ("incr" if pushed else "set", f"{view}|rows", int(rows))]
        if newest_event_us is not None:
            ops.append(("max", f"{view}|newest_event_us", int(newest_event_us)))
        self._write(ops)

    def observe_visibility(self, view: str, seconds) -> None:
        """Add event-to-online delays (seconds, one per event) to ``view``'s histogram."""
        seconds = [max(0.0, float(s)) for s in seconds]
        if not seconds:
            return
        ops = [("incr", f"{view}|vis_count", len(seconds)), ("incr", f"{view}|vis_sum_us", int(sum(seconds) * 1e6))]
        for i, b in enumerate(VIS_BUCKETS):
            n = sum(s <= b for s in seconds)
            if n:
                ops.append(("incr", f"{view}|vis_le_{i}", n))
        self._write(ops)

    def read(self) -> dict[str, dict[str, int]]:
        """``{view: {name: int}}`` of everything recorded."""
        try:
            if self.kind == "redis":
                raw = {k.decode(): int(float(v)) for k, v in self.client.hgetall(self.key).items()}
            else:
                if not Path(self.path).is_file():
                    return {}
                with sqlite3.connect(self.path, timeout=60) as conn:
                    try:
                        raw = dict(conn.execute("SELECT field, value FROM recfeast_freshness WHERE project = ?",
                                                (self.project,)).fetchall())
                    except sqlite3.OperationalError:   # no table yet
                        raw = {}
                conn.close()
        except Exception as exc:
            raise StoreError(f"reading the freshness record of the {self.kind} online store failed: {exc}") from exc
        out: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            view, _, name = field.rpartition("|")
            out.setdefault(view, {})[name] = int(value)
        return out


def report(store, limits: dict[str, float] | None = None, now_s: float | None = None,
           event_now_s: float | None = None, client=None) -> list[dict]:
    """One dict per feature view of ``store`` (and per view in the record), sorted by name:

    ``view``, ``rows``, ``newest_event`` (ISO UTC or None), ``lag_s`` (now - newest event, seconds),
    ``last_load`` (ISO UTC or None), ``load_age_s``, ``max_lag_s`` (None: no threshold),
    ``state`` (``ok``, ``stale`` past max_lag, ``never loaded``), ``visibility``
    (``{"count", "sum_s", "buckets": [(le seconds, cumulative count)]}`` or None).

    ``limits``: ``{view: max_lag seconds}``; default :func:`thresholds` of the store's repository.
    ``now_s``: the wall clock (unix seconds, default now) for ``load_age_s``; ``event_now_s``: the
    clock of the events for ``lag_s`` and ``state`` (default ``now_s``; a server replaying history,
    ``recfeast serve --as-of``, passes its as-of time so a replayed catalog is not 28 years behind).
    ``client``: the Redis client to read with (see :class:`FreshnessRecord`).

    Raises:
        StoreError: the record cannot be read. ConfigError: bad thresholds.
    """
    import pandas as pd

    limits = thresholds(Path(store.repo_path)) if limits is None else limits
    now_s = time.time() if now_s is None else now_s
    event_now_s = now_s if event_now_s is None else event_now_s
    rec = FreshnessRecord(store, client).read()
    views = sorted({fv.name for fv in store.list_feature_views()} | set(rec))
    iso = lambda us: None if us is None else pd.Timestamp(us, unit="us", tz="UTC").isoformat()  # noqa: E731
    out = []
    for view in views:
        r = rec.get(view, {})
        newest, loaded = r.get("newest_event_us"), r.get("loaded_us")
        lag = None if newest is None else round(event_now_s - newest / 1e6, 3)
        limit = limits.get(view)
        if loaded is None:
            state = "never loaded"
        elif limit is not None and (lag is None or lag > limit):
            state = "stale"
        else:
            state = "ok"
        vis = None
        if r.get("vis_count"):
            vis = {"count": r["vis_count"], "sum_s": r.get("vis_sum_us", 0) / 1e6,
                   "buckets": [(b, r.get(f"vis_le_{i}", 0)) for i, b in enumerate(VIS_BUCKETS)]}
        out.append({"view": view, "rows": r.get("rows"), "newest_event": iso(newest), "lag_s": lag,
                    "last_load": iso(loaded), "load_age_s": None if loaded is None else round(now_s - loaded / 1e6, 3),
                    "max_lag_s": limit, "state": state, "visibility": vis})
    return out
