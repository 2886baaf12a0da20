"""Loading the online store from the feature tables: the direct writer, stale rows and their removal.

recfeast's rule is the offline one on both stores: the online value is the table's latest row by
``(event_timestamp, created_timestamp)``, and an entity absent from a table is absent online.
:func:`write_view` writes Feast 0.67's online layout (:mod:`recfeast.layout`; values serialised
as Feast does, :func:`recfeast.codec.encode_column`) straight from the Parquet tables, streamed in
record batches and pipelined, and overwrites on both stores (Feast's own Redis writer skips a row
whose event timestamp is not newer than the stored one, so a value corrected in place would never
reach Redis). No store forgets an entity deleted from the tables, so the job records which
entities' latest rows changed or vanished (``pending_online_refresh.json``, kept until a load
succeeds, so a crash between writing tables and loading loses nothing) and :func:`load` clears
those entities' online rows for that view before writing.

``tests/materialize/test_online_writer.py`` pins the writer against Feast's materialize and
``get_online_features`` on both stores; ``tests/materialize/test_online_refresh.py`` pins clearing.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast import faults
from recfeast.codec import encode_column, encode_timestamps
from recfeast.errors import StoreError
from recfeast.layout import entity_key_bytes, entity_keys, redis_key, view_layout
from recfeast.redact import redact

PENDING = "pending_online_refresh.json"


def load_pending(tables_dir: Path) -> dict:
    """``{store kind: {view: [entity ids]}}`` still to clear before the next load."""
    path = Path(tables_dir) / PENDING
    return json.loads(path.read_text()) if path.is_file() else {}


def add_pending(tables_dir: Path, view: str, entities: list[int], kinds=("sqlite", "redis")) -> None:
    """Record ``entities`` of ``view`` as to be cleared in every store kind (atomic write)."""
    from recfeast.io import write_json

    if not entities:
        return
    pending = load_pending(tables_dir)
    for kind in kinds:
        cur = set(pending.setdefault(kind, {}).get(view, []))
        pending[kind][view] = sorted(cur | set(int(e) for e in entities))
    write_json(Path(tables_dir) / PENDING, pending)


def clear_pending(tables_dir: Path, kind: str) -> None:
    """Forget what was pending for ``kind`` (after a successful load)."""
    from recfeast.io import write_json

    pending = load_pending(tables_dir)
    if pending.pop(kind, None) is not None:
        write_json(Path(tables_dir) / PENDING, pending)


def clear_online_rows(store, view_name: str, entity_ids: list[int]) -> int:
    """Delete ``view_name``'s online values of ``entity_ids`` (int64 or string keys) in ``store``'s online store.

    Returns:
        Number of entities cleared.
    """
    if not entity_ids:
        return 0
    cfg = store.config
    lay = view_layout(cfg, store.get_feature_view(view_name))
    if all(isinstance(e, (int, np.integer)) for e in entity_ids):
        ekeys = entity_keys(lay.join_key, np.asarray(entity_ids, np.int64), lay.key_version)
    else:   # string keys (a catalog spec with dtype: string)
        ekeys = [entity_key_bytes(lay.join_key, e, lay.key_version) for e in entity_ids]
    if cfg.online_store.type == "redis":
        client = store._get_provider().online_store._get_client(cfg.online_store)
        with client.pipeline(transaction=False) as pipe:
            for k in ekeys:
                pipe.hdel(redis_key(k, lay.project), lay.ts_field, *lay.fields)
            pipe.execute()
    else:
        from feast.infra.online_stores.sqlite import _quote_id

        conn = store._get_provider().online_store._get_conn(cfg)
        with conn:
            conn.executemany(f"DELETE FROM {_quote_id(lay.table)} WHERE entity_key = ?", [(b,) for b in ekeys])
    return len(ekeys)


#: entity rows per chunk of the direct writer (one Redis pipeline / one SQLite transaction each)
CHUNK_ROWS = 2000


def _ts_us(col) -> np.ndarray:
    """An Arrow timestamp (or null) column -> int64 microseconds since the epoch (UTC; null -> min)."""
    import pyarrow as pa

    if pa.types.is_null(col.type):
        return np.full(len(col), np.iinfo(np.int64).min, np.int64)
    if not pa.types.is_timestamp(col.type):
        raise StoreError(f"expected a timestamp column, got {col.type}")
    us = col.cast(pa.timestamp("us", col.type.tz), safe=False).cast(pa.int64())
    return us.fill_null(np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


def _latest_mask(path: Path, key: str, ts: str, created: str | None, end_us: int) -> np.ndarray:
    """Boolean mask over ``path``'s rows: the latest row per entity by ``(ts, created, row order)``
    among rows with ``ts <= end_us`` (the window Feast's materialize reads). Reads only those three
    columns, in record batches (24 bytes per row)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    ids, evs, crs = [], [], []
    for b in pf.iter_batches(batch_size=65536, columns=[key, ts] + ([created] if created else [])):
        k = b.column(0)
        ids.append(k.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64))
        ev = _ts_us(b.column(1))
        valid = k.is_valid().to_numpy(zero_copy_only=False) & (ev <= end_us) & (ev != np.iinfo(np.int64).min)
        evs.append(np.where(valid, ev, np.iinfo(np.int64).min))
        crs.append(_ts_us(b.column(2)) if created else np.zeros(len(ev), np.int64))
    if not ids:
        return np.zeros(0, bool)
    ids, evs, crs = np.concatenate(ids), np.concatenate(evs), np.concatenate(crs)
    keep = evs != np.iinfo(np.int64).min
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((rows, crs[rows], evs[rows], ids[rows]))]
    sid = ids[order]
    last = np.ones(len(order), bool)
    last[:-1] = sid[1:] != sid[:-1]
    mask = np.zeros(len(ids), bool)
    mask[order[last]] = True
    return mask


