"""Real-time event ingestion: validate -> append to the event log -> push real-time features online.

>>> ing = Ingestor()                                 # repo and online store from the environment
>>> res = ing.ingest([{"user_id": 196, "item_id": 242, "action": "click", "event_timestamp": 1700000000}])
>>> res.accepted, res.duplicates, res.rejected
(1, 0, [])

Each call:

1. validates each event (:func:`validate_one`: the batch cleaning's parsers for ids and times, a
   known item, an action name, a value within the rating scale, no event time in the future); bad
   events come back with the reason and are appended to ``<repo>/data/events/rejected.jsonl``;
   the rest go through;
2. appends the good ones to the event log in one transaction (:class:`EventLog`; repeats of logged
   events are counted as duplicates and change nothing);
3. recomputes each affected user's real-time state from the log's tail of that user
   (:func:`recfeast.materialize.realtime.tail_state`, so late and out-of-order events land in the
   right place) and pushes it to the online store through the ``user_realtime_push`` push source.

Steps 2-3 run under a per-repository lock, so concurrent ingesters (and the scheduled rebuild)
never push an older state over a newer one. A crash between 2 and 3 loses nothing: the log has the
events, and the next event of the user, or :meth:`Ingestor.rebuild_online` (run by the
``load_online`` job), pushes the right state. Backfills go through the same call.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast import config, layout
from recfeast.errors import StoreError
from recfeast.eventlog import is_streamed, log_path, open_event_log
from recfeast.jsonsafe import dumps
from recfeast.materialize.realtime import (FEATURES, ItemEmbeddings, RealtimeConfig, batch_states, complete_state,
                                           state_frame, tail_state)

PUSH_SOURCE, VIEW = "user_realtime_push", "user_realtime"
REQUIRED = ("user_id", "item_id", "action", "event_timestamp")
ACTION_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_FUTURE_S = 300   # event times more than this ahead of the clock are refused (clock skew, ms units)
#: rejected.jsonl is rotated to rejected.jsonl.1 (the previous .1 dropped) when it would pass this size
REJECTED_MAX_BYTES = int(os.environ.get("RECFEAST_REJECTED_MAX_BYTES", 64 * 2**20))


@dataclass
class IngestResult:
    """Outcome of one :meth:`Ingestor.ingest` call.

    Attributes:
        accepted: events added to the log. duplicates: valid events already in the log (or repeated
        in the call). rejected: ``{"index", "reason", "event"}`` per bad event (index in the call).
        users_updated: users with at least one accepted (new) event, whose real-time features were
        pushed. users_repushed: users with only duplicate events, whose state was pushed again
        unchanged (repairs a push that failed after the log write). seconds: wall time of the call.
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)
    users_updated: int = 0
    users_repushed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        # shallow: the rejected events are echoed as received (dataclasses.asdict would deep-copy them
        # recursively and fail on deeply nested input)
        return {f.name: getattr(self, f.name) for f in fields(self)}


class InvalidRecord(str):
    """A record that could not even be parsed (e.g. a line that is not JSON); its text is the reason,
    ``raw`` the input as received (kept in ``rejected.jsonl``)."""

    def __new__(cls, reason: str, raw: str | None = None):
        obj = super().__new__(cls, reason)
        obj.raw = raw
        return obj


