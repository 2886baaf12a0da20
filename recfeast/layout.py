"""Where Feast 0.67 keeps each feature of a feature service online, resolved once per client.

Redis: one hash per entity key (``serialize_entity_key(key) + project``); a view's values are the
fields ``mmh3("<view>:<feature>")`` and its event time the field ``_ts:<view>`` (a protobuf
``Timestamp``). SQLite: one table ``<project>_<view>`` with a row per (entity key, feature name)
holding the serialised ``Value`` proto and ``event_ts``. Values are ``feast.types.Value`` protos
either way. This module is the one place that names keys, fields and tables: the reader
(:func:`service_layout`), the online writer and stale-row clearing of ``materialize/online.py``
(:func:`view_layout`, :func:`entity_keys`, :func:`redis_key`) and the ingest path all go through it.
``tests/serving/test_reader.py`` pins reads and ``tests/materialize/test_online_writer.py`` pins
writes against Feast's own ``get_online_features``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recfeast.errors import StoreError

#: recfeast's column kinds (also the dtypes of :class:`recfeast.serving.sdk.RankingFeatures`)
VECTOR, FLOAT32, FLOAT64, INT64, STRING = "vector", "float32", "float64", "int64", "string"
#: a variable-length list (``Array(String)`` tags, ``Array(Int64)``, ``Array(Float64)``...): Python lists
LIST = "list"
INT64_LIST = "int64_list"  #: Array(Int64), read outside services only (:func:`view_layout`)


@dataclass(frozen=True)
class ViewSpec:
    """One feature view of the service as stored online.

    Attributes:
        name: feature view name (versioned name when Feast's view versioning is on).
        join_key: entity column, e.g. ``user_id``.
        features: feature names in the service's order.
        kinds: one of the kinds above per feature.
        ttl_s: seconds after its event time a value stops being served; 0 = never.
        fields: Redis hash field of each feature (4-byte mmh3).
        ts_field: Redis hash field of the view's event time.
        table: SQLite table of the view.
    """

    name: str
    join_key: str
    features: tuple[str, ...]
    kinds: tuple[str, ...]
    ttl_s: float
    fields: tuple[bytes, ...]
    ts_field: bytes
    table: str


@dataclass(frozen=True)
class OnDemandSpec:
    """An on-demand view of the service: computed at request time from other features.

    Attributes:
        name: on-demand view name. features/kinds: its outputs. inputs: feature or request
            columns it reads. udf: Feast's transformation (used when no vectorised version exists).
    """

    name: str
    features: tuple[str, ...]
    kinds: tuple[str, ...]
    inputs: tuple[str, ...]
    udf: object


def kind_of(dtype) -> str:
    """recfeast kind of a Feast type; raises StoreError for types the SDK does not serve."""
    from feast.types import Array, Float32, Float64, Int64, String

    if isinstance(dtype, Array):
        return VECTOR if dtype.base_type == Float32 else LIST
    for t, k in ((Float32, FLOAT32), (Float64, FLOAT64), (Int64, INT64), (String, STRING)):
        if dtype == t:
            return k
    raise StoreError(f"feature type {dtype} is not served by the recfeast SDK (Float32/64, Int64, String, "
                     "Array(Float32) vectors, other arrays as lists)")


@lru_cache(maxsize=65536)
def entity_key_bytes(join_key: str, value: int | str, version: int = 3) -> bytes:
    """Feast's serialised entity key of one join key (cached: ids repeat across requests).

    ``value`` is an int (an INT64 entity: ``int64_val``) or a str (a STRING entity: ``string_val``,
    UTF-8); with version 3 both are ``<n keys><STRING><len><join key><type><len><value bytes>``
    (``feast.infra.key_encoding_utils.serialize_entity_key``, which this calls).
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    val = Value(string_val=value) if isinstance(value, str) else Value(int64_val=value)
    return serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[val]),
                                entity_key_serialization_version=version)


def service_layout(store, service) -> tuple[list[ViewSpec], list[OnDemandSpec]]:
    """Resolve every projection of ``service`` (a Feast ``FeatureService``) against ``store``'s registry.

    Returns:
        ``(views, on_demand)`` in the service's order.

    Raises:
        StoreError: a view with several join keys or an unserved type.
    """
    from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name

    cfg = store.config
    versioning = cfg.registry.enable_online_feature_view_versioning
    views, odfvs = [], []
    for proj in service.feature_view_projections:
        feats = tuple(f.name for f in proj.features)
        kinds = tuple(kind_of(f.dtype) for f in proj.features)
        try:
            fv = store.get_feature_view(proj.name)
        except Exception:  # an on-demand view
            odfv = store.get_on_demand_feature_view(proj.name)
            inputs = []
            for src in odfv.source_feature_view_projections.values():
                inputs += [f.name for f in src.features]
            for req in odfv.source_request_sources.values():
                inputs += [f.name for f in req.schema]
            odfvs.append(OnDemandSpec(proj.name, feats, kinds, tuple(inputs), odfv.feature_transformation.udf))
            continue
        if len(fv.join_keys) != 1:
            raise StoreError(f"feature view {fv.name!r} has join keys {fv.join_keys}; the SDK serves one key per view")
        name = compute_versioned_name(fv, versioning)
        views.append(ViewSpec(
            name=name, join_key=fv.join_keys[0], features=feats, kinds=kinds,
            ttl_s=fv.ttl.total_seconds() if fv.ttl else 0.0,
            fields=tuple(_mmh3(f"{name}:{f}") for f in feats), ts_field=f"_ts:{name}".encode(),
            table=compute_table_id(cfg.project, fv, versioning)))
    return views, odfvs