def _chunks(path: Path, columns: list[str], mask: np.ndarray, chunk_rows: int):
    """Record batches of ``path``'s rows where ``mask`` holds, at most ``chunk_rows`` each (streamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pos, pending, n_pending = 0, [], 0
    # pre_buffer=False: with it (the default) the reader keeps every column chunk it has read, so
    # memory grows with the table (572 MB of Arrow buffers for 110k rows of 1,280-d vectors, 29 MB without)
    pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    for b in pf.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False):
        m = mask[pos:pos + b.num_rows]
        pos += b.num_rows
        if not m.any():
            continue
        pending.append(b if m.all() else b.filter(pa.array(m)))
        n_pending += pending[-1].num_rows
        if n_pending >= chunk_rows:
            full = pa.Table.from_batches(pending).combine_chunks()
            cut = n_pending - n_pending % chunk_rows
            for off in range(0, cut, chunk_rows):
                yield full.slice(off, chunk_rows).to_batches()[0]
            pending = full.slice(cut).to_batches() if cut < n_pending else []
            n_pending -= cut
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _us_datetimes(us: np.ndarray) -> list:
    """Naive UTC ``datetime`` per microsecond value (what Feast's SQLite store binds); min -> None."""
    from datetime import datetime, timedelta

    epoch = datetime(1970, 1, 1)
    uniq, inv = np.unique(us, return_inverse=True)
    conv = [None if u == np.iinfo(np.int64).min else epoch + timedelta(microseconds=u) for u in uniq.tolist()]
    return [conv[i] for i in inv.tolist()]


def _resp(args) -> bytes:
    """One Redis command in RESP (the wire format redis-py's packer writes)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(parts)


class _RedisSink:
    """HSETs of whole entity hashes, one pipeline per chunk, sent from a worker thread so the next
    chunk is encoded while this one is on the wire. A plain ``redis.Redis`` client gets the
    commands packed here in RESP and written in one send (redis-py's pipeline spends more time
    packing than Redis spends storing); cluster and sentinel clients use redis-py's pipeline."""

    def __init__(self, store, lay):
        from concurrent.futures import ThreadPoolExecutor

        import redis

        cfg = store.config
        self.client = store._get_provider().online_store._get_client(cfg.online_store)
        self.raw = type(self.client) is redis.Redis
        self.ttl = cfg.online_store.key_ttl_seconds
        self.lay, self.pool, self.inflight = lay, ThreadPoolExecutor(1), None
        self.proj = lay.project.encode("utf-8")

    def _send(self, cmds: list, n: int):
        if not self.raw:
            with self.client.pipeline(transaction=False) as pipe:
                for c in cmds:
                    pipe.execute_command(*c)
                pipe.execute()
            return
        import redis

        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(cmds)])
            errors = []
            for _ in range(n):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:  # keep reading: the connection must stay in sync
                    errors.append(exc)
            if errors:
                raise errors[0]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def write(self, ekeys, columns, ts_us, created_us):
        lay, proj = self.lay, self.proj
        ts = encode_timestamps(ts_us)
        names = (lay.ts_field,) + lay.fields
        ttl = str(int(self.ttl)).encode() if self.ttl else None
        n = len(ekeys) * (2 if ttl else 1)
        if not self.raw:
            cmds = []
            for i, k in enumerate(ekeys):
                args = [b"HSET", k + proj]
                for f, v in zip(names, (ts[i],) + tuple(c[i] for c in columns)):
                    args += (f, v)
                cmds.append(args)
                if ttl:
                    cmds.append([b"EXPIRE", k + proj, ttl])
        else:  # RESP, assembled as one list of parts: constant headers prebuilt, lengths cached
            crlf, lens = b"\r\n", {}

            def hdr(m):
                h = lens.get(m)
                if h is None:
                    h = lens[m] = b"$%d\r\n" % m
                return h

            head = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(names))
            fhdr = [b"$%d\r\n%s\r\n" % (len(f), f) for f in names]
            cmds = []
            ext = cmds.extend
            for i, k in enumerate(ekeys):
                key = k + proj
                ext((head, hdr(len(key)), key, crlf))
                for fh, v in zip(fhdr, (ts[i],) + tuple(c[i] for c in columns)):
                    ext((fh, hdr(len(v)), v, crlf))
                if ttl:
                    ext((_resp([b"EXPIRE", key, ttl]),))
        self.flush()
        self.inflight = self.pool.submit(self._send, cmds, n)

    def flush(self):
        if self.inflight is not None:
            fut, self.inflight = self.inflight, None
            fut.result()

    def close(self):
        try:
            self.flush()
        finally:
            self.pool.shutdown()


