"""The catalog spec: one declarative file (``feature_repo/catalog.yaml``) that says what a catalog is.

It names the source files and how their columns map to recfeast's fields, the entity keys (integer or
string), the role of every item and user field (text, image, categorical, numeric, available-from
time), the event types (explicit ratings with a scale and step, implicit views, clicks, purchases,
... with an optional value such as a price, a weight and whether they make a positive label), what
makes two events duplicates, the behaviour windows, the sequence length, which encoder each modality
uses, and the time split. Cleaning, the feature tables, the Feast definitions, the training labels and
serving are all derived from it; nothing else in recfeast names a catalog's columns.

>>> spec = load_spec("feature_repo/catalog.yaml")
>>> spec.events.types["rate"].kind
'rating'

Validation is pydantic's; every error is raised as :class:`recfeast.errors.ConfigError` naming the
file, the key path (``events.types.rate.value.scale``) and what was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recfeast.errors import ConfigError

SPEC_FILE = "catalog.yaml"
EVENT_KINDS = ("rating", "view", "click", "add_to_cart", "purchase", "like", "share", "other")
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,40}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str, what: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: expected a lower-case name (letters, digits, _; starting with a letter)")
    return value


def parse_duration_s(text: str | int | float) -> float:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` or a number of seconds -> seconds (float).

    Raises:
        ValueError: anything else (pydantic turns it into a ConfigError naming the key).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ValueError(f"{text!r}: expected a duration like 45s, 30m, 12h, 90d or 2w")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


class SourceSpec(_Model):
    """One table's files.

    ``path`` is a file or a glob relative to the data folder; ``format`` defaults to the suffix
    (csv, tsv, parquet, jsonl). ``columns`` maps recfeast's field names to the file's column names
    (fields not listed keep their own name); ``constants`` sets a field to one value on every row
    (e.g. ``action: purchase`` for a purchases file).
    """

    path: str
    format: Literal["csv", "tsv", "parquet", "jsonl"] | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, Any] = Field(default_factory=dict)
    separator: str | None = None        # CSV delimiter; default "," (tsv: tab)
    encoding: str = "utf-8"
    header: bool = True                 # CSV: first line names the columns
    names: list[str] | None = None      # CSV without header: the column names in order

    def file_format(self) -> str:
        """The declared format, else the one the suffix says."""
        if self.format:
            return self.format
        suffix = Path(self.path.replace("*", "x")).suffix.lower().lstrip(".")
        return {"txt": "csv", "json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)

    @model_validator(mode="after")
    def _check(self):
        if self.file_format() not in ("csv", "tsv", "parquet", "jsonl"):
            raise ValueError(f"path {self.path!r}: cannot tell the format from the suffix; "
                             "set format: csv | tsv | parquet | jsonl")
        if not self.header and not self.names:
            raise ValueError("header: false needs names: [column, ...]")
        return self


class EntitySpec(_Model):
    """An entity key: its field name and type. String keys stay strings everywhere a user sees them."""

    key: str
    dtype: Literal["int64", "string"] = "int64"
    description: str = ""


class TextSpec(_Model):
    """The item text the text encoder reads: ``fields`` joined in order (lists joined with ", ")."""

    fields: list[str] = Field(min_length=1)
    encoder: str | None = "all-MiniLM-L6-v2"    # None: no text embedding view
    report_missing: list[str] = Field(default_factory=list)   # fields whose absence is quarantined (empty_<field>)

    @model_validator(mode="after")
    def _subset(self):
        bad = [f for f in self.report_missing if f not in self.fields]
        if bad:
            raise ValueError(f"report_missing {bad} are not among fields {self.fields}")
        return self


class ImageSpec(_Model):
    """Where each item's image is: a field holding a path, or a template over item fields, e.g.
    ``images/{article_id:010d}.jpg`` (Python format syntax; relative to the data folder)."""

    field: str | None = None
    template: str | None = None
    encoder: str | None = "efficientnet-lite0"  # or resnet18 / resnet50 with local weights; None: no image view

    @model_validator(mode="after")
    def _one(self):
        if (self.field is None) == (self.template is None):
            raise ValueError("give exactly one of field (a column with the image path) or template")
        return self


class CategoricalSpec(_Model):
    """A categorical field. ``multi``: several values per row (a list, or a string split on
    ``separator``), e.g. tags or genres. ``feature``: base name of its features (default the field
    name). Item fields give items ``<feature>_flags`` (one- or multi-hot over the kept vocabulary)
    and users ``<feature>_share`` (share of their events whose item has each value); user fields
    give users ``<feature>`` (the label). ``max_values``: the vocabulary keeps the most frequent
    values; feature selection also drops near-constant ones."""

    field: str
    multi: bool = False
    separator: str | None = "|"
    feature: str | None = None
    max_values: int = Field(default=50, ge=1, le=1000)
    description: str = ""

    @property
    def name(self) -> str:
        """Feature base name."""
        return self.feature or self.field


class NumericSpec(_Model):
    """A numeric field. ``transform``: ``year`` (a date field -> its year), ``log1p`` or ``none``;
    ``valid``: ``[min, max]`` accepted (outside -> the value is nulled and quarantined);
    ``normalize``: ``zscore`` / ``minmax`` (statistics fitted on the data and saved) or ``none``;
    ``buckets``: ``[[lo, hi, label], ...]`` adds a categorical ``<feature>_bucket`` (lo <= x < hi);
    ``unit``: for the field description (e.g. minutes, years, EUR)."""

    field: str
    feature: str | None = None
    transform: Literal["none", "year", "log1p"] = "none"
    valid: tuple[float, float] | None = None
    normalize: Literal["zscore", "minmax", "none"] = "zscore"
    buckets: list[tuple[float, float, str]] | None = None
    unit: str = ""
    description: str = ""

    @property
    def name(self) -> str:
        """Feature name."""
        return self.feature or self.field


class TrustSpec(_Model):
    """Third-party enrichment that may belong to another item: when ``field`` (a 0..1 confidence) is
    below ``min``, the listed ``fields`` are nulled and the row quarantined (``low_enrichment_confidence``)."""

    field: str
    min: float = 0.5
    fields: list[str]


class ItemsSpec(_Model):
    """The items table and the role of each field."""

    source: SourceSpec | None = None            # None: the adapter provides it
    title: str | None = None                    # a short name shown with results; required when given
    text: TextSpec | None = None
    image: ImageSpec | None = None
    categorical: list[CategoricalSpec] = Field(default_factory=list)
    numeric: list[NumericSpec] = Field(default_factory=list)
    available_from: str | None = None           # a date field: when the item entered the catalog
    trust: TrustSpec | None = None


class UsersSpec(_Model):
    """The users table (optional: without it users are the ids seen in events)."""

    source: SourceSpec | None = None
    categorical: list[CategoricalSpec] = Field(default_factory=list)
    numeric: list[NumericSpec] = Field(default_factory=list)


class ValueSpec(_Model):
    """An event's numeric value: ``field`` in the events table; ``name`` for features (``avg_<name>``);
    ``scale`` ``[lo, hi]`` and ``step`` (e.g. 0.5 for half stars) for ratings: values off the scale or
    the step are quarantined; ``required``: events without a value are quarantined."""

    field: str = "value"
    name: str | None = None
    scale: tuple[float, float] | None = None
    step: float | None = Field(default=None, gt=0)
    required: bool = True
    unit: str = ""

    @model_validator(mode="after")
    def _scale(self):
        if self.scale is not None and not self.scale[0] < self.scale[1]:
            raise ValueError(f"scale {list(self.scale)}: expected [low, high] with low < high")
        return self


class PositiveSpec(_Model):
    """When an event makes a positive label: always (``true`` in YAML) or when its value is at least
    ``min_value`` (e.g. ratings >= 4)."""

    min_value: float | None = None


class EventTypeSpec(_Model):
    """One event type (the ``action`` field's value). ``kind`` says what it is; ``feature`` is the
    prefix of its behaviour features (default the type name): ``<feature>_count_<w>d``,
    ``avg_<value name>_<w>d``, ``last_<feature>_ts``; ``weight`` scales its counts in the item
    popularity; ``positive`` makes it a positive label (``true``, or ``{min_value: 4}``)."""

    kind: Literal["rating", "view", "click", "add_to_cart", "purchase", "like", "share", "other"]
    feature: str | None = None
    value: ValueSpec | None = None
    weight: float = Field(default=1.0, ge=0)
    positive: bool | PositiveSpec = False
    description: str = ""

    @model_validator(mode="after")
    def _rating(self):
        if self.kind == "rating" and (self.value is None or self.value.scale is None):
            raise ValueError("kind rating needs value: {scale: [low, high]} (and step for e.g. half stars)")
        if isinstance(self.positive, PositiveSpec) and self.positive.min_value is not None and self.value is None:
            raise ValueError("positive.min_value needs a value")
        return self

    @property
    def positive_rule(self) -> PositiveSpec | None:
        """None: never positive; else the rule (``min_value`` None: every event)."""
        if self.positive is True:
            return PositiveSpec()
        if self.positive is False:
            return None
        return self.positive


class TimestampSpec(_Model):
    """The event time field and its unit: ``s`` / ``ms`` (unix), ``iso`` (ISO-8601 or a datetime
    column) or ``date`` (a date without time: taken as 00:00 UTC; several events of one day keep
    their file order)."""

    field: str = "event_timestamp"
    unit: Literal["s", "ms", "iso", "date"] = "s"


class EventsSpec(_Model):
    """The events table: who did what to which item, when."""

    source: SourceSpec | None = None
    type_field: str = "action"                  # the column naming the event type
    default_type: str | None = None             # type of rows whose type_field is empty/absent
    timestamp: TimestampSpec = TimestampSpec()
    types: dict[str, EventTypeSpec] = Field(min_length=1)
    #: what makes two events one: recfeast's names or the source's own (keys, type field, time field, value
    #: field); "none": every row is an event (repeat purchases)
    duplicates: list[str] | Literal["none"] = ["user_id", "item_id", "action", "value", "event_timestamp"]

    @field_validator("types")
    @classmethod
    def _names(cls, v):
        for name in v:
            _name(name, "event type")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.default_type is not None and self.default_type not in self.types:
            raise ValueError(f"default_type {self.default_type!r} is not one of types {sorted(self.types)}")
        if not any(t.positive_rule for t in self.types.values()):
            raise ValueError("no event type makes a positive label: set positive: true (or {min_value: ...}) on one")
        if self.duplicates != "none":
            known = {"user_id", "item_id", "action", "value", "event_timestamp"}
            bad = [c for c in self.duplicates if c not in known]
            if bad:
                raise ValueError(f"duplicates {bad}: expected some of {sorted(known)} (or the source's own names of "
                                 "the user and item keys, the type field, the time field and the value fields), or 'none'")
        return self


class SequenceSpec(_Model):
    """The user sequence embedding: the last ``length`` items of the listed event types (default:
    every type), read by the ``encoder`` (gru | lstm) in the item text-embedding space."""

    length: int = Field(default=20, ge=1, le=500)
    event_types: list[str] | None = None
    encoder: Literal["gru", "lstm"] | None = "gru"


class FeaturesSpec(_Model):
    """Feature settings shared by every view."""

    windows_days: list[int] = Field(default=[7, 30, 90], min_length=1)
    sequence: SequenceSpec = SequenceSpec()
    max_dominant_share: float = Field(default=0.995, gt=0.5, le=1.0)   # feature selection threshold
    realtime: bool = True                      # the pushed user_realtime view (int64 ids only)

    @field_validator("windows_days")
    @classmethod
    def _windows(cls, v):
        if any(w < 1 for w in v) or len(set(v)) != len(v):
            raise ValueError(f"{v}: expected distinct whole days >= 1")
        return sorted(v)


class SplitSpec(_Model):
    """The temporal split, back from the data's last event: ``val`` and ``test`` are fractions of the
    time range (``0.1``) or durations (``28d``). Training's ``--val-start`` / ``--test-start`` override."""

    val: float | str = 0.1
    test: float | str = 0.1

    @field_validator("val", "test")
    @classmethod
    def _part(cls, v):
        if isinstance(v, str):
            parse_duration_s(v)
        elif not 0 < v < 0.5:
            raise ValueError(f"{v}: a fraction must be in (0, 0.5)")
        return v


class ServingSpec(_Model):
    """How ``recfeast serve`` recommends from this catalog.

    ``exclude_interacted``: leave out of recommendations the items the online store knows the user
    interacted with (the last events pushed to ``user_realtime``); ``false`` for catalogs where a
    repeat is what users want (groceries, music, re-watching)."""

    exclude_interacted: bool = True


class CatalogSpec(_Model):
    """A whole catalog (see the module docstring). ``adapter`` names a reader for a raw layout
    (``movielens-100k``); without it the ``source`` of items, users and events is read."""

    name: str
    description: str = ""
    adapter: str | None = None
    user: EntitySpec = EntitySpec(key="user_id")
    item: EntitySpec = EntitySpec(key="item_id")
    items: ItemsSpec
    users: UsersSpec = UsersSpec()
    events: EventsSpec
    features: FeaturesSpec = FeaturesSpec()
    split: SplitSpec = SplitSpec()
    serving: ServingSpec = ServingSpec()
    freshness: dict[str, dict[str, Any]] = Field(default_factory=dict)   # view -> {max_lag: "2h"}

    @model_validator(mode="before")
    @classmethod
    def _duplicate_names(cls, raw):
        """``events.duplicates`` may name the source's own columns (the user and item keys, the type
        field, the time field, a value field): map them to recfeast's names."""
        if not isinstance(raw, dict) or not isinstance(raw.get("events"), dict):
            return raw
        ev = raw["events"]
        dup = ev.get("duplicates")
        if not isinstance(dup, list):
            return raw
        names = {}
        for part, default in (("user", "user_id"), ("item", "item_id")):
            key = raw.get(part, {}).get("key") if isinstance(raw.get(part), dict) else None
            names[key or default] = f"{part}_id"
        names[ev.get("type_field", "action")] = "action"
        ts = ev.get("timestamp")
        names[(ts or {}).get("field", "event_timestamp") if isinstance(ts, dict) else "event_timestamp"] = "event_timestamp"
        for t in (ev.get("types") or {}).values():
            if isinstance(t, dict) and isinstance(t.get("value"), dict):
                names[t["value"].get("field", "value")] = "value"
        raw = dict(raw)
        raw["events"] = {**ev, "duplicates": list(dict.fromkeys(names.get(c, c) for c in dup))}
        return raw

    @model_validator(mode="after")
    def _check(self):
        if self.adapter is None:
            for what, part in (("items", self.items), ("events", self.events)):
                if part.source is None:
                    raise ValueError(f"{what}.source is required when no adapter is named")
        seq = self.features.sequence.event_types or []
        bad = [t for t in seq if t not in self.events.types]
        if bad:
            raise ValueError(f"features.sequence.event_types {bad} are not declared in events.types")
        names = [c.name for c in self.items.categorical] + [n.name for n in self.items.numeric]
        names += [c.name for c in self.users.categorical] + [n.name for n in self.users.numeric]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names {dup} are used twice: set feature: on one of them")
        for n in names:
            _name(n, "feature name")
        return self

    # ------------------------------------------------------------------ derived facts
    @property
    def string_ids(self) -> bool:
        """True when either entity key is a string."""
        return "string" in (self.user.dtype, self.item.dtype)

    @property
    def realtime(self) -> bool:
        """Whether the pushed real-time view exists (its event log keys are int64)."""
        return self.features.realtime and not self.string_ids

    def feature_prefix(self, event_type: str) -> str:
        """Behaviour-feature prefix of an event type (its ``feature``, else its name)."""
        return self.events.types[event_type].feature or event_type

    def value_name(self, event_type: str) -> str | None:
        """Name of an event type's value in features (``avg_<name>``), None without a value."""
        t = self.events.types[event_type]
        if t.value is None:
            return None
        return t.value.name or self.feature_prefix(event_type)

    def sequence_types(self) -> list[str]:
        """Event types read by the sequence embedding (default: all)."""
        return list(self.features.sequence.event_types or self.events.types)

    def primary_type(self) -> str:
        """The event type item popularity and recency lean on: the first positive-making type."""
        return next(n for n, t in self.events.types.items() if t.positive_rule)

    def multi_categoricals(self) -> list[CategoricalSpec]:
        """Item categorical fields that are multi-valued (they get flags on items, shares on users)."""
        return [c for c in self.items.categorical if c.multi]


def spec_path(repo: str | os.PathLike) -> Path:
    """``<repo>/catalog.yaml``."""
    return Path(repo) / SPEC_FILE


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after")) or "(top level)"


def parse_spec(raw: Any, path: str = "<spec>") -> CatalogSpec:
    """Validate an already-parsed mapping into a :class:`CatalogSpec`.

    Raises:
        ConfigError: naming ``path``, every bad key path and what was expected.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (name, items, events, ...), got {type(raw).__name__}")
    try:
        return CatalogSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see README 'Bring your own catalog')"
            elif e["type"] == "literal_error":
                msg = f"{msg}; got {e.get('input')!r}"
            lines.append(f"  {_where(e['loc'])}: {msg}")
        raise ConfigError(f"{path}: invalid catalog spec:\n" + "\n".join(lines)) from None


def load_spec(path: str | os.PathLike) -> CatalogSpec:
    """Read and validate a catalog spec file (YAML; ``${VAR}`` expanded from the environment).

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation (message names the key).
    """
    path = Path(path)
    if path.is_dir():
        path = spec_path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no catalog spec; write one (README 'Bring your own catalog')")
    try:
        raw = yaml.safe_load(os.path.expandvars(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_spec(raw, str(path))
