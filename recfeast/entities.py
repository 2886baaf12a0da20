"""What each entity is and when it exists: the text an item is embedded from, its categorical values
as flags, and the moment an item or user enters the catalog. Shared by the batch job, training and
serving, so all three agree."""

from __future__ import annotations

import numpy as np
import pandas as pd


def item_text(items: pd.DataFrame) -> list[str]:
    """Text each item is embedded from: the clean table's ``text`` column (the spec's ``items.text.fields``
    joined in order by :func:`recfeast.cleaning.clean_items`)."""
    return [str(t) for t in items["text"]]


def item_available_from(items: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """When each item entered the catalog: its first event, else its ``available_from`` (the spec's
    date field, e.g. a release date), else 1970-01-01.

    Returns a ``datetime64[ns, UTC]`` Series indexed like ``items``.
    """
    first = events.groupby("item_id")["event_timestamp"].min()
    ts = items["item_id"].map(first)
    if "available_from" in items.columns:
        ts = ts.where(ts.notna(), items["available_from"])
    return pd.to_datetime(ts, utc=True).fillna(pd.Timestamp(0, tz="UTC")).astype("datetime64[ns, UTC]")


def user_available_from(users: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """When each user was first seen: the first event, else 1970-01-01 (``datetime64[ns, UTC]``)."""
    first = events.groupby("user_id")["event_timestamp"].min()
    return users["user_id"].map(first).fillna(pd.Timestamp(0, tz="UTC")).astype("datetime64[ns, UTC]")


def values_of(v) -> list:
    """A categorical cell as a list of values: a list stays, a scalar becomes ``[scalar]``, None ``[]``."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return [v]


def flag_matrix(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """``(n, len(vocab))`` float32 one-/multi-hot of each row's categorical values (values outside
    ``vocab`` set no flag)."""
    col = {g: j for j, g in enumerate(vocab)}
    m = np.zeros((len(values), len(vocab)), dtype=np.float32)
    for i, vs in enumerate(values):
        for g in values_of(vs):
            j = col.get(g)
            if j is not None:
                m[i, j] = 1.0
    return m


def genre_matrix(items: pd.DataFrame, genres: list[str], field: str = "genres") -> np.ndarray:
    """``(n_items, len(genres))`` float32 multi-hot of ``items[field]`` (see :func:`flag_matrix`)."""
    return flag_matrix(items[field], genres)