class _SqliteSink:
    """Feast's upsert into ``<project>_<view>``: one row per (entity, feature), one transaction per chunk."""

    texts = True

    def __init__(self, store, lay):
        from feast.infra.online_stores.sqlite import _quote_id

        cfg = store.config
        if getattr(cfg.online_store, "vector_enabled", False) or getattr(
                cfg.online_store, "enable_openai_compatible_store", False):
            raise _Unsupported("sqlite vector_enabled / enable_openai_compatible_store")
        self.conn = store._get_provider().online_store._get_conn(cfg)
        self.lay = lay
        self.sql = (f"INSERT INTO {_quote_id(lay.table)} (entity_key, feature_name, value, value_text, event_ts, "
                    "created_ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                    "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                    "created_ts = excluded.created_ts;")

    def write(self, ekeys, columns, ts_us, created_us, texts):
        ev, cr = _us_datetimes(ts_us), _us_datetimes(created_us)
        rows = [(k, f, col[i], txt[i], ev[i], cr[i])
                for f, col, txt in zip(self.lay.features, columns, texts) for i, k in enumerate(ekeys)]
        with self.conn:
            self.conn.executemany(self.sql, rows)

    def close(self):
        pass


class _Unsupported(Exception):
    """A store option the direct writer does not reproduce; the load falls back to Feast's materialize."""


