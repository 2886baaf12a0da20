"""Online rows that Feast's materialize would leave stale, and their removal.

Feast's Redis writer skips a row whose event timestamp is not newer than the stored one, so a value
corrected in place (same ``event_timestamp``, newer ``created_timestamp``) never reaches Redis, and
no store forgets an entity deleted from the tables. recfeast's rule is the offline one on both
stores: the online value is the table's latest row by ``(event_timestamp, created_timestamp)``, and
an entity absent from a table is absent online. To get there, the job records which entities'
latest rows changed or vanished (``pending_online_refresh.json``, kept until a load succeeds, so a
crash between writing tables and loading loses nothing) and clears those entities' online rows for
that view before Feast materializes.

Clearing uses Feast 0.67's storage layout (Redis: one hash per entity with ``_ts:<view>`` and
``mmh3("<view>:<feature>")`` fields; SQLite: a table per view keyed by the serialised entity key);
``tests/materialize/test_online_refresh.py`` pins it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recfeast import faults

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
    """Delete ``view_name``'s online values of ``entity_ids`` (int64 keys) in ``store``'s online store.

    Returns:
        Number of entities cleared.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if not entity_ids:
        return 0
    fv = store.get_feature_view(view_name)
    join_key = fv.join_keys[0]
    cfg = store.config
    keys = [EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(e))]) for e in entity_ids]
    if cfg.online_store.type == "redis":
        from feast.infra.online_stores.helpers import _mmh3, _redis_key

        client = store._get_provider().online_store._get_client(cfg.online_store)
        fields = [f"_ts:{view_name}".encode()] + [_mmh3(f"{view_name}:{f.name}") for f in fv.features]
        with client.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hdel(_redis_key(cfg.project, k, cfg.entity_key_serialization_version), *fields)
            pipe.execute()
    else:
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        conn = store._get_provider().online_store._get_conn(cfg)
        table = _table_id(cfg.project, fv, cfg.registry.enable_online_feature_view_versioning)
        blobs = [serialize_entity_key(k, entity_key_serialization_version=cfg.entity_key_serialization_version)
                 for k in keys]
        with conn:
            conn.executemany(f"DELETE FROM {_quote_id(table)} WHERE entity_key = ?", [(b,) for b in blobs])
    return len(keys)


def load(store, tables_dir: Path, quiet: bool = False, sequence_model: str | None = None) -> dict[str, int]:
    """Bring ``store``'s online store up to date with the tables in ``tables_dir``.

    Clears the rows pending for this store kind, materializes every batch view from the earliest
    event timestamp in the tables (so rows dated 1970 or earlier load too), forgets the pending set,
    and re-pushes the real-time state of every user in the event log (:func:`restore_realtime`).

    Returns:
        ``{view: entities cleared}``.

    Raises:
        StoreError: the online store refused a write (nothing pending is forgotten then).
    """
    import pyarrow.parquet as pq

    from recfeast import store as store_ops

    from recfeast.errors import StoreError

    kind = store.config.online_store.type
    try:
        cleared = {view: clear_online_rows(store, view, ids)
                   for view, ids in load_pending(tables_dir).get(kind, {}).items()}
    except Exception as exc:  # redis ConnectionError, sqlite OperationalError, ...
        raise StoreError(f"clearing stale rows in the {kind} online store failed: {exc}") from exc
    starts = []
    for fv in store.list_feature_views():
        path = Path(fv.batch_source.path)
        if path.is_file():
            col = pq.read_table(path, columns=["event_timestamp"]).column(0)
            if len(col):
                starts.append(pd.Timestamp(col.to_pandas().min()))
    start = min(starts).to_pydatetime() if starts else None
    faults.point("load:after_clear")
    # push-fed views (user_realtime) are written by the ingest path from the event log, never from
    # their table: a table written before the latest events would overwrite newer values on SQLite
    views = [fv.name for fv in store.list_feature_views() if type(fv.stream_source).__name__ != "PushSource"]
    store_ops.materialize(store, views=views, start=start, quiet=quiet)
    faults.point("load:after_materialize")
    clear_pending(tables_dir, kind)
    restore_realtime(store, sequence_model)
    return cleared


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
    from recfeast.eventlog import log_path

    repo = Path(store.repo_path)
    if not log_path(repo).is_file():
        return 0
    from recfeast.materialize.ingest import Ingestor

    ing = Ingestor(repo, store=store, sequence_model=sequence_model)
    try:
        return ing.rebuild_online()
    finally:
        ing.close()
