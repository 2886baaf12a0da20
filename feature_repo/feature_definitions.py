# recfeast feature definitions, built from the catalog spec beside this file (catalog.yaml), in the
# order the data flows: entities -> sources -> feature views -> on-demand feature views -> services.
# The views and their fields come from recfeast.views.feature_views(spec): change the spec, not this
# file. The Parquet tables are written by `recfeast materialize` into data/tables/ beside this file.
# Definitions only: no model code here (see the design notes, ../shared/DESIGN.md).

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String

import recfeast.feast_compat  # known-harmless Feast notices off, apply after a load is a no-op
from recfeast.spec import load_spec
from recfeast.views import SERVICE, feature_views, on_demand_views

recfeast.feast_compat.install()

HERE = Path(__file__).resolve().parent
SPEC = load_spec(HERE / "catalog.yaml")
# DuckDB resolves relative paths against the working directory, so sources use absolute paths.
TABLES = HERE / "data" / "tables"
DTYPES = {"int64": Int64, "float32": Float32, "float64": Float64, "string": String,
          "vector": Array(Float32), "int64_list": Array(Int64)}
KEY_TYPES = {"int64": (ValueType.INT64, Int64), "string": (ValueType.STRING, String)}

# ---------------------------------------------------------------- entities
user = Entity(name="user", join_keys=["user_id"], value_type=KEY_TYPES[SPEC.user.dtype][0],
              description=SPEC.user.description or f"A user of {SPEC.name} ({SPEC.user.key} in the source files).")
item = Entity(name="item", join_keys=["item_id"], value_type=KEY_TYPES[SPEC.item.dtype][0],
              description=SPEC.item.description or f"A catalog item of {SPEC.name} ({SPEC.item.key} in the source files).")
ENTITIES = {"user": (user, SPEC.user), "item": (item, SPEC.item)}


# ---------------------------------------------------------------- sources
def _source(table: str, description: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=str(TABLES / f"{table}.parquet"),
        timestamp_field="event_timestamp",             # when the values became true (UTC)
        created_timestamp_column="created_timestamp",  # when they became available (ties -> latest)
        description=description,
    )


# ---------------------------------------------------------------- feature views
# ttl=0: no expiry. Every table is written so that its latest row is right at any later moment
# (behaviour windows get a row when an event leaves them), so no view needs a ttl to hide stale rows.
NO_TTL = timedelta(0)
VIEWS = {}
for v in feature_views(SPEC):
    entity, key_spec = ENTITIES[v.entity]
    source = _source(v.name, v.description)
    if v.push:   # real-time features arrive by push (`recfeast ingest`); the table holds the same values
        source = PushSource(name=f"{v.name}_push", batch_source=source,
                            description="Pushed by recfeast's ingest path after every batch of events.")
    VIEWS[v.name] = FeatureView(
        name=v.name,
        entities=[entity],
        ttl=NO_TTL,
        schema=[Field(name=v.key, dtype=KEY_TYPES[key_spec.dtype][1], description=f"{v.entity.capitalize()} key.")]
        + [Field(name=f.name, dtype=DTYPES[f.dtype], description=f.description) for f in v.fields],
        source=source,
        online=True,
        description=v.description,
        tags=dict(v.tags),
    )
    globals()[v.name] = VIEWS[v.name]

# ---------------------------------------------------------------- on-demand feature views
ranking_request = RequestSource(
    name="ranking_request",
    schema=[Field(name="request_ts", dtype=Int64,
                  description="Time of the request (online) or of the example (training), unix seconds.")],
    description="Values known only when the request is made.",
)
ON_DEMAND = {o.name: o for o in on_demand_views(SPEC)}

if "user_item_similarity" in ON_DEMAND:
    _o = ON_DEMAND["user_item_similarity"]

    @on_demand_feature_view(
        sources=[VIEWS["user_sequence_embedding"], VIEWS["item_text_embedding"]],
        # Field descriptions go in the view's description: Feast 0.67's schema inference compares
        # Field objects including their description and rejects an on-demand field that has one.
        schema=[Field(name="user_item_cosine", dtype=Float64)],
        mode="pandas",
        description=_o.description,
    )
    def user_item_similarity(inputs: pd.DataFrame) -> pd.DataFrame:
        def unit(v):
            if v is None or (isinstance(v, float) and v != v) or len(v) == 0:
                return None
            a = np.asarray(v, dtype=np.float64)
            n = np.linalg.norm(a)
            return a / n if n > 0 else None

        out = []
        for u, i in zip(inputs["sequence_embedding"], inputs["text_embedding"]):
            u, i = unit(u), unit(i)
            out.append(float(u @ i) if u is not None and i is not None and len(u) == len(i) else None)
        return pd.DataFrame({"user_item_cosine": pd.array(out, dtype="Float64").astype("float64")})

@on_demand_feature_view(
    sources=[VIEWS["user_behavior"], ranking_request],
    schema=[Field(name="days_since_last_event", dtype=Float64)],
    mode="pandas",
    description=ON_DEMAND["user_recency"].description,
)
def user_recency(inputs: pd.DataFrame) -> pd.DataFrame:
    # self-contained (Feast rebuilds the function from its source): the latest of the last_<type>_ts
    # columns, 0 meaning "no such event yet"
    cols = [c for c in inputs.columns if c.startswith("last_") and c.endswith("_ts")]
    last = inputs[cols].apply(pd.to_numeric, errors="coerce").where(lambda d: d > 0).max(axis=1)
    now = pd.to_numeric(inputs["request_ts"], errors="coerce")
    return pd.DataFrame({"days_since_last_event": ((now - last) / 86400.0).astype("float64")})


# ---------------------------------------------------------------- feature services
ranking_v1 = FeatureService(
    name=SERVICE,
    features=[VIEWS[v.name] for v in feature_views(SPEC) if v.in_service]
    + ([user_item_similarity] if "user_item_similarity" in ON_DEMAND else []) + [user_recency],
    description=f"Everything the ranking model reads for one (user, item) pair at one moment ({SPEC.name}).",
)
