"""Adapter: GroupLens MovieLens-100k plus TMDB text and posters -> canonical tables.

Files read (see ``../shared/data/README.md``): ``u.data`` (tab-separated ratings), ``u.item``
(``|``-separated, latin-1), ``u.user``, ``u.genre`` and optionally ``items_tmdb_clean.csv`` (TMDB
overview, tagline, runtime, poster file and ``title_sim``, the similarity of the MovieLens and TMDB titles)
with ``posters/<movie_id>.jpg``.

Values stay strings where parsing can fail (ratings, timestamps): cleaning parses them and quarantines
what fails. Lines with the wrong number of fields go to quarantine here (rule ``malformed_line``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from recfeast.errors import DataError
from recfeast.schema import EVENT_COLUMNS, ITEM_COLUMNS, ROW_REJECTED, USER_COLUMNS, Catalog, Quarantine

N_GENRES = 19


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing (MovieLens-100k layout expected)")
    return path.read_text(encoding=encoding).splitlines()


def _split(path: Path, sep: str, n_fields: int, encoding: str, table: str, q: Quarantine):
    """Yield ``(line_no, fields)`` for lines with ``n_fields`` fields; quarantine the others."""
    for no, line in enumerate(_lines(path, encoding), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != n_fields:
            q.add(table, "malformed_line", ROW_REJECTED, None, f"{path.name}:{no}",
                  f"expected {n_fields} {sep!r}-separated fields, got {len(fields)}: {line[:200]!r}")
            continue
        yield no, fields


def _genre_names(data_dir: Path) -> list[str]:
    path = data_dir / "u.genre"
    if not path.is_file():
        raise DataError(f"{path}: missing (MovieLens-100k layout expected)")
    names = {}
    for line in _lines(path, "latin-1"):
        if "|" in line:
            name, idx = line.rsplit("|", 1)
            names[int(idx)] = name
    if sorted(names) != list(range(N_GENRES)):
        raise DataError(f"{path}: expected genre ids 0..{N_GENRES - 1}, got {sorted(names)}")
    return [names[i] for i in range(N_GENRES)]


def _tmdb(data_dir: Path) -> dict[str, dict]:
    path = data_dir / "items_tmdb_clean.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"movie_id", "overview", "tagline", "runtime", "poster_file", "title_sim"}
    if rows and not need <= set(rows[0]):
        raise DataError(f"{path}: missing columns {sorted(need - set(rows[0]))}")
    out: dict[str, dict] = {}
    for no, row in enumerate(rows, start=2):  # line 1 is the header
        out.setdefault(row["movie_id"].strip(), {**row, "_line": no})
    return out


def _none_if_blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _release_date(text: str):
    """``dd-Mon-yyyy`` -> UTC Timestamp; empty -> None; anything else stays a string, which
    cleaning quarantines as ``unparsable_release_date``."""
    text = text.strip()
    if not text:
        return None
    try:
        return pd.to_datetime(text, format="%d-%b-%Y", utc=True)
    except ValueError:
        return text


def read(data_dir: Path) -> Catalog:
    """Read MovieLens-100k (+ TMDB) in ``data_dir`` into a :class:`Catalog`.

    Items: ``title`` from u.item, ``genres`` from its 19 flags, ``release_date`` parsed from
    ``dd-Mon-yyyy`` (null when empty), TMDB overview/tagline/runtime/poster with
    ``enrichment_confidence = title_sim`` (empty -> 0.0, i.e. an unverified match).

    Raises:
        DataError: a required file is missing or u.genre is not the 19 MovieLens genres.
    """
    data_dir = Path(data_dir)
    q = Quarantine()
    genres = _genre_names(data_dir)
    tmdb = _tmdb(data_dir)

    items = []
    for no, f in _split(data_dir / "u.item", "|", 5 + N_GENRES, "latin-1", "items", q):
        flags = f[5:]
        t = tmdb.get(f[0].strip(), {})
        poster = _none_if_blank(t.get("poster_file"))
        sim = _float_or_none(t.get("title_sim")) if t else None
        items.append({
            "item_id": f[0].strip(),
            "title": f[1].strip(),
            "description": _none_if_blank(t.get("overview")),
            "tagline": _none_if_blank(t.get("tagline")),
            "genres": [g for g, flag in zip(genres, flags) if flag.strip() == "1"],
            "image_path": poster,
            "release_date": _release_date(f[2]),
            "runtime_min": _float_or_none(t.get("runtime")),
            "enrichment_confidence": (sim if sim is not None else 0.0) if t else None,
            "source": f"u.item:{no}",
        })
    users = [
        {"user_id": f[0].strip(), "age": f[1].strip(), "gender": f[2].strip() or None,
         "occupation": f[3].strip() or None, "source": f"u.user:{no}"}
        for no, f in _split(data_dir / "u.user", "|", 5, "latin-1", "users", q)
    ]
    events = [
        {"user_id": f[0].strip(), "item_id": f[1].strip(), "action": "rate", "value": f[2].strip(),
         "event_timestamp": f[3].strip(), "source": f"u.data:{no}"}
        for no, f in _split(data_dir / "u.data", "\t", 4, "latin-1", "events", q)
    ]
    return Catalog(
        items=pd.DataFrame(items, columns=list(ITEM_COLUMNS)),
        users=pd.DataFrame(users, columns=list(USER_COLUMNS)),
        events=pd.DataFrame(events, columns=list(EVENT_COLUMNS)),
        data_dir=data_dir,
        quarantine=q,
        rating_scale=(1.0, 5.0),
    )
