"""The feature views a catalog spec implies: names, fields, types, roles and descriptions.

One function, :func:`feature_views`, turns a :class:`~recfeast.spec.CatalogSpec` into the list of views
every other part reads: the batch job builds one Parquet table per view with exactly these columns
(plus ``event_timestamp``, ``created_timestamp``), ``feature_repo/feature_definitions.py`` declares the
Feast objects from it, training picks model inputs by each field's ``role`` and ablation ``group``,
and serving decodes by ``dtype``. Nothing else names a catalog's feature columns.

Views (each present only when the spec calls for it):

=========================== ====== ==========================================================
view                        entity fields
=========================== ====== ==========================================================
item_text_embedding         item   text_embedding (dim, model, cosine), text_model
item_image_embedding        item   image_embedding, image_model
item_content                item   numeric item fields (normalised), ``<feature>_flags`` one- or
                                   multi-hot per categorical field,
                                   ``<prefix>_count`` and ``avg_<value>`` per event type so far,
                                   popularity (weighted event count, log1p, min-max)
user_profile                user   categorical and numeric user fields, ``<feature>_bucket``
user_behavior               user   ``<prefix>_count_<w>d`` / ``avg_<value>_<w>d`` per event type and
                                   window, ``..._total``, ``last_<prefix>_ts``, ``<feature>_share``
user_sequence_embedding     user   sequence_embedding, sequence_length, sequence_model
user_realtime               user   pushed by the ingest path (int64 ids only)
=========================== ====== ==========================================================

On-demand: ``user_item_cosine`` (sequence vs text embedding) and ``days_since_last_event`` (from the
latest ``last_<prefix>_ts`` of any type and the request time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recfeast.spec import CatalogSpec

#: roles: how training turns a field into model input
ROLES = ("count", "numeric", "categorical", "vector", "model_id", "timestamp", "list")
#: ablation groups of the ranking model ("behavior" is always on)
GROUPS = ("behavior", "text", "image", "sequence")
TEXT_DIM = {"all-MiniLM-L6-v2": 384}
IMAGE_DIM = {"efficientnet-lite0": 1280, "resnet18": 512, "resnet50": 2048}
SERVICE = "ranking_v1"


@dataclass(frozen=True)
class FieldDef:
    """One feature. ``dtype``: int64 | float32 | float64 | string | vector (float32 list) |
    int64_list; ``role``: see :data:`ROLES`; ``group``: ablation group (:data:`GROUPS`) or "" (not a
    model input); ``dim``: vector width when known from the spec alone (embeddings), else 0."""

    name: str
    dtype: str
    role: str
    description: str
    group: str = "behavior"
    dim: int = 0


@dataclass(frozen=True)
class ViewDef:
    """One feature view: its table is ``<name>.parquet``; ``push``: fed by a push source too."""

    name: str
    entity: str                      # "user" | "item"
    fields: tuple[FieldDef, ...]
    description: str
    tags: dict = field(default_factory=dict)
    push: bool = False
    in_service: bool = True

    @property
    def key(self) -> str:
        """The entity's join key column."""
        return f"{self.entity}_id"


@dataclass(frozen=True)
class OnDemandDef:
    """An on-demand view computed at lookup time from ``inputs`` (``view:field`` or ``request:field``)."""

    name: str
    output: FieldDef
    inputs: tuple[str, ...]
    description: str


def _norm(n) -> str:
    return {"zscore": "z-score", "minmax": "min-max to [0, 1]", "none": "raw"}[n.normalize]


