"""Replay check: stream recorded events through the ingest path, then prove online == batch.

``recfeast replay-check`` (:func:`replay_check`) backfills a data set's ratings up to ``days``
before its end through :meth:`Ingestor.ingest` in large batches, streams the rest in time order in
batches of ``batch_size`` (1 = event by event), and finally compares every logged user's online
``user_realtime`` row with a batch recomputation from the whole event log
(:meth:`Ingestor.batch_frame`): lists, counts and times must be equal, vectors within ``atol``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from recfeast.materialize.realtime import FEATURES

VECTOR = "realtime_sequence_embedding"


@dataclass
class ReplayReport:
    """Outcome of :func:`replay_check`; ``ok`` is True when every user matched."""

    backfilled: int = 0
    streamed: int = 0
    batch_size: int = 1
    users_compared: int = 0
    mismatches: list[dict] = field(default_factory=list)
    max_vector_abs_diff: float = 0.0
    latency_ms_p50: float = 0.0     # per ingest call while streaming
    latency_ms_p99: float = 0.0
    events_per_s: float = 0.0       # streamed events / streaming wall time
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.users_compared > 0

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(online: pd.DataFrame, batch: pd.DataFrame, atol: float = 1e-5) -> tuple[list[dict], float]:
    """Mismatches between online rows and batch rows (both one row per user, :data:`FEATURES` columns).

    Returns:
        ``([{"user_id", "feature", "online", "batch"}], max abs vector difference)``.
    """
    on = online.set_index("user_id")
    out, worst = [], 0.0
    for row in batch.itertuples(index=False):
        u = int(row.user_id)
        if u not in on.index:
            out.append({"user_id": u, "feature": "*", "online": None, "batch": "row"})
            continue
        o = on.loc[u]
        for f in FEATURES:
            a, b = o[f], getattr(row, f)
            if isinstance(a, float) and np.isnan(a):   # pandas turns a missing int into NaN
                a = None
            if f == VECTOR:
                if a is None:
                    out.append({"user_id": u, "feature": f, "online": None, "batch": "vector"})
                    continue
                d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                worst = max(worst, d)
                if d > atol:
                    out.append({"user_id": u, "feature": f, "online": f"max diff {d:.3g}", "batch": f"atol {atol}"})
            elif f == "last_item_ids":
                if a is None or [int(x) for x in a] != [int(x) for x in b]:
                    out.append({"user_id": u, "feature": f, "online": a, "batch": list(map(int, b))})
            elif a is None or (str(a) if f == "realtime_model" else int(a)) != (str(b) if f == "realtime_model" else int(b)):
                out.append({"user_id": u, "feature": f, "online": a, "batch": b})
    return out, worst


def replay_check(data_dir, repo=None, online_store: str | None = None, project: str | None = None,
                 days: float = 14, batch_size: int = 1, backfill: bool = True, progress: bool = True,
                 atol: float = 1e-5, event_log: str | None = None, drain_timeout_s: float = 600.0) -> ReplayReport:
    """Run the replay check on the ratings of ``data_dir`` (see the module docstring).

    With a Redis event log (``event_log`` or ``$RECFEAST_EVENT_LOG``) the ingest calls only append to
    the stream; the check then waits (up to ``drain_timeout_s``) until the running ``recfeast
    ingest-worker`` processes have acknowledged every entry, and compares after that.

    The repository must have been materialized (``recfeast materialize``) so that item embeddings
    and the ``user_realtime`` view exist.

    Raises:
        ConfigError / DataError: bad data folder or repository. StoreError: the online store failed.
    """
    from tqdm import tqdm

    from recfeast import config
    from recfeast.errors import ConfigError
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.materialize.ingest import Ingestor

    if batch_size < 1 or days <= 0:
        raise ConfigError(f"batch_size={batch_size}, days={days}: expected batch_size >= 1 and days > 0")
    t0 = time.perf_counter()
    from recfeast.spec import load_spec, spec_path

    spec = load_spec(spec_path(config.repo_path(repo)))   # the repository's own catalog spec
    if spec.string_ids:
        raise ConfigError(f"catalog {spec.name!r} has string ids: the real-time path (and so the replay check) "
                          "keys users and items by int64")
    events = clean(read_catalog(config.data_dir(data_dir), spec), spec=spec).events
    # the declared types with a value carry it; the others ingest as implicit (value 1)
    records = pd.DataFrame({
        "user_id": events["user_id"].astype(int), "item_id": events["item_id"].astype(int),
        "action": events["action"].astype(str), "value": events["value"].fillna(1.0).astype(float),
        "event_timestamp": events["event_timestamp"].astype("datetime64[ns, UTC]").astype("int64") // 10**9,
    })
    cutoff = int((events["event_timestamp"].max() - pd.Timedelta(days=days)).timestamp())
    old, new = records[records["event_timestamp"] <= cutoff], records[records["event_timestamp"] > cutoff]
    report = ReplayReport(batch_size=batch_size)
    ing = Ingestor(repo, online_store, project, event_log=event_log)
    try:
        if backfill:
            for start in tqdm(range(0, len(old), 20_000), desc="backfill", disable=not progress):
                report.backfilled += ing.ingest(old.iloc[start:start + 20_000].to_dict("records")).accepted
        lat, t_stream = [], time.perf_counter()
        recs = new.to_dict("records")
        for start in tqdm(range(0, len(recs), batch_size), desc="stream", unit="batch", disable=not progress):
            t = time.perf_counter()
            report.streamed += ing.ingest(recs[start:start + batch_size]).accepted
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t_stream
        if lat:
            report.latency_ms_p50 = round(float(np.percentile(lat, 50)) * 1000, 2)
            report.latency_ms_p99 = round(float(np.percentile(lat, 99)) * 1000, 2)
            report.events_per_s = round(len(recs) / wall, 1)
        if ing.streamed:
            from recfeast.errors import StoreError
            from recfeast.materialize.stream import wait_drained

            if not wait_drained(ing.log, drain_timeout_s):
                raise StoreError(f"the ingest workers did not drain {ing.log.name} within {drain_timeout_s:g} s "
                                 f"({ing.log.group_info()}): are `recfeast ingest-worker` processes running?")
        batch = ing.batch_frame(snapshots=False)
        online = ing.read_online(batch["user_id"].tolist())
        report.users_compared = len(batch)
        report.mismatches, report.max_vector_abs_diff = compare(online, batch, atol)
    finally:
        ing.close()
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