def write_view(store, fv, end: datetime | None = None, chunk_rows: int = CHUNK_ROWS) -> int:
    """Write the latest row per entity of ``fv``'s batch table straight into ``store``'s online
    store, in Feast 0.67's layout (:mod:`recfeast.layout`, values by :func:`recfeast.codec.encode_column`).

    Selects what Feast's materialize selects (rows with ``event_timestamp <= end``, the latest per
    entity by ``(event_timestamp, created_timestamp)``, ties -> the later row in the file) and
    overwrites on both stores (Feast's Redis writer would skip a same-time correction). Streams the
    table in record batches of ``chunk_rows``: memory is one chunk plus 24 bytes per table row.

    Args:
        store: Feast ``FeatureStore`` (redis or sqlite online store).
        fv: a ``FeatureView`` with a Parquet ``FileSource`` and one int64 join key.
        end: newest event time loaded (default now, UTC).

    Returns:
        Entity rows written.

    Raises:
        StoreError: the table is missing a column, or the online store refused a write.
    """
    import pyarrow.parquet as pq

    end = end or datetime.now(timezone.utc)
    end_us = int(pd.Timestamp(end).tz_convert("UTC").value // 1000) if pd.Timestamp(end).tzinfo \
        else int(pd.Timestamp(end).value // 1000)
    lay = view_layout(store.config, fv)
    from feast.types import String

    if any(f.name == lay.join_key and f.dtype == String for f in fv.entity_columns):
        raise _Unsupported(f"{fv.name}: string entity keys (the direct writer packs int64 keys)")
    src = fv.batch_source
    path = Path(src.path)
    if not path.is_file():
        return 0
    inv = {v: k for k, v in (src.field_mapping or {}).items()}
    col = lambda name: inv.get(name, name)  # noqa: E731  feature/key name -> the table's column
    ts_col, cr_col = src.timestamp_field, src.created_timestamp_column or None
    want = [col(lay.join_key), ts_col] + ([cr_col] if cr_col else []) + [col(f) for f in lay.features]
    missing = sorted(set(want) - set(pq.ParquetFile(path).schema_arrow.names))
    if missing:
        raise StoreError(f"{path}: feature view {fv.name!r} needs columns {missing}, not in the table")
    mask = _latest_mask(path, col(lay.join_key), ts_col, cr_col, end_us)
    kind = store.config.online_store.type
    sink = _RedisSink(store, lay) if kind == "redis" else _SqliteSink(store, lay)
    written = 0
    try:
        for b in _chunks(path, want, mask, chunk_rows):
            ids = b.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
            ekeys = entity_keys(lay.join_key, ids, lay.key_version)
            enc = [encode_column(b.column(want.index(col(f))), vt,
                                 texts=kind != "redis") for f, vt in zip(lay.features, lay.value_types)]
            ts_us = _ts_us(b.column(1))
            cr_us = _ts_us(b.column(2)) if cr_col else np.full(len(ids), np.iinfo(np.int64).min, np.int64)
            if kind == "redis":
                sink.write(ekeys, [e[0] for e in enc], ts_us, cr_us)
            else:
                sink.write(ekeys, [e[0] for e in enc], ts_us, cr_us, [e[1] for e in enc])
            written += len(ids)
        sink.close()
    except (StoreError, _Unsupported):
        raise
    except Exception as exc:  # redis ConnectionError, sqlite OperationalError, ...
        raise StoreError(f"writing {fv.name!r} into the {kind} online store failed: {redact(str(exc))}") from exc
    return written


def load(store, tables_dir: Path, quiet: bool = False, sequence_model: str | None = None,
         writer="direct") -> dict[str, int]:
    """Bring ``store``'s online store up to date with the tables in ``tables_dir``.

    See :func:`_load` for the steps, arguments and errors. A load that fails part way (an exception;
    not a killed process) leaves the sentinel of the previous load with an ``interrupted_at_s``
    added (:func:`recfeast.health.mark_sentinel`, best effort): ``/health`` judges the store as
    before, and serving's item cache, keyed by the sentinel, drops the rows it read before this
    load's writes instead of serving them until its age limit.
    """
    try:
        return _load(store, tables_dir, quiet, sequence_model, writer)
    except Exception:
        _mark_interrupted(store)
        raise


def _mark_interrupted(store) -> None:
    """:func:`recfeast.health.mark_sentinel` with ``interrupted_at_s``; a store that cannot be
    written now (the usual reason the load failed) is left as it is."""
    from recfeast import health

    try:
        health.mark_sentinel(store, interrupted_at_s=time.time())
    except Exception:   # the load's own error is the one to report
        pass


def _load(store, tables_dir: Path, quiet: bool = False, sequence_model: str | None = None,
          writer="direct") -> dict[str, int]:
    """:func:`load`'s steps: bring ``store``'s online store up to date with the tables in ``tables_dir``.

    Clears the rows pending for this store kind, writes the latest row per entity of every batch
    view (rows dated 1970 or earlier too; push-fed views are left to the ingest path), forgets the
    pending set, and re-pushes the real-time state of every user in the event log
    (:func:`restore_realtime`).

    Args:
        writer: ``direct`` (default): :func:`write_view`, Feast's layout written straight from the
            Parquet tables; ``feast``: Feast's ``materialize`` (the benchmark anchor; also used when
            the store has an option the direct writer does not reproduce, e.g. SQLite ``vector_enabled``,
            or a view has string entity keys); a callable ``writer(store, views, start, end, quiet=...)``:
            the Ray engine's partitioned write (:mod:`recfeast.materialize.engine`), given the window of
            :func:`recfeast.store.load_window`.

    Returns:
        ``{view: entities cleared}``.

    Raises:
        StoreError: the online store refused a write (nothing pending is forgotten then).
        ValueError: unknown ``writer``.
    """
    import pyarrow.parquet as pq

    from recfeast import store as store_ops

    if not (callable(writer) or writer in ("direct", "feast")):
        raise ValueError(f"writer must be 'direct', 'feast' or a callable, got {writer!r}")
    kind = store.config.online_store.type
    try:
        cleared = {view: clear_online_rows(store, view, ids)
                   for view, ids in load_pending(tables_dir).get(kind, {}).items()}
    except Exception as exc:  # redis ConnectionError, sqlite OperationalError, ...
        raise StoreError(f"clearing stale rows in the {kind} online store failed: {exc}") from exc
    faults.point("load:after_clear")
    # push-fed views (user_realtime) are written by the ingest path from the event log, never from
    # their table: a table written before the latest events would overwrite newer values on SQLite
    fvs = [fv for fv in store.list_feature_views() if type(fv.stream_source).__name__ != "PushSource"]
    views = [fv.name for fv in fvs]
    end = datetime.now(timezone.utc)
    starts, loaded = [], {}
    for fv in store.list_feature_views():
        path = Path(fv.batch_source.path)
        if path.is_file():
            col = pq.read_table(path, columns=["event_timestamp"]).column(0)
            if len(col):
                starts.append(pd.Timestamp(col.to_pandas().min()))
                loaded[fv.name] = (int(pd.Timestamp(col.to_pandas().max()).value // 1000), len(col))
    start = min(starts).to_pydatetime() if starts else None
    if callable(writer):
        writer(store, views, *store_ops.load_window(start), quiet=quiet)
    else:
        rest = fvs
        if writer == "direct":
            rest = []
            for fv in fvs:
                try:
                    write_view(store, fv, end=end)
                except _Unsupported:
                    rest.append(fv)
        if rest:
            store_ops.materialize(store, views=[fv.name for fv in rest], start=start, end=end, quiet=quiet)
    faults.point("load:after_materialize")
    _record_freshness(store, {v: loaded[v] for v in views if v in loaded})
    clear_pending(tables_dir, kind)
    restore_realtime(store, sequence_model)
    write_sentinel(store, views)
    return cleared


def write_sentinel(store, views: list[str]) -> dict:
    """Record in ``store`` what this load put online (:mod:`recfeast.health`: ``/health`` compares it
    with the tables, so an emptied or stale store is reported). Returns the record.

    Raises:
        StoreError: the online store refused the write.
    """
    import pyarrow.parquet as pq

    from recfeast import health
    from recfeast.errors import StoreError

    recs = {}
    for fv in store.list_feature_views():
        path = Path(fv.batch_source.path)
        sig = health.table_signature(path) if fv.name in views else None
        if sig is None:
            continue
        jk = fv.join_keys[0]
        col = pq.read_table(path, columns=[jk]).column(0) if sig["rows"] else None
        sig["sample"] = {"join_key": jk, "id": col[0].as_py()} if col is not None and len(col) else None
        recs[fv.name] = sig
    record = health.make_sentinel(recs)
    try:
        health.write_sentinel(store, record)
    except Exception as exc:
        raise StoreError(f"writing the load sentinel into the {store.config.online_store.type} online store "
                         f"failed: {exc}") from exc
    return record


def _record_freshness(store, loaded: dict[str, tuple[int, int]]) -> None:
    """Record per view the newest event time (us) and rows just loaded online (``recfeast status``,
    ``/metrics``: event-time lag per view)."""
    from recfeast.freshness import FreshnessRecord

    rec, now_us = FreshnessRecord(store), int(pd.Timestamp.now(tz="UTC").value // 1000)
    for view, (newest_us, rows) in loaded.items():
        rec.record_load(view, newest_us, rows, loaded_us=now_us)


def loaded_entities(store, tables_dir: Path) -> dict[str, int]:
    """``{view: entities}`` a full :func:`load` writes into the online store: Feast materializes the
    latest row of every entity in each batch view's table, so this is the number of distinct keys of
    each table (0 for a missing or empty table). Push-fed views (``user_realtime``) are not counted."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = {}
    for fv in store.list_feature_views():
        if type(fv.stream_source).__name__ == "PushSource":
            continue
        path = Path(fv.batch_source.path)
        if not path.is_file():
            out[fv.name] = 0
            continue
        col = pq.read_table(path, columns=[fv.join_keys[0]]).column(0)
        out[fv.name] = len(pc.unique(col)) if len(col) else 0
    return out


def restore_realtime(store, sequence_model: str | None = None) -> int:
    """Push every logged user's real-time state into ``store`` (after a flushed or restarted online
    store; a no-op without an event log), computed with ``sequence_model`` (a registered id; default
    the production one). Returns users pushed.

    Raises:
        StoreError: the push failed.
    """
    from recfeast.eventlog import event_log_exists

    repo = Path(store.repo_path)
    if not event_log_exists(repo):
        return 0
    from recfeast.materialize.ingest import Ingestor

    ing = Ingestor(repo, store=store, sequence_model=sequence_model)
    try:
        return ing.rebuild_online()
    finally:
        ing.close()
