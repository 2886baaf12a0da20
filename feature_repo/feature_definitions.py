# recfeast feature definitions, in the order the data flows:
# entities -> sources -> feature views -> on-demand feature views -> feature services.
# The Parquet tables are written by `recfeast materialize` into data/tables/ beside this file.
# Definitions only: no model code here (see the design notes, ../shared/DESIGN.md).

from datetime import timedelta
from pathlib import Path

import pandas as pd

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String

import recfeast.feast_compat  # noqa: E402  known-harmless Feast notices off, apply after a load is a no-op

recfeast.feast_compat.install()

# DuckDB resolves relative paths against the working directory, so sources use absolute paths.
TABLES = Path(__file__).resolve().parent / "data" / "tables"

# ---------------------------------------------------------------- entities
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A person who rates, clicks or buys items (MovieLens user id).")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A catalog item (MovieLens movie id).")


# ---------------------------------------------------------------- sources
def _source(table: str, description: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=str(TABLES / f"{table}.parquet"),
        timestamp_field="event_timestamp",       # when the values became true (UTC)
        created_timestamp_column="created_timestamp",  # when recfeast wrote them (ties -> latest)
        description=description,
    )


item_text_embedding_source = _source("item_text_embedding", "Text embedding per item and model.")
item_image_embedding_source = _source("item_image_embedding", "Poster embedding per item and model.")
item_content_source = _source("item_content", "Item content and popularity, a row per day rated.")
user_profile_source = _source("user_profile", "Static user attributes.")
user_behavior_source = _source("user_behavior", "User rating aggregates, a row per day they change.")
user_sequence_embedding_source = _source("user_sequence_embedding",
                                         "User history embedding, a row per active day.")
# Real-time features arrive by push (`recfeast ingest`); the Parquet table beside them holds the same
# values per user and active day, recomputed from the event log, for point-in-time joins.
user_realtime_push = PushSource(
    name="user_realtime_push",
    batch_source=_source("user_realtime", "Real-time user state after each active day's last event."),
    description="Pushed by recfeast's ingest path after every batch of behaviour events.",
)

# ---------------------------------------------------------------- feature views
# ttl=0: no expiry. Every table is written so that its latest row is right at any later moment
# (behaviour windows get a row when a rating leaves them), so no view needs a ttl to hide stale rows.
NO_TTL = timedelta(0)

item_text_embedding = FeatureView(
    name="item_text_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="item_id", dtype=Int64, description="Item key."),
        Field(name="text_embedding", dtype=Array(Float32),
              description="dim 384; all-MiniLM-L6-v2 (BERT, 6 layers), mean pooling, L2-normalised; "
                          "metric: cosine (= dot product). Text = title. genres. overview tagline."),
        Field(name="text_model", dtype=String,
              description="Identity of the model that produced text_embedding: name@sha256:<12 hex>."),
    ],
    source=item_text_embedding_source,
    online=True,
    description="Content embedding of the item's text.",
    tags={"kind": "embedding", "dim": "384", "metric": "cosine"},
)

item_image_embedding = FeatureView(
    name="item_image_embedding",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="item_id", dtype=Int64, description="Item key."),
        Field(name="image_embedding", dtype=Array(Float32),
              description="dim 1280; EfficientNet-Lite0 ImageNet, global-average-pooled last block, "
                          "L2-normalised; metric: cosine. Absent for items without a usable image."),
        Field(name="image_model", dtype=String,
              description="Identity of the model that produced image_embedding: name@sha256:<12 hex>."),
    ],
    source=item_image_embedding_source,
    online=True,
    description="Content embedding of the item's image (poster).",
    tags={"kind": "embedding", "dim": "1280", "metric": "cosine"},
)

item_content = FeatureView(
    name="item_content",
    entities=[item],
    ttl=NO_TTL,
    schema=[
        Field(name="item_id", dtype=Int64, description="Item key."),
        Field(name="release_year", dtype=Float32,
              description="Release year, z-score (stats in normalization.json; unknown -> median)."),
        Field(name="runtime", dtype=Float32,
              description="Runtime in minutes, z-score (unknown -> median)."),
        Field(name="rating_count", dtype=Int64, description="Ratings received so far (count)."),
        Field(name="avg_rating", dtype=Float32, description="Mean rating so far (1-5); null before the first."),
        Field(name="popularity", dtype=Float32, description="log1p(rating_count), min-max to [0, 1]."),
        Field(name="genre_flags", dtype=Array(Float32),
              description="Multi-hot genres; dim = genres kept by feature selection "
                          "(feature_selection.json; 18 on MovieLens-100k)."),
    ],
    source=item_content_source,
    online=True,
    description="Item content features and popularity, a new row at the end of each day the item was rated.",
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="user_id", dtype=Int64, description="User key."),
        Field(name="age", dtype=Float32, description="Age in years, z-score (unknown -> median)."),
        Field(name="age_bucket", dtype=String, description="MovieLens-1M age group, e.g. 25-34."),
        Field(name="gender", dtype=String, description="M, F or unknown."),
        Field(name="occupation", dtype=String, description="Occupation label or unknown."),
    ],
    source=user_profile_source,
    online=True,
    description="Static user attributes, valid from the user's first event.",
)