def _item_views(spec: CatalogSpec) -> list[ViewDef]:
    it, out = spec.items, []
    if it.text and it.text.encoder:
        dim = TEXT_DIM.get(it.text.encoder, 0)
        out.append(ViewDef("item_text_embedding", "item", (
            FieldDef("text_embedding", "vector", "vector",
                     f"dim {dim or 'of the encoder'}; {it.text.encoder} (mean pooling, L2-normalised); metric: cosine "
                     f"(= dot product). Text = {' . '.join(it.text.fields)}.", "text", dim),
            FieldDef("text_model", "string", "model_id", "Identity of the model behind text_embedding: name@sha256:<12 hex>.", ""),
        ), "Content embedding of the item's text.", {"kind": "embedding", "dim": str(dim), "metric": "cosine"}))
    if it.image and it.image.encoder:
        dim = IMAGE_DIM.get(it.image.encoder, 0)
        out.append(ViewDef("item_image_embedding", "item", (
            FieldDef("image_embedding", "vector", "vector",
                     f"dim {dim or 'of the backbone'}; {it.image.encoder} ImageNet, global-average-pooled, L2-normalised; "
                     "metric: cosine. Absent for items without a usable image.", "image", dim),
            FieldDef("image_model", "string", "model_id", "Identity of the model behind image_embedding.", ""),
        ), "Content embedding of the item's image.", {"kind": "embedding", "dim": str(dim), "metric": "cosine"}))
    fields = []
    for n in it.numeric:
        fields.append(FieldDef(n.name, "float32", "numeric",
                               f"{n.description or n.field}{' (' + n.unit + ')' if n.unit else ''}, "
                               f"{'year of ' if n.transform == 'year' else ''}{_norm(n)} (stats in normalization.json; "
                               "unknown -> median)."))
    for c in it.categorical:
        fields.append(FieldDef(f"{c.name}_flags", "vector", "vector",
                               f"{'Multi' if c.multi else 'One'}-hot of {c.field} over the values kept by feature "
                               "selection (feature_selection.json: the most frequent, near-constant ones dropped)."))
    for t, et in spec.events.types.items():
        p = spec.feature_prefix(t)
        fields.append(FieldDef(f"{p}_count", "int64", "count", f"{t} events received so far (count)."))
        v = spec.value_name(t)
        if v:
            fields.append(FieldDef(f"avg_{v}", "float32", "numeric", f"Mean {v} of {t} events so far; null before the first."))
    fields.append(FieldDef("popularity", "float32", "numeric",
                           "log1p(weighted event count so far), min-max to [0, 1] (weights from the catalog spec)."))
    out.append(ViewDef("item_content", "item", tuple(fields),
                       "Item attributes and popularity, a new row at the end of each day with events."))
    return out


def _user_views(spec: CatalogSpec) -> list[ViewDef]:
    us, out = spec.users, []
    fields = []
    for c in us.categorical:
        fields.append(FieldDef(c.name, "string", "categorical", f"{c.description or c.field} (label; 'unknown' if missing)."))
    for n in us.numeric:
        fields.append(FieldDef(n.name, "float32", "numeric",
                               f"{n.description or n.field}{' (' + n.unit + ')' if n.unit else ''}, {_norm(n)} (unknown -> median)."))
        if n.buckets:
            fields.append(FieldDef(f"{n.name}_bucket", "string", "categorical",
                                   f"{n.name} group: " + ", ".join(b[2] for b in n.buckets) + "."))
    if fields:
        out.append(ViewDef("user_profile", "user", tuple(fields), "User attributes, valid from the user's first event."))
    fields = []
    for t in spec.events.types:
        p, v = spec.feature_prefix(t), spec.value_name(t)
        for w in spec.features.windows_days:
            fields.append(FieldDef(f"{p}_count_{w}d", "int64", "count", f"{t} events on the last {w} days (count)."))
        if v:
            for w in spec.features.windows_days:
                fields.append(FieldDef(f"avg_{v}_{w}d", "float32", "numeric", f"Mean {v} of {t} events, last {w} days; null if none."))
        fields.append(FieldDef(f"{p}_count_total", "int64", "count", f"{t} events so far (count)."))
        if v:
            fields.append(FieldDef(f"avg_{v}_total", "float32", "numeric", f"Mean {v} of {t} events so far."))
        fields.append(FieldDef(f"last_{p}_ts", "int64", "timestamp",
                               f"Time of the latest {t} event, unix seconds (days since: on-demand).", ""))
    for c in spec.items.categorical:
        fields.append(FieldDef(f"{c.name}_share", "vector", "vector",
                               f"Share of the user's events whose item has each {c.field} value; dim and order of {c.name}_flags."))
    out.append(ViewDef("user_behavior", "user", tuple(fields),
                       "Behaviour aggregates, a new row at the end of each day on which a value changes."))
    seq = spec.features.sequence
    if seq.encoder and spec.items.text and spec.items.text.encoder:
        dim = TEXT_DIM.get(spec.items.text.encoder, 0)
        out.append(ViewDef("user_sequence_embedding", "user", (
            FieldDef("sequence_embedding", "vector", "vector",
                     f"dim {dim}, in the item text-embedding space; {seq.encoder.upper()} over the text embeddings of the "
                     f"last {seq.length} items ({', '.join(spec.sequence_types())} events), L2-normalised; metric: cosine.",
                     "sequence", dim),
            FieldDef("sequence_length", "int64", "count", f"Items read (<= {seq.length}).", "sequence"),
            FieldDef("sequence_model", "string", "model_id",
                     "Identities of the sequence encoder and of the text encoder it read: <sequence id>|<text id>.", ""),
        ), "Embedding of the user's recent history, a new row at the end of each active day.",
            {"kind": "embedding", "dim": str(dim), "metric": "cosine"}))
    if spec.realtime and seq.encoder and spec.items.text and spec.items.text.encoder:
        dim = TEXT_DIM.get(spec.items.text.encoder, 0)
        out.append(ViewDef("user_realtime", "user", (
            FieldDef("last_item_ids", "int64_list", "list", "Items of the user's last 10 events (any type), newest first.", ""),
            FieldDef("session_event_count", "int64", "count", "Events in the session of the latest event (30 min gap).", ""),
            FieldDef("session_start_ts", "int64", "timestamp", "First event of that session, unix seconds.", ""),
            FieldDef("day_event_count", "int64", "count", "Events on the UTC day of the latest event.", ""),
            FieldDef("last_event_ts", "int64", "timestamp", "Latest event, unix seconds.", ""),
            FieldDef("realtime_sequence_embedding", "vector", "vector",
                     f"dim {dim}, in the item text-embedding space; the sequence encoder over the last {seq.length} "
                     "events' items, L2-normalised; metric: cosine.", "", dim),
            FieldDef("realtime_model", "string", "model_id", "Identities of the sequence and text encoders.", ""),
        ), "Behaviour state updated within milliseconds of each event by `recfeast ingest`; not in the ranking "
           "service (no live traffic to train it on).", {"kind": "realtime", "dim": str(dim), "metric": "cosine"},
            push=True, in_service=False))
    return out


