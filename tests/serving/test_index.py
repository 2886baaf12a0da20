"""The item index answers like exact search and follows the embedding table: changed, new and deleted
items are applied in place; mixed model identities are refused."""

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import DataError, ModelError
from recfeast.serving.index import ItemIndex, latest_item_rows

pytestmark = pytest.mark.slow   # the main job on a slice (encoders)


@pytest.fixture
def table(small_run, tmp_path):
    repo = small_run[0]
    path = tmp_path / "item_text_embedding.parquet"
    pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").to_parquet(path, index=False)
    return path


def _exact(path, q, k):
    rows = latest_item_rows(path, ["text_embedding"])
    m = np.stack(rows.text_embedding.to_numpy())
    sims = m @ q / np.linalg.norm(m, axis=1) / np.linalg.norm(q)
    order = np.argsort(-sims, kind="stable")[:k]
    return rows.item_id.to_numpy()[order], sims[order]


def test_search_matches_exact_search(table):
    ix = ItemIndex(table)
    rows = latest_item_rows(table, ["text_model", "text_embedding"])
    assert len(ix) == len(rows) and ix.dim == 384 and ix.model_id == rows.text_model.iat[0]
    for n in range(0, len(rows), 7):
        q = rows.text_embedding.iat[n]
        ids, sims = ix.search(q, 5)
        want_ids, want_sims = _exact(table, q, 5)
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    ids, _ = ix.search(rows.text_embedding.iat[0], 3, exclude=[rows.item_id.iat[0]])
    assert rows.item_id.iat[0] not in ids and len(ids) == 3
    with pytest.raises(DataError, match="width 5"):
        ix.search(np.ones(5), 3)
    assert ix.refresh() is None  # file unchanged: nothing to do


def test_index_follows_the_table(table):
    ix = ItemIndex(table)
    t = pd.read_parquet(table)
    ids = sorted(t.item_id.unique())
    changed, deleted = ids[0], ids[1]
    other = latest_item_rows(table, ["text_embedding"]).set_index("item_id").text_embedding
    # a newer row for `changed` carrying another item's vector, `deleted` gone, a new item 777777
    new_row = t[t.item_id == changed].iloc[[-1]].copy()
    new_row["created_timestamp"] = new_row.created_timestamp + pd.Timedelta(seconds=5)
    new_row["text_embedding"] = [other[ids[2]]]
    added = t[t.item_id == ids[3]].iloc[[-1]].copy()
    added["item_id"] = 777777
    t2 = pd.concat([t[t.item_id != deleted], new_row, added], ignore_index=True)
    t2.to_parquet(table, index=False)
    out = ix.refresh()
    assert {k: out[k] for k in ("added", "updated", "removed", "rebuilt")} == \
        {"added": 1, "updated": 1, "removed": 1, "rebuilt": False}
    assert len(ix) == len(ids) and ix.version == 2
    found, sims = ix.search(other[ids[2]], 3)
    assert set(found[:2].tolist()) == {changed, ids[2]} and sims[1] > 0.999
    assert deleted not in ix.search(other[deleted], len(ids))[0]
    assert set(ix.search(other[ids[3]], 2)[0].tolist()) == {ids[3], 777777}  # the copy is found too

    # one item moves to another model: two spaces in one table is refused, the index stays as it was
    mixed = t2.copy()
    mixed.loc[mixed.item_id == ids[4], "text_model"] = "other-model@sha256:0123456789ab"
    mixed.to_parquet(table, index=False)
    with pytest.raises(ModelError, match="2 models"):
        ix.refresh()
    assert ix.version == 2 and len(ix) == len(ids)
    # the whole catalog moves: a new index for the new identity
    mixed["text_model"] = "other-model@sha256:0123456789ab"
    mixed.to_parquet(table, index=False)
    out = ix.refresh()
    assert out["rebuilt"] and ix.model_id == "other-model@sha256:0123456789ab" and len(ix) == len(ids)
