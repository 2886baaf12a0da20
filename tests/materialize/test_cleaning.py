"""Cleaning rules and quarantine reasons, on the real data and on the slice with injected bad rows."""

import pandas as pd
import pytest

from recfeast.errors import DataError
from recfeast.adapters import read_catalog
from recfeast.cleaning import clean
from recfeast.spec import load_spec
from tests.conftest import SPECS, plain_spec


@pytest.mark.slow   # full data set or the main job
def test_full_movielens_counts(catalog):
    assert len(catalog.items) == 1682
    assert len(catalog.users) == 943
    assert len(catalog.events) == 100_000  # ml-100k has no bad or duplicate ratings
    counts = catalog.quarantine.counts()
    assert counts["items/low_enrichment_confidence"] == 45  # data README: 45 matches below 0.5 or empty
    # 18 empty overviews in the TMDB file; the ones on low-confidence matches are counted there
    assert counts["items/empty_description"] == 8
    assert set(counts) == {"items/low_enrichment_confidence", "items/empty_description"}


@pytest.mark.slow   # full data set or the main job
def test_wrong_tmdb_match_is_dropped(catalog):
    mask = catalog.items.set_index("item_id").loc[72]
    assert mask.title == "Mask, The (1994)"
    assert mask.description is None and mask.tagline is None and mask.image_path is None
    assert pd.isna(mask.runtime_min) and bool(mask.enrichment_dropped)
    toy = catalog.items.set_index("item_id").loc[1]
    assert toy.description.startswith("Led by Woody") and toy.image_path.endswith("posters/1.jpg")


@pytest.mark.slow   # full data set or the main job
def test_types_and_order(catalog):
    ev = catalog.events
    assert str(ev.event_timestamp.dtype) == "datetime64[ns, UTC]"
    assert ev.user_id.dtype == "int64" and ev.item_id.dtype == "int64" and ev.value.dtype == "float64"
    assert ev.event_timestamp.is_monotonic_increasing
    assert ev.event_timestamp.min() == pd.Timestamp("1997-09-20 03:05:10", tz="UTC")
    assert catalog.items.release_date.isna().sum() == 1  # one movie with an unknown release date
    assert catalog.items.set_index("item_id").loc[50].genres == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]


@pytest.mark.slow   # full data set or the main job
def test_injected_bad_rows_are_quarantined_with_reason(small_data):
    root, facts = small_data
    data = clean(read_catalog(root, load_spec(SPECS["slice"])))
    q = data.quarantine.frame()
    events_q = q[q.table == "events"].set_index("rule")
    first_bad = facts["n_good_events"] + 2  # header is line 1
    expected = {
        "value_out_of_range": first_bad, "unknown_user": first_bad + 1, "unknown_item": first_bad + 2,
        "unparsable_timestamp": first_bad + 3, "unparsable_value": first_bad + 4, "duplicate_event": first_bad + 5,
    }
    assert sorted(events_q.index) == sorted(expected)
    for rule, line in expected.items():
        assert events_q.loc[rule, "source"] == f"events.csv:{line}", rule
        assert events_q.loc[rule, "action"] == "row_rejected"
    assert "outside the scale [1, 5]" in events_q.loc["value_out_of_range", "detail"]
    assert "99999" in events_q.loc["unknown_user", "detail"]
    assert len(data.events) == facts["n_good_events"]  # every good row kept, every bad one out
    age = q[q.rule == "unparsable_age"]   # "abc" is not a number (out-of-range ages: age_out_of_range)
    assert age.entity_key.tolist() == [str(facts["bad_age_user"])] and age.action.tolist() == ["field_nulled"]
    assert pd.isna(data.users.set_index("user_id").loc[facts["bad_age_user"], "age"])
    assert len(data.users) == facts["n_users"]


def test_missing_source_file_is_a_clear_error(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(DataError, match=r"items.parquet: no file matches \(catalog spec source path 'items.parquet'\)"):
        read_catalog(tmp_path, plain_spec())


def test_missing_column_names_file_and_field(tmp_path):
    pd.DataFrame({"item_id": [1]}).to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame({"user_id": [1]}).to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame({"user_id": [1]}).to_csv(tmp_path / "events.csv", index=False)
    with pytest.raises(DataError, match=r"items.csv: items field\(s\) \['title', 'image_path'\] named in the catalog spec are not in the file"):
        read_catalog(tmp_path, plain_spec("items.csv", "users.csv", "events.csv"))


@pytest.mark.slow   # full data set or the main job
def test_malformed_movielens_line(tmp_path, data_dir):
    import shutil

    for name in ("u.item", "u.user", "u.genre"):
        shutil.copy(data_dir / name, tmp_path / name)
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\n22\t377\t1\t878887116\n")
    cat = read_catalog(tmp_path, load_spec(SPECS["movielens"]))
    rec = cat.quarantine.frame()
    assert rec.rule.tolist() == ["malformed_line"] and rec.source.tolist() == ["u.data:2"]
    assert len(clean(cat).events) == 2
