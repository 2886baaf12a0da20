"""The canonical input schema every catalog is written in, and the quarantine table's schema.

A new catalog needs either an adapter (see ``materialize/adapters``) or files already in this schema
(``items``, ``users``, ``events`` as ``.parquet`` or ``.csv`` in one folder); nothing else changes.

Adapters may leave values unparsed (strings): :mod:`recfeast.cleaning` parses them and
sends rows that fail to the quarantine table. Every table carries ``source`` (``file:line``) so a
rejected row can be found in its input.

items
    ===================== ============== ===========================================================
    column                type           meaning
    ===================== ============== ===========================================================
    item_id               int64          entity key, required, unique
    title                 string         required
    description           string|null    free text (e.g. plot overview)
    tagline               string|null    short free text
    genres                list<string>   category labels, may be empty
    image_path            string|null    image file, absolute or relative to the data folder
    release_date          timestamp|null UTC
    runtime_min           float|null     minutes
    enrichment_confidence float|null     0..1 confidence that description/tagline/image/runtime
                                         belong to this item (third-party match); null = trusted
    source                string         provenance, ``file:line``
    ===================== ============== ===========================================================

users
    ``user_id`` int64 (key), ``age`` float|null (years), ``gender`` string|null, ``occupation``
    string|null, ``source``.

events
    ``user_id`` int64, ``item_id`` int64, ``action`` string (e.g. ``rate``), ``value`` float
    (the rating for ``rate``), ``event_timestamp`` (unix seconds or ISO-8601, UTC), ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from recfeast.spec import CatalogSpec

ITEM_COLUMNS = (
    "item_id", "title", "description", "tagline", "genres", "image_path", "release_date",
    "runtime_min", "enrichment_confidence", "source",
)
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "source")
EVENT_COLUMNS = ("user_id", "item_id", "action", "value", "event_timestamp", "source")
QUARANTINE_COLUMNS = ("table", "rule", "action", "entity_key", "source", "detail")

#: quarantine ``action`` values
ROW_REJECTED = "row_rejected"
FIELD_NULLED = "field_nulled"


@dataclass
class Quarantine:
    """Collects rows (or fields) set aside by a rule, with the reason and the source line."""

    rows: list[dict] = field(default_factory=list)

    def add(self, table: str, rule: str, action: str, entity_key, source: str, detail: str) -> None:
        """Record one quarantined row or field. ``action`` is ``row_rejected`` or ``field_nulled``."""
        self.rows.append({
            "table": table, "rule": rule, "action": action,
            "entity_key": "" if entity_key is None else str(entity_key),
            "source": str(source), "detail": str(detail)[:500],
        })

    def add_frame(self, df: pd.DataFrame, table: str, rule: str, action: str, key_col: str | None,
                  detail) -> None:
        """Record every row of ``df``; ``detail`` is a string or a function of the row."""
        for row in df.to_dict("records"):
            text = detail(row) if callable(detail) else detail
            self.add(table, rule, action, row.get(key_col) if key_col else None,
                     row.get("source", ""), text)

    def frame(self) -> pd.DataFrame:
        """All records as a DataFrame with :data:`QUARANTINE_COLUMNS` (string dtype)."""
        return pd.DataFrame(self.rows, columns=list(QUARANTINE_COLUMNS)).astype("string")

    def counts(self) -> dict[str, int]:
        """Number of records per ``table/rule``."""
        out: dict[str, int] = {}
        for r in self.rows:
            key = f"{r['table']}/{r['rule']}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))


@dataclass
class Catalog:
    """The three canonical tables read from one data folder, before cleaning."""

    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    data_dir: Path
    quarantine: Quarantine = field(default_factory=Quarantine)
    spec: "CatalogSpec | None" = None   # the catalog spec the tables were read with (recfeast.spec)
    rating_scale: tuple[float, float] = (1.0, 5.0)   # legacy canonical files (no spec): the rate scale