def validate_one(rec, known_items, now_s: float, rating_scale=(1.0, 5.0), event_types=None) -> tuple | str:
    """One event -> ``(user_id, item_id, action, value, ts_us)`` or the reason it is refused.

    Rules: a JSON object with user_id, item_id, action, event_timestamp; ids exact int64
    (:func:`~recfeast.cleaning.parse_int64_value`); the item known to the catalog; the
    action a lower-case name; event time as in the batch cleaning
    (:func:`~recfeast.cleaning.parse_timestamp_value`) and at most ``MAX_FUTURE_S``
    ahead of ``now_s``; value a finite number (required for ``rate``, within ``rating_scale``;
    default 1 for other actions). With ``event_types`` (the catalog spec's ``events.types``), the
    action must be a declared type and the value follows that type's rules (required, scale, step),
    as in the batch cleaning.
    """
    from recfeast.cleaning import parse_int64_value, parse_timestamp_value

    if isinstance(rec, InvalidRecord):
        return str(rec)
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    missing = [f for f in REQUIRED if rec.get(f) is None]
    if missing:
        return f"missing field(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}"
    user, item = parse_int64_value(rec["user_id"]), parse_int64_value(rec["item_id"])
    for name, raw, val in (("user_id", rec["user_id"], user), ("item_id", rec["item_id"], item)):
        if val is None:
            return f"unparsable_id: {name}={raw!r} is not an integer in the int64 range"
    if item not in known_items:
        return f"unknown_item: item_id={item} is not in the catalog (no item embedding)"
    action = rec["action"]
    if not isinstance(action, str) or not ACTION_RE.fullmatch(action):
        return f"action={action!r}: expected a lower-case name like 'rate', 'click', 'view', 'purchase'"
    vspec = None
    if event_types is not None:
        if action not in event_types:
            return f"unknown_event_type: action={action!r}: expected one of {sorted(event_types)} (the catalog spec)"
        vspec = event_types[action].value
    ts = parse_timestamp_value(rec["event_timestamp"])
    if ts is None:
        return (f"unparsable_timestamp: event_timestamp={rec['event_timestamp']!r}: expected unix seconds or "
                "ISO-8601 between 1900 and 2262")
    if ts.timestamp() > now_s + MAX_FUTURE_S:
        return (f"event_timestamp={rec['event_timestamp']!r} is more than {MAX_FUTURE_S} s in the future "
                "(clock skew, or milliseconds instead of seconds?)")
    value = rec.get("value")
    if value is None:
        if (vspec is not None and vspec.required) or (event_types is None and action == "rate"):
            return f"missing_value: action {action!r} needs a numeric value"
        value = 1.0   # implicit feedback (click, view, ...) weighs 1 unless given
    if isinstance(value, (bool, np.bool_)):
        return f"unparsable_value: value={value!r} is not a number"
    try:
        value = float(value) + 0.0   # + 0.0 turns -0.0 into 0.0: one event, one id
    except (TypeError, ValueError, OverflowError):
        return f"unparsable_value: value={str(value)[:40]!r} is not a number"
    if not np.isfinite(value):
        return f"unparsable_value: value={value!r} is not a finite number"
    if event_types is None:
        lo, hi = rating_scale
        if action == "rate" and not lo <= value <= hi:
            return f"value_out_of_range: rating {value:g} outside the scale [{lo:g}, {hi:g}]"
    elif vspec is not None and vspec.scale is not None:
        lo, hi = vspec.scale
        if not lo <= value <= hi:
            return f"value_out_of_range: {action} {value:g} outside the scale [{lo:g}, {hi:g}]"
        if vspec.step and abs((value - lo) / vspec.step - round((value - lo) / vspec.step)) > 1e-6:
            return f"value_off_step: {action} {value:g} is not on the scale's step {vspec.step:g}"
    return user, item, action, value, ts.value // 1000


def validate(records: list, known_items, now_s: float | None = None,
             rating_scale=(1.0, 5.0), event_types=None) -> tuple[pd.DataFrame, list[dict], int]:
    """Split ``records`` into clean events and rejections (:func:`validate_one` per record).

    Returns:
        ``(events, rejected, duplicates)``: events with columns index, user_id int64, item_id int64,
        action str, value float64, ts_us int64 (valid, in input order, exact repeats within the call
        removed); rejected ``[{"index", "reason", "event"}]``; number of in-call repeats.
    """
    now_s = time.time() if now_s is None else now_s
    known = known_items if isinstance(known_items, (set, frozenset)) else set(int(i) for i in known_items)
    rejected, rows, seen, duplicates = [], [], set(), 0
    for i, rec in enumerate(records):
        out = validate_one(rec, known, now_s, rating_scale, event_types)
        if isinstance(out, str):
            rejected.append({"index": i, "reason": out, "event": rec})
        elif out in seen:
            duplicates += 1
        else:
            seen.add(out)
            rows.append((i, *out))
    events = pd.DataFrame(rows, columns=["index", "user_id", "item_id", "action", "value", "ts_us"])
    return events.astype({"index": "int64", "user_id": "int64", "item_id": "int64", "action": object,
                          "value": "float64", "ts_us": "int64"}), rejected, duplicates


