"""Real-time user features computed from behaviour events: one function for streaming and batch.

A user's real-time state after their latest event is a function of the tail of their event
history only (events ordered by ``(event_timestamp, seq)``, ``seq`` = arrival order in the event
log, so ties in time are broken the same way everywhere):

=========================== ================ ==================================================
feature                     type             meaning
=========================== ================ ==================================================
last_item_ids               list<int64>      items of the last ``last_n`` events, newest first
session_event_count         int64            events in the current session (a session ends
                                             after ``session_gap_s`` without events)
session_start_ts            int64            unix seconds of the session's first event
day_event_count             int64            events on the UTC day of the latest event
last_event_ts               int64            unix seconds of the latest event
realtime_sequence_embedding list<float32>    ``(384,)`` sequence encoder over the item text
                                             embeddings of the last ``seq_len`` events
realtime_model              string           ``<sequence model id>|<text model id>``
=========================== ================ ==================================================

:func:`tail_state` computes it walking backwards from the newest event, so it reads only as many
events as it needs; the ingest path (online, per event or batch) and the batch recomputation
(offline table, replay check) both call it, which is why online and offline agree.

The 30-minute session gap is the common web-analytics default (e.g. Google Analytics' session
timeout); it is a :class:`RealtimeConfig` setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ("last_item_ids", "session_event_count", "session_start_ts", "day_event_count",
            "last_event_ts", "realtime_sequence_embedding", "realtime_model")
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class RealtimeConfig:
    """Settings of the real-time user features."""

    last_n: int = 10              # items kept in last_item_ids
    seq_len: int = 20             # events read by the sequence encoder (its max_len)
    session_gap_s: int = 30 * 60  # inactivity that ends a session, seconds

    @property
    def tail(self) -> int:
        """Events that always suffice for the item lists (sessions and days may need more)."""
        return max(self.last_n, self.seq_len)


@dataclass
class TailState:
    """State of one user after their latest event, before the sequence embedding is computed."""

    user_id: int
    last_item_ids: list[int]      # newest first, <= last_n
    seq_item_ids: list[int]       # oldest first, <= seq_len: input of the sequence encoder
    session_event_count: int
    session_start_us: int
    day_event_count: int
    last_event_us: int


def tail_state(user_id: int, items: np.ndarray, ts_us: np.ndarray, cfg: RealtimeConfig) -> TailState | None:
    """The state after the newest of the given events.

    Args:
        items: ``(k,)`` int64 item ids, newest first (the newest ``k`` events of the user).
        ts_us: ``(k,)`` int64 event times, microseconds since the epoch (UTC), newest first.

    Returns:
        The state, or ``None`` when ``k == 0`` or when the tail is not long enough to know the
        session and day counts (the walk reached the oldest given event without finding the
        session's or the day's start): call again with more events, or with all of them.
    """
    k = len(items)
    if k == 0:
        return None
    gap_us = cfg.session_gap_s * 1_000_000
    gaps = ts_us[:-1] - ts_us[1:]                        # newer minus older, >= 0
    breaks = np.flatnonzero(gaps > gap_us)
    session = int(breaks[0]) + 1 if len(breaks) else None
    day = ts_us[0] // _DAY_US
    other_day = np.flatnonzero(ts_us // _DAY_US != day)
    day_count = int(other_day[0]) if len(other_day) else None
    if session is None or day_count is None:
        return None
    return TailState(
        user_id=int(user_id), last_item_ids=[int(i) for i in items[:cfg.last_n]],
        seq_item_ids=[int(i) for i in items[:cfg.seq_len][::-1]],
        session_event_count=session, session_start_us=int(ts_us[session - 1]),
        day_event_count=day_count, last_event_us=int(ts_us[0]))


def complete_state(user_id: int, items: np.ndarray, ts_us: np.ndarray, cfg: RealtimeConfig) -> TailState | None:
    """:func:`tail_state` over a user's whole history (newest first): never needs more events."""
    # a sentinel event infinitely far in the past closes the last session and day
    st = tail_state(user_id, np.append(items, -1), np.append(ts_us, np.iinfo(np.int64).min // 2), cfg)
    if st is None:
        return None
    st.last_item_ids = [i for i in st.last_item_ids if i != -1]
    st.seq_item_ids = [i for i in st.seq_item_ids if i != -1]
    return st


class ItemEmbeddings:
    """Item text embeddings read from the ``item_text_embedding`` table, reloaded when it changes.

    Args:
        path: the table (``<repo>/data/tables/item_text_embedding.parquet``).

    Raises:
        DataError: the table is missing (run ``recfeast materialize`` first) or has mixed models.
    """

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self._mtime = None
        self.switched_to: str | None = None   # set when the table moved to another text model
        if self.path is not None:
            self._load()

    @classmethod
    def from_arrays(cls, item_ids: np.ndarray, matrix: np.ndarray, model_id: str) -> "ItemEmbeddings":
        """From ``(n,)`` int64 ids and their ``(n, dim)`` float32 embeddings (rows with NaN are left out)."""
        self = cls(None)
        ok = ~np.isnan(matrix).any(axis=1)
        self.matrix, self.model_id = np.asarray(matrix[ok], np.float32), model_id
        self._pos = {int(i): n for n, i in enumerate(np.asarray(item_ids)[ok])}
        self.known_set = frozenset(self._pos)
        return self

    def _load(self) -> None:
        from recfeast.errors import DataError

        if not self.path.is_file():
            raise DataError(f"{self.path}: no item embeddings; run `recfeast materialize` first")
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime:
            return
        df = pd.read_parquet(self.path, columns=["item_id", "event_timestamp", "text_embedding", "text_model"])
        df = df.sort_values(["item_id", "event_timestamp"]).drop_duplicates("item_id", keep="last")
        models = df["text_model"].unique()
        if len(models) > 1:
            raise DataError(f"{self.path}: rows from {len(models)} text models ({', '.join(models)}); "
                            "one embedding space expected")
        if self._mtime is not None and len(models) and str(models[0]) != self.model_id:
            # a promotion switched the table to another text model: keep this process in the space
            # (and Feast project) it started with; restart it to follow the promotion
            self._mtime, self.switched_to = mtime, str(models[0])
            return
        self.model_id = str(models[0]) if len(models) else ""
        self.matrix = np.stack(df["text_embedding"].to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 384), np.float32)
        self._pos = {int(i): n for n, i in enumerate(df["item_id"].to_numpy())}
        self.known_set = frozenset(self._pos)
        self._mtime = mtime

    def refresh(self) -> None:
        """Reload if the table file changed since the last load."""
        if self.path is not None:
            self._load()

    def lookup(self, item_ids: list[int]) -> np.ndarray:
        """``(L, dim)`` float32 embeddings of the known items among ``item_ids``, in order."""
        rows = [r for r in map(self._pos.get, item_ids) if r is not None]
        return self.matrix[rows] if rows else np.zeros((0, self.matrix.shape[1]), np.float32)


def state_frame(states: list[TailState], items: ItemEmbeddings, encoder, model_id: str | None = None) -> pd.DataFrame:
    """Feature rows for ``states`` (one per user), as pushed online and written offline.

    ``model_id``: the ``realtime_model`` value, default ``"<encoder.model_id>|<items.model_id>"``
    (hashing the weights costs ~1 ms, so callers on the hot path pass it cached).

    Returns:
        DataFrame: user_id int64, event_timestamp datetime64[ns, UTC] (the latest event) and
        :data:`FEATURES`; ``realtime_sequence_embedding`` ``(384,)`` float32 arrays.
    """
    emb = encoder.encode([items.lookup(s.seq_item_ids) for s in states]) if states else np.zeros((0, 384))
    return pd.DataFrame({
        "user_id": np.array([s.user_id for s in states], np.int64),
        "event_timestamp": pd.to_datetime([s.last_event_us for s in states], unit="us", utc=True),
        "last_item_ids": [np.array(s.last_item_ids, np.int64) for s in states],
        "session_event_count": np.array([s.session_event_count for s in states], np.int64),
        "session_start_ts": np.array([s.session_start_us // 1_000_000 for s in states], np.int64),
        "day_event_count": np.array([s.day_event_count for s in states], np.int64),
        "last_event_ts": np.array([s.last_event_us // 1_000_000 for s in states], np.int64),
        "realtime_sequence_embedding": list(emb.astype(np.float32)),
        "realtime_model": model_id or f"{encoder.model_id}|{items.model_id}",
    })


def batch_states(events: pd.DataFrame, cfg: RealtimeConfig, snapshots: bool = False) -> list[TailState]:
    """Batch recomputation from an event log frame.

    Args:
        events: columns user_id, item_id, ts_us (int64 microseconds), seq (arrival order).
        snapshots: False -> one state per user (after their latest event); True -> one per user and
            active UTC day (after that day's last event), the point-in-time rows of the offline table.

    Returns:
        States ordered by user_id (then time).
    """
    ev = events.sort_values(["user_id", "ts_us", "seq"], kind="stable")
    out = []
    for user_id, u in ev.groupby("user_id", sort=True):
        items, ts = u["item_id"].to_numpy()[::-1], u["ts_us"].to_numpy()[::-1]   # newest first
        if not snapshots:
            out.append(complete_state(user_id, items, ts, cfg))
            continue
        day = ts // _DAY_US
        ends = [0] + [j for j in range(1, len(ts)) if day[j] != day[j - 1]]   # newest event of each day
        for j in reversed(ends):
            out.append(complete_state(user_id, items[j:], ts[j:], cfg))
    return out


def offline_table(log_file, items: ItemEmbeddings, encoder, cfg: RealtimeConfig) -> pd.DataFrame:
    """The ``user_realtime`` table: the state after each user's last event of each active UTC day,
    recomputed from the event log: ``log_file`` is the SQLite log's path (empty table when there is
    no log yet) or the logged events as a DataFrame (:func:`recfeast.eventlog.logged_events`, any backend)."""
    from recfeast.eventlog import EventLog

    if isinstance(log_file, pd.DataFrame):
        return state_frame(batch_states(log_file, cfg, snapshots=True), items, encoder)
    if not Path(log_file).is_file():
        return state_frame([], items, encoder)
    log = EventLog(log_file)
    try:
        ev = log.read(("seq", "user_id", "item_id", "ts_us"))
    finally:
        log.close()
    return state_frame(batch_states(ev, cfg, snapshots=True), items, encoder)


def arrow_schema():
    """Arrow schema of the ``user_realtime`` table (used to write it when it has no rows)."""
    import pyarrow as pa

    return pa.schema([("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                      ("created_timestamp", pa.timestamp("us", tz="UTC")),
                      ("last_item_ids", pa.list_(pa.int64())), ("session_event_count", pa.int64()),
                      ("session_start_ts", pa.int64()), ("day_event_count", pa.int64()),
                      ("last_event_ts", pa.int64()), ("realtime_sequence_embedding", pa.list_(pa.float32())),
                      ("realtime_model", pa.string())])
