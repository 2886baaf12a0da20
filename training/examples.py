"""Labelled examples from real events: positives, sampled negatives, temporal split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfeast.errors import ConfigError


def sample_unrated(events: pd.DataFrame, anchors: pd.DataFrame, n: int, item_available: pd.Series,
                   seed: int, exclude_future: bool = False) -> pd.DataFrame:
    """For each anchor row (user_id, event_timestamp) draw ``n`` items the user had no event with as
    of that moment (any event type) and that were already in the catalog then.

    Args:
        events: clean events (user_id, item_id, event_timestamp).
        anchors: rows with user_id, event_timestamp (and any other columns, copied to the output).
        n: items per anchor.
        item_available: item_id -> first moment the item was in the catalog (UTC).
        seed: numpy seed; the same inputs and seed give the same draw.
        exclude_future: also exclude items the user rates later (the usual protocol for
            ranking evaluation, where a later positive must not count as a negative).

    Returns:
        ``len(anchors) * n`` rows: the anchor's columns, ``item_id`` replaced by the drawn item,
        ``anchor`` = position of the anchor row. Anchors whose pool is too small get fewer.
    """
    rng = np.random.default_rng(seed)

    def ns(ts) -> np.ndarray:
        return pd.to_datetime(pd.Series(ts), utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]").view("int64")

    avail = item_available.sort_values()
    pool_ids, pool_ts = avail.index.to_numpy(), ns(avail.to_numpy())
    ev = events.sort_values(["user_id", "event_timestamp"], kind="stable")
    ev_ts, ev_items = ns(ev["event_timestamp"]), ev["item_id"].to_numpy()
    starts = ev.groupby("user_id", sort=False).indices  # user -> positions in ev
    out_idx, out_items = [], []
    for pos, (u, t) in enumerate(zip(anchors["user_id"], ns(anchors["event_timestamp"]))):
        where = starts.get(u)
        if where is None:
            rated = set()
        elif exclude_future:
            rated = set(ev_items[where].tolist())
        else:
            rated = set(ev_items[where][ev_ts[where] <= t].tolist())
        size = int(np.searchsorted(pool_ts, t, side="right"))
        if size - len(rated) < n:
            continue
        chosen: set[int] = set()
        while len(chosen) < n:
            for j in rng.integers(0, size, 2 * n):
                item = pool_ids[j].item() if hasattr(pool_ids[j], "item") else pool_ids[j]
                if item not in rated and item not in chosen:
                    chosen.add(item)
                    if len(chosen) == n:
                        break
        out_idx += [pos] * n
        out_items += sorted(chosen)
    out = anchors.iloc[out_idx].reset_index(drop=True).copy()
    out["item_id"] = np.asarray(out_items, dtype=pool_ids.dtype if len(pool_ids) else np.int64)
    out["anchor"] = np.asarray(out_idx, dtype=np.int64)
    return out


def positive_mask(events: pd.DataFrame, spec, min_value: float | None = None) -> np.ndarray:
    """``(n,)`` bool: events that make a positive label under the catalog spec (their type's
    ``positive`` rule; ``min_value`` overrides the rule's threshold for valued types)."""
    out = np.zeros(len(events), dtype=bool)
    for name, t in spec.events.types.items():
        rule = t.positive_rule
        if rule is None:
            continue
        rows = (events["action"] == name).to_numpy()
        thr = min_value if (min_value is not None and t.value is not None) else rule.min_value
        if thr is not None:
            rows &= (events["value"] >= thr).to_numpy()
        out |= rows
    return out


def labelled_examples(events: pd.DataFrame, item_available: pd.Series, cfg, spec=None,
                      split: tuple | None = None) -> pd.DataFrame:
    """Positives (events of a positive-making type, see :func:`positive_mask`) and
    ``cfg.negatives_per_positive`` sampled negatives per positive (items the user had no event with as
    of that moment) stamped with the positive's timestamp, split in time at ``split`` = ``(T1, T2)``
    (default ``cfg.val_start`` / ``cfg.test_start``). One positive per (user, item, time).

    Returns:
        DataFrame with user_id int64, item_id int64, event_timestamp (UTC), label int64 (1/0),
        request_ts int64 (unix seconds, the on-demand views' request time), split
        (``train`` < T1 <= ``val`` < T2 <= ``test``), ordered by time.

    Raises:
        ConfigError: a setting is invalid (:meth:`TrainConfig.validate`), or a split is empty.
    """
    cfg.validate()
    t1, t2 = split if split is not None else (pd.Timestamp(cfg.val_start, tz="UTC"), pd.Timestamp(cfg.test_start, tz="UTC"))
    if spec is None:
        mask = (events["value"] >= (cfg.positive_min_value if cfg.positive_min_value is not None else 4.0)).to_numpy()
    else:
        mask = positive_mask(events, spec, cfg.positive_min_value)
    pos = events[mask][["user_id", "item_id", "event_timestamp"]].drop_duplicates()
    pos = pos.reset_index(drop=True).assign(label=1)
    neg = sample_unrated(events, pos[["user_id", "event_timestamp"]], cfg.negatives_per_positive,
                         item_available, cfg.seed).drop(columns="anchor").assign(label=0)
    # two positives of one user at one moment may draw the same negative: keep it once
    neg = neg.drop_duplicates(["user_id", "event_timestamp", "item_id"])
    ex = pd.concat([pos, neg], ignore_index=True)
    ex = ex.sort_values(["event_timestamp", "user_id", "label", "item_id"], ascending=[True, True, False, True],
                        kind="stable").reset_index(drop=True)
    ex["label"] = ex["label"].astype("int64")
    epoch = pd.Timestamp(0, tz="UTC")
    ex["request_ts"] = ((ex["event_timestamp"] - epoch) // pd.Timedelta(seconds=1)).astype("int64")
    ex["split"] = np.where(ex["event_timestamp"] < t1, "train", np.where(ex["event_timestamp"] < t2, "val", "test"))
    for name in ("train", "val", "test"):
        if not ((ex["split"] == name) & (ex["label"] == 1)).any():
            raise ConfigError(f"the {name} split has no positive example: {len(pos)} positives in all, "
                              f"{int((pos.event_timestamp < t1).sum())} before {t1.date()} (train), "
                              f"{int(((pos.event_timestamp >= t1) & (pos.event_timestamp < t2)).sum())} until {t2.date()} "
                              f"(validation), {int((pos.event_timestamp >= t2).sum())} after (test). Check which event "
                              "types make positives (events.types.*.positive in the catalog spec) and the split "
                              "(split: in the spec, or --val-start/--test-start)")
    return ex