@contextlib.contextmanager
def _repo_lock(repo: Path, name: str = "ingest.lock"):
    path = log_path(repo).with_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Ingestor:
    """Ingests behaviour events into one feature repository and its online store.

    Args:
        repo: feature repository; default :func:`recfeast.config.repo_path`.
        online_store: ``sqlite`` or ``redis``; default ``$RECFEAST_ONLINE_STORE`` or sqlite.
        project: override the Feast project (tests).
        cfg: real-time feature settings.
        store: an existing ``feast.FeatureStore`` to use instead of building one.
        rating_scale: ``(min, max)`` of ``rate`` values.
        sequence_model: registered sequence encoder id; default the registry's production one.
        event_log: ``sqlite`` or a Redis URL; default ``$RECFEAST_EVENT_LOG`` or sqlite
            (:func:`recfeast.eventlog.open_event_log`). With Redis, :meth:`ingest` only appends to
            the stream (``XADD``); ``recfeast ingest-worker`` processes compute and push the state.

    Raises:
        DataError: no item embeddings table yet (run ``recfeast materialize`` first).
        StoreError: the store has no ``user_realtime`` view (run ``feast apply`` / ``recfeast materialize``).

    Thread-safe: calls are serialised (and across processes by a file lock).
    """

    def __init__(self, repo=None, online_store: str | None = None, project: str | None = None,
                 cfg: RealtimeConfig | None = None, store=None, rating_scale=(1.0, 5.0),
                 sequence_model: str | None = None, event_log: str | None = None):
        from recfeast import model_registry as registry
        from recfeast import store as store_ops

        self.repo = config.repo_path(repo)
        self.cfg = cfg or RealtimeConfig()
        self.rating_scale = rating_scale
        from recfeast.spec import load_spec, spec_path

        self.spec = load_spec(spec_path(self.repo))   # event types and their value rules
        self.store = store if store is not None else store_ops.feature_store(self.repo, online_store, project)
        try:
            self._view = self.store.get_feature_view(VIEW)   # re-create the Ingestor after an apply
        except Exception as exc:
            raise StoreError(f"no {VIEW!r} feature view in the registry of {self.repo}: run `recfeast materialize` "
                             f"or `feast apply` first ({exc})") from exc
        self.items = ItemEmbeddings(config.tables_dir(self.repo) / "item_text_embedding.parquet")
        # the production sequence encoder, as the aggregates job uses (registry default: seeded GRU)
        self.encoder = registry.sequence_encoder(self.repo, self.items.matrix.shape[1], self.cfg.seq_len, sequence_model)
        self.log = open_event_log(self.repo, event_log, project)   # per repo (+ override), not per promotion
        self.streamed = is_streamed(self.log)   # Redis stream: the ingest workers push
        self._lock = threading.Lock()
        self._freshness = None

    # ------------------------------------------------------------------ ingest
    def ingest(self, records: list, push: bool = True, sources: list | None = None) -> IngestResult:
        """Validate, log and push ``records`` (dicts with user_id, item_id, action, event_timestamp
        (unix seconds or ISO-8601) and value (required for ``rate``)).

        ``sources``: optional label per record (e.g. the input file's line number), written with
        each rejection to ``rejected.jsonl``.

        Returns:
            :class:`IngestResult`. Bad events never raise.

        Raises:
            StoreError: the online push failed after the events were logged (they stay logged; the
                next ingest of those users or :meth:`rebuild_online` repairs the online state).
        """
        res, _, error = self._ingest(records, push, sources)
        if error is not None:
            raise error
        return res

    def _ingest(self, records: list, push: bool, sources: list | None):
        """:meth:`ingest` that returns ``(result, users with a valid event, StoreError of the push or
        None)`` instead of raising when the push fails (the events are logged either way)."""
        t0 = time.perf_counter()
        records = list(records)
        self.items.refresh()
        events, rejected, dups = validate(records, self.items.known_set, rating_scale=self.rating_scale,
                                          event_types=self.spec.events.types)
        res = IngestResult(rejected=rejected, duplicates=dups)
        if rejected:
            self._set_aside(rejected, sources)
        error = None
        if self.streamed:   # append (XADD) only: the consumer group of ingest workers pushes
            added = self.log.append(events.drop(columns="index")) if len(events) else events
            res.accepted, res.duplicates = len(added), res.duplicates + len(events) - len(added)
            res.seconds = round(time.perf_counter() - t0, 6)
            return res, [], None
        with self._lock, _repo_lock(self.repo):
            added = self.log.append(events.drop(columns="index")) if len(events) else events
            res.accepted = len(added)
            res.duplicates += len(events) - len(added)
            # every user with a valid event, also the ones whose events were already logged: a retry
            # after a failed push (the events were logged, the push was not done) repairs them
            users = sorted(set(events["user_id"].tolist())) if len(events) else []
            if push and users:
                try:
                    self.push(self.states(users))
                    if len(added):
                        self.observe_visibility(added["ingested_us"].to_numpy())
                except StoreError as exc:
                    error = exc
            if push and error is None:
                fresh = set(added["user_id"].tolist()) if len(added) else set()
                res.users_updated = len(fresh)
                res.users_repushed = len(users) - len(fresh)
        res.seconds = round(time.perf_counter() - t0, 6)
        return res, users, error

    def push_users(self, user_ids) -> None:
        """Push the current state of ``user_ids`` (from the event log) online, under the ingest locks.

        Raises:
            StoreError: the online store refused the write.
        """
        with self._lock, _repo_lock(self.repo):
            self.push(self.states(sorted({int(u) for u in user_ids})))

    def ingest_batches(self, batches, on_store_error=None) -> dict:
        """Ingest ``batches`` (iterable of ``(label, records, sources)``, e.g. line ranges of a file)
        and keep going when the online store is down.

        Every valid event is logged whatever the store does. While the store answers, each batch is
        pushed as it comes; after the first failed push the remaining batches are only logged (no
        timeout per batch), and one push of every waiting user is tried at the end. What still failed
        waits in the event log for the next load (the ``load_online`` job's rebuild, or the next
        ingest of those users), and the report says which batches those are.

        Args:
            on_store_error: called with the (redacted) error text the first time the store fails.

        Returns:
            ``{"accepted", "duplicates", "rejected", "users_updated" (users with new events, plus the ones
            pushed by the final retry), "users_repushed" (users re-pushed with no new event), "pushed": [labels],
            "pushed_at_end": [labels], "waiting": [labels], "waiting_users": n, "store_error": str|None,
            "first_rejections": [{"source", "reason"}] (20 at most)}``.
        """
        out = {"accepted": 0, "duplicates": 0, "rejected": 0, "users_updated": 0, "users_repushed": 0,
               "pushed": [], "pushed_at_end": [],
               "waiting": [], "waiting_users": 0, "store_error": None, "first_rejections": []}
        store_up, waiting_users = True, set()
        for label, records, sources in batches:
            res, users, error = self._ingest(records, store_up, sources)
            out["accepted"] += res.accepted
            out["duplicates"] += res.duplicates
            out["rejected"] += len(res.rejected)
            out["users_updated"] += res.users_updated
            out["users_repushed"] += res.users_repushed
            for r in res.rejected:
                if len(out["first_rejections"]) < 20:
                    out["first_rejections"].append({"source": sources[r["index"]] if sources else r["index"],
                                                    "reason": r["reason"]})
            if error is not None and store_up:
                store_up, out["store_error"] = False, str(error)
                if on_store_error is not None:
                    on_store_error(str(error))
            if not users:
                continue
            if store_up:
                out["pushed"].append(label)
            else:
                out["waiting"].append(label)
                waiting_users.update(users)
        if waiting_users:
            try:
                self.push_users(waiting_users)
            except StoreError as exc:
                out["store_error"] = str(exc)
                out["waiting_users"] = len(waiting_users)
            else:
                out["pushed_at_end"], out["waiting"] = out["waiting"], []
                out["users_updated"] += len(waiting_users)
        return out

    def _set_aside(self, rejected: list[dict], sources: list | None = None) -> None:
        path = log_path(self.repo).with_name("rejected.jsonl")
        now = pd.Timestamp.now(tz="UTC").isoformat()

        def record(r):
            ev = r["event"]
            out = {**r, "event": getattr(ev, "raw", None) if isinstance(ev, InvalidRecord) else ev, "rejected_at": now}
            if sources is not None:
                out["source"] = sources[r["index"]]
            return out

        # strict JSON whatever the input held (NaN, lone surrogates, deep nesting), and bounded on disk
        lines, size = [], 0
        for r in rejected:
            line = (dumps(record(r)) + "\n").encode("utf-8")
            if size + len(line) > REJECTED_MAX_BYTES // 2:   # one call never fills the file: say what was left out
                lines.append((dumps({"dropped": len(rejected) - len(lines), "rejected_at": now,
                                     "reason": f"over {REJECTED_MAX_BYTES // 2} bytes of rejections in one call"})
                              + "\n").encode())
                break
            lines.append(line)
            size += len(line)
        data = b"".join(lines)
        with _repo_lock(self.repo, "rejected.lock"):
            if path.is_file() and path.stat().st_size + len(data) > REJECTED_MAX_BYTES:
                os.replace(path, path.with_name(path.name + ".1"))   # the file and one older: <= 2x the cap
            with open(path, "ab") as fh:
                fh.write(data)

    # ------------------------------------------------------------------ state
    def states(self, user_ids) -> pd.DataFrame:
        """Real-time feature rows of ``user_ids`` from the event log (users without events are left out).

        Reads each user's newest events, more only when the session or day is longer than that.
        """
        limit, todo, out = max(4 * self.cfg.tail, 64), [int(u) for u in user_ids], []
        while todo:
            tails, nxt = self.log.tails(todo, limit), []
            for u, g in tails.groupby("user_id", sort=False):
                items, ts = g["item_id"].to_numpy(), g["ts_us"].to_numpy()
                st = (complete_state if len(g) < limit else tail_state)(u, items, ts, self.cfg)
                (nxt.append(u) if st is None else out.append(st))
            todo, limit = nxt, limit * 4
        out.sort(key=lambda s: s.user_id)
        return state_frame(out, self.items, self.encoder, self._model_id())

    def batch_frame(self, snapshots: bool = False) -> pd.DataFrame:
        """Batch recomputation over the whole log: one row per user (``snapshots=False``) or per user and
        active day (the offline table's point-in-time rows)."""
        ev = self.log.read(("seq", "user_id", "item_id", "ts_us"))
        return state_frame(batch_states(ev, self.cfg, snapshots), self.items, self.encoder, self._model_id())

    def _model_id(self) -> str:
        """``<sequence id>|<text id>``, recomputed only when the item embeddings were reloaded."""
        if getattr(self, "_model_for", None) != self.items.model_id:
            self._model, self._model_for = f"{self.encoder.model_id}|{self.items.model_id}", self.items.model_id
        return self._model

    # ------------------------------------------------------------------ online
    def push(self, frame: pd.DataFrame) -> None:
        """Write ``frame`` (from :meth:`states`) online through the push source.

        Feast's Redis writer skips a row whose event time is not newer than the stored one; a late
        event or two events in the same instant leave the latest event time unchanged, so the
        stored time is dropped first (values stay readable meanwhile).

        Raises:
            StoreError: the online store refused the write.
        """
        if not len(frame):
            return
        try:
            if self.store.config.online_store.type == "redis":
                self._forget_redis_times(frame["user_id"].tolist())
            # the source declares created_timestamp (the offline table's write time); push needs it too
            frame = frame.assign(created_timestamp=pd.Timestamp.now(tz="UTC"))
            # what FeatureStore.push(PUSH_SOURCE, frame, to=PushMode.ONLINE) does, minus its
            # per-call registry lookups (they cost ~2/3 of a single-event push)
            self.store._get_provider().ingest_df(self._view, frame)
        except Exception as exc:
            raise StoreError(f"pushing real-time features to {self.store.config.online_store.type} failed: {exc}") from exc
        newest = int(frame["event_timestamp"].max().value // 1000)
        self.freshness.record_load(VIEW, newest, len(frame), pushed=True)

    @property
    def freshness(self):
        """The online store's :class:`recfeast.freshness.FreshnessRecord`."""
        if self._freshness is None:
            from recfeast.freshness import FreshnessRecord

            self._freshness = FreshnessRecord(self.store)
        return self._freshness

    def observe_visibility(self, ingested_us) -> list[float]:
        """Record now minus each event's arrival time (``(n,)`` int64 us) as its event-to-online delay;
        returns the delays (seconds)."""
        now = time.time() * 1e6
        delays = [(now - int(t)) / 1e6 for t in ingested_us]
        self.freshness.observe_visibility(VIEW, delays)
        return delays

    def _forget_redis_times(self, user_ids: list[int]) -> None:
        """Drop the stored event time of the real-time view for ``user_ids`` (keys from the core's
        online layout, :mod:`recfeast.layout`, the one the reader and the batch writer use)."""
        cfg = self.store.config
        v = cfg.entity_key_serialization_version
        keys = layout.entity_keys("user_id", np.asarray(user_ids, dtype=np.int64), v)
        client = self.store._get_provider().online_store._get_client(cfg.online_store)
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hdel(layout.redis_key(key, cfg.project), f"_ts:{VIEW}")
            pipe.execute()

    def push_streamed(self, user_ids, owner: str, lock_ttl_ms: int = 30_000, force: bool = False) -> int:
        """Push the state of ``user_ids`` when the log is a Redis stream shared by several workers.

        Per-user order: each user's state is computed and pushed under the user's lock in Redis
        (``SET NX PX lock_ttl_ms``; a worker killed while holding it blocks that user for at most the
        ttl). Under the lock the worker reads the user's history version (events logged so far),
        skips the user when the last pushed state already covers that version (another worker was
        faster: pushing again would be a no-op, never older), else recomputes the state from the
        whole history and records the version. So a later push always covers a superset of the
        events of an earlier one: an older state is never pushed after a newer one, and an event
        delivered twice changes nothing.

        Users whose lock is held elsewhere are retried after the others (no worker waits while
        holding a lock, so two workers never deadlock). ``force``: push even when the version is
        already covered (after the online store lost its rows).

        Returns:
            Users pushed.

        Raises:
            StoreError: a lock could not be had within twice the ttl, or the push failed.
        """
        import uuid

        token, todo, pushed = f"{owner}:{uuid.uuid4().hex[:8]}", sorted({int(u) for u in user_ids}), 0
        deadline = time.monotonic() + 2 * lock_ttl_ms / 1000 + 1
        while todo:
            got = self.log.lock_many(todo, token, lock_ttl_ms)
            if not got:
                if time.monotonic() > deadline:
                    raise StoreError(f"users {todo[:5]}...: their locks stayed held for {2 * lock_ttl_ms} ms")
                time.sleep(0.005)
                continue
            try:
                versions = self.log.versions(got)
                done = [-1] * len(got) if force else self.log.pushed_versions(got)
                stale = {u: v for u, v, d in zip(got, versions, done) if v > d}
                if stale:
                    self.push(self.states(list(stale)))
                    from recfeast import faults

                    faults.point("worker:after_push")
                    self.log.set_pushed(stale)
                    pushed += len(stale)
            finally:
                self.log.unlock_many(got, token)
            held = set(got)
            todo = [u for u in todo if u not in held]
        return pushed

    def rebuild_online(self, batch: int = 2000) -> int:
        """Push every logged user's state (after a lost or restarted online store). Returns users pushed."""
        if self.streamed:
            users = sorted(self.log.read(("user_id",))["user_id"].unique().tolist())
            for start in range(0, len(users), batch):
                self.push_streamed(users[start:start + batch], "rebuild", force=True)
            return len(users)
        with self._lock, _repo_lock(self.repo):
            users = sorted(self.log.read(("user_id",))["user_id"].unique().tolist())
            for start in range(0, len(users), batch):
                self.push(self.states(users[start:start + batch]))
        return len(users)

    def read_online(self, user_ids) -> pd.DataFrame:
        """The online ``user_realtime`` rows of ``user_ids`` (one row each, None where missing)."""
        rows = [{"user_id": int(u)} for u in user_ids]
        resp = self.store.get_online_features(features=[f"{VIEW}:{f}" for f in FEATURES], entity_rows=rows)
        return pd.DataFrame(resp.to_dict())

    def close(self) -> None:
        self.log.close()
