"""Batched online reads in Feast's storage layout: one Redis pipeline or one SQLite query per request.

Feast's ``get_online_features`` reads view by view, builds a proto per value and runs the on-demand
views in pandas; here every view of every entity goes out together and the raw bytes come back for
:mod:`recfeast.codec`. The layout is described in :mod:`recfeast.layout`.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recfeast import health
from recfeast.errors import StoreError
from recfeast.layout import ViewSpec, entity_key_bytes


@dataclass
class ViewRows:
    """Raw online values of one view for n entities.

    Attributes:
        present: ``(n,)`` bool, the entity has a row for the view.
        ts: ``(n,)`` float64 event time in unix seconds (NaN when absent or not needed: only read
            for views with a ttl).
        values: per feature, n serialised ``Value`` protos (``None`` when absent).
    """

    present: np.ndarray
    ts: np.ndarray
    values: list[list]


class RedisReader:
    """Reads Feast's Redis hashes with one pipelined HMGET per entity (all views of that entity).

    Args:
        store: a ``feast.FeatureStore`` whose online store is Redis (its address and project are used).
        timeout_s: socket connect and read timeout. retries: retries of a failed read (no backoff).

    A request must fail fast when Redis is gone: Feast's client retries 3 times with exponential
    backoff (8.5 s to refuse one read here), so a plain Redis gets its own pool with the same
    address and these limits; cluster and sentinel setups keep Feast's client.

    On a plain Redis the pipeline is packed here, not by redis-py: the HMGET field list of a join
    key is the same for every entity, so it is encoded once per request and each entity adds only
    its key; the whole request goes out in one ``sendall`` and the replies are read back on the
    same connection (hiredis parses them). The commands on the wire are the ones redis-py's
    pipeline would send (one HMGET per entity, one round trip); only the Python packing, about half
    of a 100-item read, is gone. Cluster and sentinel clients go through redis-py's pipeline.
    """

    kind = "redis"

    def __init__(self, store, timeout_s: float = 1.0, retries: int = 1):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        cfg = store.config
        self.project = cfg.project.encode()
        self.version = cfg.entity_key_serialization_version
        client = store._get_provider().online_store._get_client(cfg.online_store)
        if type(client) is redis.Redis:
            pool = client.connection_pool
            kw = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), retries), "socket_timeout": timeout_s,
                  "socket_connect_timeout": timeout_s}
            client = redis.Redis(connection_pool=type(pool)(connection_class=pool.connection_class, **kw))
            self._packed = True
        else:
            self._packed = False
        self.client = client
        self.retries = retries

    def sentinel(self) -> dict | None:
        """The last online load's record (:mod:`recfeast.health`), None when the store has none.

        Raises:
            StoreError: Redis cannot be reached.
        """
        try:
            return health.decode(self.client.get(self._sentinel_key))
        except Exception as exc:
            raise StoreError(f"online read from redis failed: {exc}") from exc

    def read(self, keys: dict[str, list], views: list[ViewSpec], stamp: bool = False):
        """Rows of ``views`` for the entities ``keys`` (join key -> int or str ids), in one round trip.

        Args:
            stamp: also GET the load sentinel (:mod:`recfeast.health`) in the same round trip and
                return ``(rows, sentinel bytes or None)``.

        Raises:
            StoreError: Redis cannot be reached or answers with an error.
        """
        groups = {jk: [v for v in views if v.join_key == jk] for jk in keys}
        # a join key none of the views reads (items of a user-only service): no HMGET without fields
        keys = {jk: ids for jk, ids in keys.items() if groups[jk]}
        plan = [(jk, len(ids)) for jk, ids in keys.items()]
        fields = {jk: [f for v in groups[jk] for f in (*v.fields, v.ts_field)] for jk in keys}
        try:
            if self._packed:
                replies = self._exchange(keys, fields, self._sentinel_key if stamp else None)
            else:
                with self.client.pipeline(transaction=False) as pipe:
                    for jk, ids in keys.items():
                        for i in ids:
                            pipe.hmget(entity_key_bytes(jk, i, self.version) + self.project, fields[jk])
                    if stamp:
                        pipe.get(self._sentinel_key)
                    replies = pipe.execute()
        except Exception as exc:  # redis ConnectionError, TimeoutError, ResponseError
            raise StoreError(f"online read from redis failed: {exc}") from exc
        sentinel = replies.pop() if stamp else None
        out, pos = {}, 0
        for jk, n in plan:
            block = replies[pos:pos + n]
            pos += n
            col = 0
            for v in groups[jk]:
                width = len(v.fields)
                ts_raw = [r[col + width] for r in block]
                present = np.array([t is not None for t in ts_raw], bool)
                ts = np.full(n, np.nan)
                if v.ttl_s:
                    ts = np.array([_proto_ts(t) for t in ts_raw], np.float64)
                out[v.name] = ViewRows(present, ts, [[r[col + j] if p else None for r, p in zip(block, present)]
                                                     for j in range(width)])
                col += width + 1
        return (out, sentinel) if stamp else out

    @property
    def _sentinel_key(self) -> bytes:
        return health.redis_key(self.project.decode())

    def _exchange(self, keys: dict[str, list], fields: dict[str, list[bytes]], get: bytes | None = None) -> list:
        """One HMGET per entity of ``keys`` (join key -> ids) for ``fields`` (join key -> hash
        fields), and a GET of ``get`` last when given, sent in one write and read back in order on
        one pooled connection; a connection
        or timeout error is retried ``retries`` times on a fresh connection. Any failure drops the
        connection (unread replies must not reach the next request).

        Raises:
            redis.ConnectionError / redis.TimeoutError / redis.ResponseError.
        """
        import redis

        chunks, n = [], 0
        for jk, ids in keys.items():
            fl = fields[jk]
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fl))
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fl)
            for i in ids:
                key = entity_key_bytes(jk, i, self.version) + self.project
                chunks.append(b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail))
            n += len(ids)
        if get is not None:
            chunks.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(get), get))
            n += 1
        payload = b"".join(chunks)
        if not n:
            return []
        pool, attempt = self.client.connection_pool, 0
        while True:
            conn = pool.get_connection()
            try:
                conn.send_packed_command([payload])
                return [conn.read_response() for _ in range(n)]
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                attempt += 1
                if attempt > self.retries:
                    raise
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)


def _proto_ts(raw: bytes | None) -> float:
    if raw is None:
        return np.nan
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.ParseFromString(raw)
    return t.seconds + t.nanos / 1e9


class SqliteReader:
    """Reads Feast's SQLite online tables with one ``UNION ALL`` query over every view.

    A read-only connection per thread (``sqlite3`` connections are not shared across threads), so
    concurrent HTTP requests read in parallel while a load writes.

    Args:
        store: a ``feast.FeatureStore`` whose online store is SQLite.

    Raises:
        StoreError: the database file does not exist (run ``recfeast materialize`` first).
    """

    kind = "sqlite"

    def __init__(self, store):
        cfg = store.config
        path = Path(cfg.online_store.path)
        self.path = path if path.is_absolute() else Path(cfg.repo_path) / path
        if not self.path.is_file():
            raise StoreError(f"no SQLite online store at {self.path}: run `recfeast materialize` first")
        self.version = cfg.entity_key_serialization_version
        self.project = cfg.project
        self._local = threading.local()

    def sentinel(self) -> dict | None:
        """The last online load's record (:mod:`recfeast.health`), None when the database has none."""
        try:
            row = self._conn().execute(f"SELECT value FROM {health.SQLITE_TABLE} WHERE project = ?",
                                       (self.project,)).fetchone()
        except sqlite3.Error:   # no such table: never loaded by a recfeast with sentinels
            return None
        return health.decode(row[0]) if row else None

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def read(self, keys: dict[str, list], views: list[ViewSpec], stamp: bool = False):
        """Rows of ``views`` for the entities ``keys`` (join key -> int or str ids), in one query.

        With ``stamp``, the load sentinel (:mod:`recfeast.health`) comes back in the same query
        (one more ``UNION ALL`` part; a database without the sentinel table is read again without
        it) and the answer is ``(rows, sentinel text or None)``.

        The requested keys go in as a numbered ``VALUES`` list per join key, joined to each view's
        table (its ``entity_key`` index): every row comes back with the request position of its
        entity (an int) instead of the key blob, and lands in its column slot directly.

        Raises:
            StoreError: the database cannot be read or a view's table is missing (not applied).
        """
        ctes, params, parts = [], [], []
        for jk, ids in keys.items():
            if ids and any(v.join_key == jk for v in views):
                ctes.append(f"k_{jk}(pos, ek) AS (VALUES {_values_sql(len(ids))})")
                params += [entity_key_bytes(jk, i, self.version) for i in ids]
        for n, v in enumerate(views):
            if len(keys[v.join_key]):
                parts.append(f'SELECT {n}, k.pos, t.feature_name, t.value, t.event_ts FROM k_{v.join_key} k '
                             f'JOIN "{v.table}" t ON t.entity_key = k.ek')
        sentinel_part = f"SELECT -1, 0, NULL, value, NULL FROM {health.SQLITE_TABLE} WHERE project = ?"
        try:
            if not stamp:
                return self._rows(self._query(ctes, parts, params), keys, views)
            try:
                rows = self._query(ctes, parts + [sentinel_part], params + [self.project])
            except sqlite3.OperationalError as exc:
                if health.SQLITE_TABLE not in str(exc):
                    raise
                rows = self._query(ctes, parts, params)   # never loaded by a recfeast with sentinels
        except Exception as exc:  # sqlite3.OperationalError: no such table, database locked, ...
            raise StoreError(f"online read from sqlite {self.path} failed: {exc} "
                             "(run `recfeast materialize` or `feast apply` for this project)") from exc
        sentinel = next((r[3] for r in rows if r[0] == -1), None)
        return self._rows([r for r in rows if r[0] != -1], keys, views), sentinel

    def _query(self, ctes: list[str], parts: list[str], params: list) -> list[tuple]:
        """``WITH <ctes> <parts joined by UNION ALL>`` on this thread's connection; [] without parts."""
        if not parts:
            return []
        with_ = f"WITH {', '.join(ctes)} " if ctes else ""
        return self._conn().execute(with_ + " UNION ALL ".join(parts), params).fetchall()

    @staticmethod
    def _rows(rows: list, keys: dict, views: list) -> dict[str, ViewRows]:
        """The query's ``(view n, pos, feature, value, event_ts)`` rows as :class:`ViewRows` per view."""
        sizes = [len(keys[v.join_key]) for v in views]
        cols = [{f: [None] * m for f in v.features} for v, m in zip(views, sizes)]
        stamps = [[None] * m for m in sizes]
        hit = [np.zeros(m, bool) for m in sizes]
        for n, pos, feat, value, ts in rows:
            col = cols[n].get(feat)   # None: a feature of the table the service does not read
            if col is not None:
                col[pos] = value
            hit[n][pos] = True
            stamps[n][pos] = ts
        out = {}
        for n, v in enumerate(views):
            ts = np.full(sizes[n], np.nan)
            if v.ttl_s:
                ts = np.array([_sqlite_ts(t) if h else np.nan for t, h in zip(stamps[n], hit[n])], np.float64)
            out[v.name] = ViewRows(hit[n], ts, [cols[n][f] for f in v.features])
        return out


@lru_cache(maxsize=64)
def _values_sql(m: int) -> str:
    """``(0,?),(1,?),...`` for m keys (the numbered key list of :meth:`SqliteReader.read`)."""
    return ",".join(f"({p},?)" for p in range(m))


def _sqlite_ts(raw) -> float:
    """Feast 0.67 writes ``event_ts`` as integer unix seconds; older files hold naive UTC text
    (``YYYY-MM-DD HH:MM:SS[.ffffff]``)."""
    if raw is None:
        return np.nan
    if isinstance(raw, (int, float)):
        return float(raw)
    if isinstance(raw, bytes):
        raw = raw.decode()
    t = datetime.fromisoformat(str(raw))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def make_reader(store):
    """The reader for ``store``'s online store type.

    Raises:
        StoreError: an online store type other than ``redis`` or ``sqlite``.
    """
    kind = store.config.online_store.type
    if kind == "redis":
        return RedisReader(store)
    if kind == "sqlite":
        return SqliteReader(store)
    raise StoreError(f"online store type {kind!r} is not supported by the recfeast SDK (redis, sqlite)")
