"""The catalog spec: validation messages, string ids, implicit events, half-star ratings, duplicates,
and the views and Feast definitions generated from it. No model, no full data set."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from recfeast.adapters import read_catalog
from recfeast.cleaning import clean
from recfeast.errors import ConfigError, DataError
from recfeast.spec import load_spec, parse_spec
from recfeast.views import feature_views, field_roles, on_demand_views
from tests.conftest import ROOT, SPECS


def _spec(**over) -> dict:
    """A half-star ratings + tags catalog with string user ids (the shape issue 10 was tried on)."""
    base = {
        "name": "books",
        "user": {"key": "reader", "dtype": "string"},
        "item": {"key": "book_id", "dtype": "int64"},
        "items": {"source": {"path": "books.csv"}, "title": "title", "text": {"fields": ["title", "tags"]},
                  "categorical": [{"field": "tags", "multi": True, "separator": ";", "feature": "tag"}],
                  "numeric": [{"field": "pages", "valid": [1, 5000], "unit": "pages"}]},
        "events": {"source": {"path": "events.jsonl"}, "type_field": "kind",
                   "timestamp": {"field": "ts", "unit": "iso"},
                   "types": {"rate": {"kind": "rating", "value": {"field": "stars", "scale": [0.5, 5], "step": 0.5},
                                      "positive": {"min_value": 4}},
                             "wishlist": {"kind": "add_to_cart", "positive": True}}},
    }
    for k, v in over.items():
        base[k] = v
    return base


def _write_books(root):
    pd.DataFrame({"book_id": ["1", "2", "3", "x"], "title": ["Dune", "Emma", "Ulysses", "Bad id"],
                  "tags": ["sci-fi;classic", "romance;classic", "", "x"],
                  "pages": ["412", "abc", "9999", "1"]}).to_csv(root / "books.csv", index=False)
    rows = [
        {"reader": "ab12", "book_id": 1, "kind": "rate", "stars": 4.5, "ts": "2024-01-01T10:00:00Z"},
        {"reader": "ab12", "book_id": 2, "kind": "rate", "stars": 3.7, "ts": "2024-01-02T10:00:00Z"},   # off step
        {"reader": "ab12", "book_id": 3, "kind": "rate", "stars": 6, "ts": "2024-01-03T10:00:00Z"},     # off scale
        {"reader": "cd34", "book_id": 1, "kind": "wishlist", "ts": "2024-01-04T10:00:00Z"},
        {"reader": "cd34", "book_id": 1, "kind": "wishlist", "ts": "2024-01-04T10:00:00Z"},            # repeat
        {"reader": "cd34", "book_id": 2, "kind": "share", "ts": "2024-01-05T10:00:00Z"},               # unknown type
        {"reader": "", "book_id": 2, "kind": "rate", "stars": 3, "ts": "2024-01-05T10:00:00Z"},        # empty id
        {"reader": "ef56", "book_id": 2, "kind": "rate", "ts": "2024-01-06T10:00:00Z"},                # no value
    ]
    pd.DataFrame(rows).to_json(root / "events.jsonl", orient="records", lines=True)
    return root


def test_shipped_specs_load():
    ml, hm = load_spec(SPECS["movielens"]), load_spec(SPECS["hm"])
    assert ml.events.types["rate"].value.scale == (1, 5) and ml.primary_type() == "rate"
    assert hm.user.dtype == "string" and hm.string_ids and not hm.realtime
    assert hm.events.types["purchase"].positive_rule.min_value is None and hm.events.duplicates == "none"


@pytest.mark.parametrize("change, message", [
    ({"events": {"types": {"rate": {"value": {"scale": [1, 5]}}}}},
     r"events.source: .*\n?.*|events.types.rate.kind: Field required"),
    ({"items": {"source": {"path": "b.csv"}, "text": {"fields": ["title"]}, "colour": "red"}},
     r"items.colour: unknown key"),
    ({"events": {"source": {"path": "e.csv"}, "types": {"rate": {"kind": "rating"}}}},
     r"events.types.rate: kind rating needs value: \{scale: \[low, high\]\}"),
    ({"events": {"source": {"path": "e.csv"}, "types": {"buy": {"kind": "purchased", "positive": True}}}},
     r"events.types.buy.kind: Input should be 'rating', .* got 'purchased'"),
    ({"events": {"source": {"path": "e.csv"}, "types": {"view": {"kind": "view"}}}},
     r"no event type makes a positive label"),
    ({"events": {"source": {"path": "e.csv"}, "types": {"rate": {"kind": "rating", "positive": True,
                                                                   "value": {"scale": [5, 1]}}}}},
     r"events.types.rate.value: scale \[5.0, 1.0\]: expected \[low, high\] with low < high"),
    ({"split": {"val": "two weeks", "test": 0.1}}, r"split.val: 'two weeks': expected a duration like 45s"),
    ({"items": {"source": {"path": "books.weird"}}}, r"items.source: path 'books.weird': cannot tell the format"),
])
def test_bad_specs_name_the_key_and_what_was_expected(change, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_spec(_spec(**change), "catalog.yaml")
    assert str(err.value).startswith("catalog.yaml: invalid catalog spec:")


def test_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no catalog spec"):
        load_spec(tmp_path / "catalog.yaml")
    (tmp_path / "catalog.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(tmp_path)


def test_missing_column_names_the_file_the_field_and_the_columns(tmp_path):
    _write_books(tmp_path)
    spec = parse_spec(_spec(items={**_spec()["items"], "numeric": [{"field": "weight"}]}))
    with pytest.raises(DataError, match=r"books.csv: items field\(s\) \['weight'\] named in the catalog spec are not in the file .* the file has "
                                        r"columns \['book_id', 'title', 'tags', 'pages'\]"):
        read_catalog(tmp_path, spec)


def test_string_ids_half_stars_implicit_events_and_duplicates(tmp_path):
    spec = parse_spec(_spec())
    data = clean(read_catalog(_write_books(tmp_path), spec))
    q = data.quarantine.frame()
    rules = sorted(q.rule + "@" + q.source)
    assert rules == sorted([
        "unparsable_id@books.csv:5",                 # book id "x"
        "unparsable_pages@books.csv:3",              # "abc" is not a number: the field is nulled
        "pages_out_of_range@books.csv:4",            # 9999 pages
        "value_off_step@events.jsonl:2",             # 3.7 stars is not a half star
        "value_out_of_range@events.jsonl:3",         # 6 stars
        "duplicate_event@events.jsonl:5",            # exact repeat under the default duplicate key
        "unknown_event_type@events.jsonl:6",         # 'share' is not declared
        "unparsable_id@events.jsonl:7",              # empty reader id
        "missing_value@events.jsonl:8",              # a rating without stars
    ])
    ev = data.events
    assert ev[["user_id", "item_id", "action", "value"]].astype(str).values.tolist() == [
        ["ab12", "1", "rate", "4.5"], ["cd34", "1", "wishlist", "nan"]]
    assert ev.user_id.map(type).eq(str).all() and ev.item_id.dtype == np.int64   # strings stay strings
    assert data.items.set_index("item_id").tags.to_dict() == {1: ["sci-fi", "classic"], 2: ["romance", "classic"], 3: []}
    assert data.items.set_index("item_id").text[1] == "Dune. sci-fi, classic."
    # duplicates may name the source's own columns (reader, book_id, kind, ts, stars)
    spec_src = parse_spec(_spec(events={**_spec()["events"], "duplicates": ["reader", "book_id", "kind", "ts"]}))
    assert spec_src.events.duplicates == ["user_id", "item_id", "action", "event_timestamp"]
    # same-day repeat purchases are legitimate when the spec says duplicates: none
    spec2 = parse_spec(_spec(events={**_spec()["events"], "duplicates": "none"}))
    data2 = clean(read_catalog(tmp_path, spec2))
    assert len(data2.events) == 3 and "duplicate_event" not in set(data2.quarantine.frame().rule)


def test_views_follow_the_spec():
    spec = parse_spec(_spec())
    views = {v.name: [(f.name, f.dtype, f.role) for f in v.fields] for v in feature_views(spec)}
    assert list(views) == ["item_text_embedding", "item_image_embedding", "item_content", "user_behavior",
                           "user_sequence_embedding"][:1] + ["item_content", "user_behavior", "user_sequence_embedding"]
    assert views["item_content"] == [
        ("pages", "float32", "numeric"), ("tag_flags", "vector", "vector"), ("rate_count", "int64", "count"),
        ("avg_rate", "float32", "numeric"), ("wishlist_count", "int64", "count"), ("popularity", "float32", "numeric")]
    behaviour = [n for n, _, _ in views["user_behavior"]]
    assert behaviour[:8] == ["rate_count_7d", "rate_count_30d", "rate_count_90d", "avg_rate_7d", "avg_rate_30d",
                             "avg_rate_90d", "rate_count_total", "avg_rate_total"]
    assert "wishlist_count_90d" in behaviour and "avg_wishlist_7d" not in behaviour and behaviour[-1] == "tag_share"
    assert [o.output.name for o in on_demand_views(spec)] == ["user_item_cosine", "days_since_last_event"]
    roles = field_roles(spec)
    assert roles["last_rate_ts"].role == "timestamp" and roles["text_embedding"].group == "text"
    assert "user_realtime" not in views   # string user ids: no pushed real-time view


def test_feature_definitions_are_built_from_the_spec(tmp_path):
    """`feature_definitions.py` turns the H&M spec into Feast objects: STRING user entity, the spec's
    views and fields with descriptions, the recency view named after the purchase type."""
    from recfeast.store import load_definitions

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "feature_repo" / "feature_definitions.py", repo)
    shutil.copy(SPECS["hm"], repo / "catalog.yaml")
    objs = {type(o).__name__ + ":" + o.name: o for o in load_definitions(repo)}
    from feast import ValueType

    assert objs["Entity:user"].value_type == ValueType.STRING and objs["Entity:item"].value_type == ValueType.INT64
    views = sorted(k.split(":")[1] for k in objs if k.startswith("FeatureView:"))
    assert views == ["item_content", "item_image_embedding", "item_text_embedding", "user_behavior", "user_profile",
                     "user_sequence_embedding"]
    content = objs["FeatureView:item_content"]
    assert [f.name for f in content.features][-3:] == ["purchase_count", "avg_price", "popularity"]
    assert all(f.description for f in content.features)
    svc = objs["FeatureService:ranking_v1"]
    assert [p.name for p in svc.feature_view_projections][-2:] == ["user_item_similarity", "user_recency"]
    assert [f.name for f in objs["OnDemandFeatureView:user_recency"].features] == ["days_since_last_event"]
