"""Shared fixtures: the real MovieLens-100k data, a small real slice with injected bad rows,
throwaway feature repositories, and a real Redis database for tests (db 15)."""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("RECFEAST_TEST_DATA_DIR", ROOT.parent / "shared" / "data" / "movielens-100k"))
TEST_REDIS = os.environ.get("RECFEAST_TEST_REDIS", "127.0.0.1:6379,db=15")

# Tests that build online stores use their own Redis database so they never touch a user's keys.
os.environ["REDIS_CONNECTION_STRING"] = TEST_REDIS
os.environ.pop("RECFEAST_ONLINE_STORE", None)
# Training runs are tracked in MLflow only where a test asks for it (tests/training/test_tracking.py):
# elsewhere `finetune text` would write the checkout's feature_repo/data/mlflow.db.
os.environ["RECFEAST_TRACKING"] = "0"
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")

#: items picked for the slice: Star Wars trilogy, The Mask (72, wrong TMDB match), unknown release date (267)
SLICE_ITEMS = [1, 50, 72, 172, 181, 267]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "u.data").is_file():
        pytest.fail(f"MovieLens-100k not found at {DATA_DIR}: set RECFEAST_TEST_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def catalog(data_dir):
    """The full real catalog, cleaned."""
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean

    return clean(read_catalog(data_dir))


@pytest.fixture(scope="session")
def text_encoder():
    from recfeast.encoders import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def image_encoder():
    from recfeast.encoders import ImageEncoder

    return ImageEncoder()


def _write_slice(root: Path, catalog, data_dir: Path) -> dict:
    """A canonical-format slice of the real data, with one bad row per rule; returns what was injected."""
    root.mkdir(parents=True, exist_ok=True)
    q = catalog.quarantine.frame()
    empty_desc = q[q.rule == "empty_description"].entity_key.astype(int).tolist()[:2]
    no_image = [i for i, p in zip(catalog.items.item_id, catalog.items.image_path)
                if p is None and not catalog.items.set_index("item_id").enrichment_dropped[i]][:2]
    popular = catalog.events.item_id.value_counts().index[:30].tolist()
    item_ids = sorted(set(SLICE_ITEMS + empty_desc + no_image + popular))
    from recfeast.adapters.movielens import read

    raw = read(data_dir)
    items = raw.items[raw.items.item_id.astype(int).isin(item_ids)].copy()
    items["image_path"] = [None if p is None else str(data_dir / p) for p in items["image_path"]]
    # two items with bad images: garbage bytes, and a real poster cut short
    (root / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    (root / "truncated.jpg").write_bytes((data_dir / "posters" / "1.jpg").read_bytes()[:400])
    bad_img = pd.DataFrame([
        {**items.iloc[0].to_dict(), "item_id": "9001", "title": "Garbage Poster (1990)", "image_path": str(root / "garbage.jpg")},
        {**items.iloc[0].to_dict(), "item_id": "9002", "title": "Truncated Poster (1991)", "image_path": str(root / "truncated.jpg")},
    ])
    items = pd.concat([items, bad_img], ignore_index=True).drop(columns=["source"])
    items["item_id"] = items["item_id"].astype("int64")
    items.to_parquet(root / "items.parquet", index=False)

    ev = catalog.events[catalog.events.item_id.isin(item_ids)]
    users_kept = ev.user_id.value_counts().index[:60]
    ev = ev[ev.user_id.isin(users_kept)]
    events = pd.DataFrame({
        "user_id": ev.user_id.astype(str), "item_id": ev.item_id.astype(str), "action": "rate",
        "value": ev.value.map(lambda v: f"{v:g}"),
        "event_timestamp": (ev.event_timestamp.astype("int64") // 10**9).astype(str),
    })
    u0, i0 = events.iloc[0].user_id, events.iloc[0].item_id
    bad_events = pd.DataFrame([
        {"user_id": u0, "item_id": i0, "action": "rate", "value": "9", "event_timestamp": "885000000"},
        {"user_id": "99999", "item_id": i0, "action": "rate", "value": "4", "event_timestamp": "885000000"},
        {"user_id": u0, "item_id": "88888", "action": "rate", "value": "4", "event_timestamp": "885000000"},
        {"user_id": u0, "item_id": i0, "action": "rate", "value": "4", "event_timestamp": "not-a-time"},
        {"user_id": u0, "item_id": i0, "action": "rate", "value": "abc", "event_timestamp": "885000000"},
        events.iloc[5].to_dict(),  # exact duplicate of row 6
    ])
    events = pd.concat([events, bad_events], ignore_index=True)
    events.to_csv(root / "events.csv", index=False)

    users = raw.users[raw.users.user_id.astype(int).isin(users_kept)].drop(columns=["source"]).copy()
    users.iloc[0, users.columns.get_loc("age")] = "abc"
    users.to_csv(root / "users.csv", index=False)
    return {
        "n_items": len(items), "n_users": len(users), "n_good_events": len(ev),
        "item_ids": sorted(items.item_id.tolist()), "user_ids": sorted(users.user_id.astype(int).tolist()),
        "bad_age_user": int(users.iloc[0].user_id), "empty_desc": empty_desc, "no_image": no_image,
        "events_header_offset": 2,
    }


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, catalog, data_dir):
    """(folder, facts) of a canonical slice: ~40 real items, 60 real users, their real ratings, plus
    bad rows: rating 9, unknown user, unknown item, bad timestamp, bad value, duplicate, bad age,
    a garbage JPEG and a truncated JPEG."""
    root = tmp_path_factory.mktemp("small_data")
    return root, _write_slice(root, catalog, data_dir)


SPECS = {"slice": ROOT / "tests" / "specs" / "movielens_slice.yaml",
         "movielens": ROOT / "feature_repo" / "catalog.yaml",
         "hm": ROOT / "examples" / "hm" / "catalog.yaml"}


def make_repo(path: Path, spec: str | Path = "slice", embeddings: Path | None = None) -> Path:
    """A throwaway copy of feature_repo/ (definitions and yaml, no data) with the catalog spec ``spec``
    (a name of :data:`SPECS` or a path): by default the test slice's plain-file MovieLens spec.
    ``embeddings``: an embedding cache folder copied in as ``data/embedding_cache``, so the main job
    reuses those vectors instead of encoding again (the ``slice_embeddings`` fixture)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "feature_store.redis.yaml", "feature_definitions.py"):
        shutil.copy(ROOT / "feature_repo" / name, path / name)
    shutil.copy(SPECS.get(spec, spec), path / "catalog.yaml")
    if embeddings is not None:
        shutil.copytree(embeddings, path / "data" / "embedding_cache", dirs_exist_ok=True)
    return path


def unique_project() -> str:
    return f"rftest_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_data):
    """The main job run on the slice into a fresh repo, SQLite online store; (repo, summary, project)."""
    from recfeast.materialize.job import JobConfig, run

    repo = make_repo(tmp_path_factory.mktemp("repo_small"))
    project = unique_project()
    summary = run(JobConfig(data_dir=small_data[0], repo=repo, online_store="sqlite", project=project,
                            progress=False))
    return repo, summary, project


@pytest.fixture(scope="session")
def slice_embeddings(tmp_path_factory, small_run) -> Path:
    """A copy of the slice's embedding cache as ``small_run`` left it (its text and poster vectors,
    keyed by model identity and input hash): ``make_repo(path, embeddings=slice_embeddings)`` gives a
    fresh repository whose main job on the slice encodes nothing. For tests whose point is not the
    encoding; the ones that count computed vectors start empty."""
    dst = tmp_path_factory.mktemp("slice_embeddings")
    shutil.copytree(small_run[0] / "data" / "embedding_cache", dst, dirs_exist_ok=True)
    return dst


def latest_rows(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The row with the greatest (event_timestamp, created_timestamp) per key, indexed by key."""
    return table.sort_values([key, "event_timestamp", "created_timestamp"]).groupby(key).tail(1).set_index(key)


def assert_vectors_equal(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.fixture
def redis_fails_fast():
    """New Redis clients connect once, without redis-py's own reconnect retries, for this test.

    redis-py's default for a client is 3 retries with exponential backoff (1 s base, 10 s cap): each
    connection to a Redis that is not there sleeps 3-10 s before it fails. Tests that point at a down
    store on purpose check what recfeast does then (its own retries, 503s, waiting batches), not
    redis-py's sleeps; the Redis, Feast and recfeast code are the real ones."""
    import inspect

    import redis

    default = inspect.signature(redis.Redis.__init__).parameters["retry"].default   # deep-copied per client
    saved = default.get_retries()
    default.update_retries(0)
    yield
    default.update_retries(saved)


def drop_online(fs) -> None:
    """Delete this project's online rows (Redis keys) but keep the registry, which the SQLite and
    Redis stores of one repository share (``FeatureStore.teardown`` would delete it)."""
    fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())


def plain_spec(items="items.parquet", users="users.csv", events="events.parquet", **extra_items):
    """A small catalog spec over plain files in the canonical column names (item_id, title,
    image_path; user_id; user_id, item_id, action, value, event_timestamp), with a ``rate`` type on a
    1..5 scale and a ``click`` type: the shape the bad-input tests write."""
    from recfeast.spec import parse_spec

    return parse_spec({
        "name": "plain",
        "items": {"source": {"path": items}, "title": "title", "text": {"fields": ["title"]},
                  "image": {"field": "image_path"}, **extra_items},
        "users": {"source": {"path": users}},
        "events": {"source": {"path": events}, "default_type": "rate",
                   "types": {"rate": {"kind": "rating", "feature": "rating", "value": {"scale": [1, 5], "step": 1},
                                      "positive": {"min_value": 4}},
                             "click": {"kind": "click"}}},
    })


def write_spec(spec, path: Path) -> Path:
    """Write ``spec`` (a CatalogSpec) as YAML to ``path`` (a repo folder gets ``catalog.yaml``)."""
    import yaml

    path = path / "catalog.yaml" if path.is_dir() else path
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=False)))
    return path


def slice_split_dates(small_data) -> tuple[str, str]:
    """``(val_start, test_start)`` for the test slice: its events' 60% and 80% time quantiles (dates),
    so every split has examples whatever days the slice's ratings fall on."""
    events = pd.read_csv(small_data[0] / "events.csv", dtype=str)
    t = pd.to_datetime(pd.to_numeric(events.event_timestamp, errors="coerce").dropna(), unit="s", utc=True)
    return tuple(t.quantile(q).strftime("%Y-%m-%d") for q in (0.6, 0.8))