def projection_layout(store, name: str, features: list[str]) -> ViewSpec:
    """Where ``features`` of the feature view ``name`` live online, outside any feature service
    (e.g. ``user_realtime:last_item_ids``). Kinds as :func:`kind_of`, plus ``int64_list`` for
    ``Array(Int64)`` (decoded by :func:`recfeast.codec.decode_int64_list`).

    Raises:
        StoreError: no such view in the registry, a missing feature, several join keys or an
            unserved type.
    """
    from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
    from feast.types import Array, Int64

    cfg = store.config
    try:
        fv = store.get_feature_view(name)
    except Exception as exc:
        raise StoreError(f"feature view {name!r} is not in the registry: {exc}") from exc
    if len(fv.join_keys) != 1:
        raise StoreError(f"feature view {name!r} has join keys {fv.join_keys}; the SDK serves one key per view")
    dtypes = {f.name: f.dtype for f in fv.features}
    missing = [f for f in features if f not in dtypes]
    if missing:
        raise StoreError(f"feature view {name!r} has no features {missing}")
    kinds = tuple(INT64_LIST if dtypes[f] == Array(Int64) else kind_of(dtypes[f]) for f in features)
    versioning = cfg.registry.enable_online_feature_view_versioning
    vname = compute_versioned_name(fv, versioning)
    return ViewSpec(name=vname, join_key=fv.join_keys[0], features=tuple(features), kinds=kinds,
                    ttl_s=fv.ttl.total_seconds() if fv.ttl else 0.0,
                    fields=tuple(_mmh3(f"{vname}:{f}") for f in features), ts_field=f"_ts:{vname}".encode(),
                    table=compute_table_id(cfg.project, fv, versioning))
@dataclass(frozen=True)
class ViewLayout:
    """Where every feature of one feature view is written online (all its features, not a projection).

    Attributes:
        name: (versioned) view name, the prefix of its Redis fields.
        join_key: entity column (one int64 key).
        features: every feature name of the view, in schema order.
        value_types: Feast ``ValueType`` of each feature (what Feast's materialize encodes as).
        fields: Redis hash field of each feature (``mmh3("<name>:<feature>")``, 4 bytes).
        ts_field: Redis hash field of the view's event time (``_ts:<name>``).
        table: SQLite table (``<project>_<name>``).
        project: Feast project (the suffix of Redis keys).
        key_version: entity key serialisation version.
    """

    name: str
    join_key: str
    features: tuple[str, ...]
    value_types: tuple
    fields: tuple[bytes, ...]
    ts_field: bytes
    table: str
    project: str
    key_version: int


def view_layout(config, fv) -> ViewLayout:
    """The online layout of feature view ``fv`` (a Feast ``FeatureView``) under ``config`` (a Feast
    ``RepoConfig``), with the helpers Feast's own online stores use (``compute_versioned_name``,
    ``compute_table_id``, ``_mmh3``).

    Raises:
        StoreError: ``fv`` has several join keys.
    """
    from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name

    if len(fv.join_keys) != 1:
        raise StoreError(f"feature view {fv.name!r} has join keys {fv.join_keys}; recfeast writes one int64 key")
    versioning = config.registry.enable_online_feature_view_versioning
    name = compute_versioned_name(fv, versioning)
    feats = tuple(f.name for f in fv.features)
    return ViewLayout(
        name=name, join_key=fv.join_keys[0], features=feats,
        value_types=tuple(f.dtype.to_value_type() for f in fv.features),
        fields=tuple(_mmh3(f"{name}:{f}") for f in feats), ts_field=f"_ts:{name}".encode(),
        table=compute_table_id(config.project, fv, versioning), project=config.project,
        key_version=config.entity_key_serialization_version)


@lru_cache(maxsize=256)
def _key_prefix(join_key: str, version: int) -> bytes:
    """Bytes of Feast's serialised int64 entity key before the 8 value bytes, checked against
    Feast's ``serialize_entity_key`` on two values (one negative)."""
    probe = entity_key_bytes.__wrapped__(join_key, 0, version)
    prefix = probe[:-8]
    for v in (1234567890123, -5):
        if entity_key_bytes.__wrapped__(join_key, v, version) != prefix + int(v).to_bytes(8, "little", signed=True):
            raise StoreError(f"Feast's entity key serialisation v{version} is not prefix + int64 LE; update recfeast.layout")
    return prefix


def entity_keys(join_key: str, ids: np.ndarray, version: int = 3) -> list[bytes]:
    """Feast's serialised entity keys of int64 ids, vectorised.

    Args:
        join_key: entity column name, e.g. ``item_id``.
        ids: ``(n,)`` integer array.
        version: Feast's ``entity_key_serialization_version``.

    Returns:
        ``n`` byte strings equal to ``serialize_entity_key(EntityKey([join_key], [Value(int64_val=id)]))``.
    """
    prefix = _key_prefix(join_key, version)
    ids = np.ascontiguousarray(ids, "<i8")
    w = len(prefix) + 8
    buf = np.empty((len(ids), w), np.uint8)
    buf[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
    buf[:, len(prefix):] = ids.view(np.uint8).reshape(-1, 8)
    raw = buf.tobytes()
    return [raw[i:i + w] for i in range(0, len(raw), w)]


def redis_key(entity_key: bytes, project: str) -> bytes:
    """Redis hash key of a serialised entity key in ``project`` (Feast's ``_redis_key``)."""
    return entity_key + project.encode("utf-8")
