"""Ingest workers: a consumer group over the Redis event stream that computes and pushes user state.

With ``RECFEAST_EVENT_LOG=redis://...``, ``/events`` and ``recfeast ingest`` only validate and
append (``XADD``, deduplicated by event id: :class:`recfeast.eventlog.RedisEventLog`); any number
of ``recfeast ingest-worker`` processes, on any machines, run :class:`IngestWorker`:

1. take entries: first those pending longer than ``min_idle_ms`` in another consumer (a worker
   that died or hangs mid-batch: ``XAUTOCLAIM``), else new ones (``XREADGROUP >``);
2. recompute the real-time state of the entries' users from each user's whole logged history and
   push it through the ``user_realtime_push`` source (:meth:`Ingestor.push_streamed`: per-user
   lock and history version, so pushes of one user never go back in time);
3. record the event-to-online delays (freshness record) and ``XACK`` the entries.

Exactly-once effects: the log holds each event once (id set at append), and the pushed state is a
function of the user's log, so an entry processed twice (a worker killed after step 2, before
step 3) pushes the same state again, or nothing (its version is already covered).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import asdict, dataclass

from recfeast.errors import ConfigError


@dataclass
class WorkerStats:
    """Totals of one worker: entries read (``claimed`` of them taken over from another consumer),
    users pushed, entries acknowledged, batches, seconds running."""

    entries: int = 0
    claimed: int = 0
    users_pushed: int = 0
    acked: int = 0
    batches: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class IngestWorker:
    """One consumer of the ``ingest`` group of a repository's Redis event stream.

    Args:
        repo, online_store, project: as :class:`recfeast.materialize.ingest.Ingestor`.
        event_log: a Redis URL (default ``$RECFEAST_EVENT_LOG``).
        consumer: consumer name, unique per live worker (default ``<host>-<pid>``).
        batch: entries per read. block_ms: how long a read waits for new entries.
        min_idle_ms: entries pending this long in another consumer are taken over.
        lock_ttl_ms: per-user lock lifetime (bounds how long a dead worker blocks its users).

    Raises:
        ConfigError: the event log is not Redis. StoreError / DataError: as the Ingestor.
    """

    def __init__(self, repo=None, online_store: str | None = None, project: str | None = None,
                 event_log: str | None = None, consumer: str | None = None, batch: int = 500,
                 block_ms: int = 1000, min_idle_ms: int = 30_000, lock_ttl_ms: int = 30_000):
        from recfeast.materialize.ingest import Ingestor

        self.ing = Ingestor(repo, online_store, project, event_log=event_log)
        if not self.ing.streamed:
            self.ing.close()
            raise ConfigError("ingest-worker needs a Redis event log: set RECFEAST_EVENT_LOG=redis://HOST:PORT/DB "
                              "or pass --event-log")
        self.log = self.ing.log
        self.log.ensure_group()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.log.register_consumer(self.consumer)
        self.batch, self.block_ms, self.min_idle_ms, self.lock_ttl_ms = batch, block_ms, min_idle_ms, lock_ttl_ms
        self.stats = WorkerStats()
        self.delays: list[tuple[int, float]] = []   # (arrival us, event-to-online s) of entries read fresh
        self._stop = False

    def step(self) -> int:
        """Process one batch (read or claim, push, ack). Returns entries processed (0: none waiting)."""
        from recfeast.eventlog import entries_frame

        from recfeast.errors import StoreError
        from recfeast.redact import redact

        try:
            entries, claimed = self.log.read_group(self.consumer, self.batch, self.block_ms, self.min_idle_ms)
        except Exception as exc:   # redis.ConnectionError, ...
            raise StoreError(redact(f"reading {self.log.name} failed: {exc}")) from exc
        if not entries:
            return 0
        self.ing.items.refresh()
        df = entries_frame(entries)
        self.stats.users_pushed += self.ing.push_streamed(df["user_id"].unique().tolist(), self.consumer,
                                                          self.lock_ttl_ms)
        if not claimed:   # a taken-over entry was delayed by the dead worker, not by the pipeline
            arrived = df["ingested_us"].tolist()
            self.delays += list(zip(arrived, self.ing.observe_visibility(arrived)))
        self.stats.acked += self.log.ack(df["entry_id"].tolist())
        self.stats.entries += len(df)
        self.stats.claimed += len(df) if claimed else 0
        self.stats.batches += 1
        return len(df)

    def stop(self, *_args) -> None:
        """Finish the current batch, then return from :meth:`run` (SIGTERM / SIGINT)."""
        self._stop = True

    def run(self, max_entries: int | None = None, idle_exit_s: float | None = None, log=None) -> WorkerStats:
        """Process batches until stopped (SIGTERM/SIGINT finish the batch first), until ``max_entries``
        were processed, or until nothing arrived for ``idle_exit_s`` seconds."""
        t0, idle_since = time.perf_counter(), time.monotonic()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, self.stop)
            except ValueError:   # not the main thread
                pass
        from recfeast.errors import StoreError

        while not self._stop:
            try:
                n = self.step()
            except StoreError as exc:   # Redis or the online store away: the entries stay pending,
                if log:                 # this worker (or another) takes them again after min_idle_ms
                    log(f"{self.consumer}: {exc}; retrying in 1 s")
                time.sleep(1.0)
                continue
            if n:
                idle_since = time.monotonic()
                if log:
                    log(f"{self.consumer}: {n} events, {self.stats.entries} in all")
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if max_entries is not None and self.stats.entries >= max_entries:
                break
        self.stats.seconds = round(time.perf_counter() - t0, 3)
        return self.stats

    def close(self) -> None:
        self.ing.close()


def wait_drained(log, timeout_s: float = 300.0, poll_s: float = 0.05) -> bool:
    """Wait until the ``ingest`` group has delivered and acknowledged every entry of ``log``'s stream
    (lag 0, nothing pending). Returns False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = log.group_info()
        if info and info["pending"] == 0 and info["lag"] == 0:
            return True
        time.sleep(poll_s)
    return False
