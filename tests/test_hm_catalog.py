"""A second real catalog from its spec alone: the H&M sample (purchases with prices, 64-hex string
customer ids, date-only times, photos for a tenth of the items), read as published."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast.cli import main
from tests.conftest import ROOT, make_repo, unique_project

pytestmark = pytest.mark.slow
HM_DIR = ROOT.parent / "shared" / "data" / "hm-sample"


@pytest.fixture(scope="module")
def hm_repo(tmp_path_factory):
    if not (HM_DIR / "transactions_sample.parquet").is_file():
        pytest.fail(f"H&M sample not found at {HM_DIR}")
    repo = make_repo(tmp_path_factory.mktemp("hm") / "feature_repo", "hm")
    project = unique_project()
    res = CliRunner().invoke(main, ["materialize", "--data-dir", str(HM_DIR), "--repo-path", str(repo),
                                    "--online-store", "sqlite", "--quiet"], env={"RECFEAST_PROJECT": project})
    assert res.exit_code == 0, res.output
    return repo, project, res.output


def test_tables_from_the_spec(hm_repo):
    repo, _, output = hm_repo
    t = repo / "data" / "tables"
    text = pd.read_parquet(t / "item_text_embedding.parquet")
    assert len(text) == 1000 and np.stack(text.text_embedding).shape == (1000, 384)
    assert len(pd.read_parquet(t / "item_image_embedding.parquet")) == 100       # 100 photos shipped
    behavior = pd.read_parquet(t / "user_behavior.parquet")
    assert behavior.user_id.map(type).eq(str).all() and behavior.user_id.str.fullmatch("[0-9a-f]{64}").all()
    latest = behavior.sort_values("event_timestamp").groupby("user_id").tail(1)
    assert latest.purchase_count_total.sum() == 5000                          # every purchase, repeats kept
    assert {"avg_price_30d", "last_purchase_ts", "colour_share", "product_group_share"} <= set(behavior.columns)
    content = pd.read_parquet(t / "item_content.parquet")
    assert content.groupby("item_id").purchase_count.max().sum() == 5000
    q = pd.read_parquet(t / "quarantine.parquet")
    assert q.groupby("rule").size().to_dict() == {"empty_detail_desc": 4, "image_missing": 900}
    assert "user_realtime" not in output          # string ids: no pushed real-time view


def test_feast_sees_string_entities(hm_repo):
    from recfeast import store

    repo, project, _ = hm_repo
    os.environ["RECFEAST_PROJECT"] = project
    try:
        fs = store.feature_store(repo, "sqlite")
        cust = pd.read_parquet(repo / "data" / "tables" / "user_profile.parquet").user_id.iat[0]
        out = fs.get_online_features(["user_profile:age", "user_behavior:purchase_count_total"],
                                     [{"user_id": cust}]).to_dict()
    finally:
        os.environ.pop("RECFEAST_PROJECT", None)
    assert out["user_id"] == [cust] and out["age"][0] is not None and out["purchase_count_total"][0] >= 1