user_behavior = FeatureView(
    name="user_behavior",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="user_id", dtype=Int64, description="User key."),
        Field(name="rating_count_7d", dtype=Int64, description="Ratings on the last 7 days (count)."),
        Field(name="rating_count_30d", dtype=Int64, description="Ratings on the last 30 days (count)."),
        Field(name="rating_count_90d", dtype=Int64, description="Ratings on the last 90 days (count)."),
        Field(name="avg_rating_7d", dtype=Float32, description="Mean rating, last 7 days; null if none."),
        Field(name="avg_rating_30d", dtype=Float32, description="Mean rating, last 30 days; null if none."),
        Field(name="avg_rating_90d", dtype=Float32, description="Mean rating, last 90 days; null if none."),
        Field(name="rating_count_total", dtype=Int64, description="Ratings so far (count)."),
        Field(name="avg_rating_total", dtype=Float32, description="Mean rating so far (1-5)."),
        Field(name="last_rating_ts", dtype=Int64,
              description="Time of the latest rating, unix seconds (days since: see user_recency)."),
        Field(name="genre_share", dtype=Array(Float32),
              description="Share of rated items with each genre; same dim and order as genre_flags."),
    ],
    source=user_behavior_source,
    online=True,
    description="Rating aggregates, a new row at the end of each day on which a value changes.",
)

user_sequence_embedding = FeatureView(
    name="user_sequence_embedding",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="user_id", dtype=Int64, description="User key."),
        Field(name="sequence_embedding", dtype=Array(Float32),
              description="dim 384, in the item text-embedding space; GRU over the text embeddings of "
                          "the last 20 rated items, L2-normalised; metric: cosine."),
        Field(name="sequence_length", dtype=Int64, description="Items read (<= 20)."),
        Field(name="sequence_model", dtype=String,
              description="Identities of the sequence encoder and of the text encoder whose item "
                          "embeddings it read: <sequence id>|<text id>."),
    ],
    source=user_sequence_embedding_source,
    online=True,
    description="Embedding of the user's recent history, a new row at the end of each active day.",
    tags={"kind": "embedding", "dim": "384", "metric": "cosine"},
)

user_realtime = FeatureView(
    name="user_realtime",
    entities=[user],
    ttl=NO_TTL,
    schema=[
        Field(name="user_id", dtype=Int64, description="User key."),
        Field(name="last_item_ids", dtype=Array(Int64),
              description="Items of the user's last 10 events (any action), newest first."),
        Field(name="session_event_count", dtype=Int64,
              description="Events in the session of the latest event (a session ends after 30 min idle)."),
        Field(name="session_start_ts", dtype=Int64, description="First event of that session, unix seconds."),
        Field(name="day_event_count", dtype=Int64, description="Events on the UTC day of the latest event."),
        Field(name="last_event_ts", dtype=Int64, description="Latest event, unix seconds."),
        Field(name="realtime_sequence_embedding", dtype=Array(Float32),
              description="dim 384, in the item text-embedding space; the sequence encoder over the text "
                          "embeddings of the last 20 events' items, L2-normalised; metric: cosine."),
        Field(name="realtime_model", dtype=String,
              description="Identities of the sequence and text encoders: <sequence id>|<text id>."),
    ],
    source=user_realtime_push,
    online=True,
    description="Behaviour state updated within milliseconds of each event by `recfeast ingest`; not in "
                "ranking_v1 (MovieLens has no live traffic to train it on).",
    tags={"kind": "realtime", "dim": "384", "metric": "cosine"},
)

# ---------------------------------------------------------------- on-demand feature views
ranking_request = RequestSource(
    name="ranking_request",
    schema=[Field(name="request_ts", dtype=Int64,
                  description="Time of the request (online) or of the example (training), unix seconds.")],
    description="Values known only when the request is made.",
)


@on_demand_feature_view(
    sources=[user_sequence_embedding, item_text_embedding],
    # Field descriptions go in the view's description: Feast 0.67's schema inference compares
    # Field objects including their description and rejects an on-demand field that has one.
    schema=[Field(name="user_item_cosine", dtype=Float64)],
    mode="pandas",
    description="user_item_cosine: cosine similarity of sequence_embedding and text_embedding, in "
                "[-1, 1], null when either is missing; user-item affinity computed at lookup time.",
)
def user_item_similarity(inputs: pd.DataFrame) -> pd.DataFrame:
    import numpy as np

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
    sources=[user_behavior, ranking_request],
    schema=[Field(name="days_since_last_rating", dtype=Float64)],
    mode="pandas",
    description="days_since_last_rating: (request_ts - last_rating_ts) / 86400, days, null if never "
                "rated; it changes with the clock alone, so it is computed at request time.",
)
def user_recency(inputs: pd.DataFrame) -> pd.DataFrame:
    last = pd.to_numeric(inputs["last_rating_ts"], errors="coerce")
    now = pd.to_numeric(inputs["request_ts"], errors="coerce")
    return pd.DataFrame({"days_since_last_rating": ((now - last) / 86400.0).astype("float64")})


# ---------------------------------------------------------------- feature services
ranking_v1 = FeatureService(
    name="ranking_v1",
    features=[
        user_profile,
        user_behavior,
        user_sequence_embedding,
        item_content,
        item_text_embedding,
        item_image_embedding,
        user_item_similarity,
        user_recency,
    ],
    description="Everything the ranking model reads for one (user, item) pair at one moment.",
)