def feature_views(spec: CatalogSpec) -> list[ViewDef]:
    """Every feature view of ``spec``, items first, in the order the data flows."""
    return _item_views(spec) + _user_views(spec)


def on_demand_views(spec: CatalogSpec) -> list[OnDemandDef]:
    """The request-time views of ``spec``."""
    names = {v.name for v in feature_views(spec)}
    out = []
    if {"user_sequence_embedding", "item_text_embedding"} <= names:
        out.append(OnDemandDef("user_item_similarity", FieldDef(
            "user_item_cosine", "float64", "numeric",
            "cosine of sequence_embedding and text_embedding in [-1, 1], null when either is missing.", "sequence"),
            ("user_sequence_embedding:sequence_embedding", "item_text_embedding:text_embedding"),
            "user_item_cosine: cosine similarity of sequence_embedding and text_embedding, in [-1, 1], null when "
            "either is missing; user-item affinity computed at lookup time."))
    lasts = tuple(f"user_behavior:last_{spec.feature_prefix(t)}_ts" for t in spec.events.types)
    out.append(OnDemandDef("user_recency", FieldDef(
        "days_since_last_event", "float64", "numeric",
        "(request_ts - the latest last_<type>_ts) / 86400, days; null before the first event."),
        lasts + ("request:request_ts",),
        "days_since_last_event: (request_ts - max over event types of last_<type>_ts) / 86400, days, null "
        "before the user's first event; it changes with the clock alone, so it is computed at request time."))
    return out


def service_features(spec: CatalogSpec) -> list[FieldDef]:
    """Every field of the ranking service (:data:`SERVICE`), views in order, then on-demand outputs."""
    out = [f for v in feature_views(spec) if v.in_service for f in v.fields]
    return out + [o.output for o in on_demand_views(spec)]


def field_roles(spec: CatalogSpec) -> dict[str, FieldDef]:
    """Feature name -> :class:`FieldDef` over every view and on-demand output of ``spec``."""
    out = {f.name: f for v in feature_views(spec) for f in v.fields}
    out.update({o.output.name: o.output for o in on_demand_views(spec)})
    return out


def view(spec: CatalogSpec, name: str) -> ViewDef | None:
    """The view called ``name``, or None when the spec has none."""
    return next((v for v in feature_views(spec) if v.name == name), None)
