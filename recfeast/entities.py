"""What each entity is and when it exists: the text an item is embedded from, and the moment an item
or user enters the catalog. Shared by the batch job, training and serving, so all three agree."""

from __future__ import annotations

import numpy as np
import pandas as pd


def item_text(items: pd.DataFrame) -> list[str]:
    """Text each item is embedded from: ``"<title>. <genres>. <description> <tagline>"``."""
    out = []
    for title, genres, desc, tag in zip(items["title"], items["genres"], items["description"], items["tagline"]):
        parts = [str(title).strip()]
        if len(genres):
            parts.append(", ".join(genres))
        parts.extend(str(x).strip() for x in (desc, tag) if x)
        out.append(". ".join(p.rstrip(".") for p in parts[:2]) + ("." if len(parts) > 1 else "")
                   + "".join(" " + p for p in parts[2:]))
    return out


def item_available_from(items: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """When each item entered the catalog: its first event, else its release date, else 1970-01-01.

    Returns a ``datetime64[ns, UTC]`` Series indexed like ``items``.
    """
    first = events.groupby("item_id")["event_timestamp"].min()
    ts = items["item_id"].map(first)
    ts = ts.where(ts.notna(), items["release_date"])
    return ts.fillna(pd.Timestamp(0, tz="UTC")).astype("datetime64[ns, UTC]")


def user_available_from(users: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """When each user was first seen: the first event, else 1970-01-01 (``datetime64[ns, UTC]``)."""
    first = events.groupby("user_id")["event_timestamp"].min()
    return users["user_id"].map(first).fillna(pd.Timestamp(0, tz="UTC")).astype("datetime64[ns, UTC]")


def genre_matrix(items: pd.DataFrame, genres: list[str]) -> np.ndarray:
    """``(n_items, len(genres))`` float32 multi-hot of each item's genres."""
    col = {g: j for j, g in enumerate(genres)}
    m = np.zeros((len(items), len(genres)), dtype=np.float32)
    for i, gs in enumerate(items["genres"]):
        for g in gs:
            if g in col:
                m[i, col[g]] = 1.0
    return m
