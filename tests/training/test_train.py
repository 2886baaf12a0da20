"""`recfeast train` end to end on the real slice: training set, model, metrics, checkpoint, plots."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast.cli import main
from recfeast.io import vector_view
from recfeast.training.dataset import load_training_set
from recfeast.ranking.checkpoint import load_checkpoint
from tests.conftest import slice_split_dates

pytestmark = pytest.mark.slow


def test_train_end_to_end_on_slice(small_run, small_data, tmp_path):
    repo, _, project = small_run
    val_start, test_start = slice_split_dates(small_data)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--data-dir", str(small_data[0]), "--repo-path", str(repo), "--out-dir", str(out),
        "--val-start", val_start, "--test-start", test_start, "--max-epochs", "3", "--eval-users", "20",
        "--eval-negatives", "9", "--keep-training-set",
    ], env={"RECFEAST_PROJECT": project})
    assert res.exit_code == 0, res.output
    assert "Protocol:" in res.output and "most popular (as of time)" in res.output and "behavior only" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    variants = [r["variant"] for r in metrics["ablation"]]
    assert variants == ["most popular (as of time)", "behavior only", "+ text", "+ image", "+ sequence", "all"]
    for r in metrics["ablation"]:
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["ndcg@10"] <= r["hr@10"] <= 1.0
        assert r["users"] == metrics["ablation"][0]["users"] and 5 <= r["users"] <= 20
    assert set(metrics["lift_over_behavior_only"]) == {"auc", "ndcg@10", "hr@10"}
    for name in ("training_curves.png", "ablation.png", "ablation.md", "ranking_model.pt", "training_set.parquet",
                 "training_entities.parquet"):
        assert (out / name).stat().st_size > 0, name
    tset, info = load_training_set(out / "training_set.parquet")
    assert info["rows"] == len(tset) and info["feature_service"] == "ranking_v1"
    # the embeddings are float32 (n, d) buffers: text and sequence in the 384-d text space
    assert info["vectors"]["text_embedding"] == info["vectors"]["sequence_embedding"] == 384
    for col, dim in info["vectors"].items():
        matrix, present = vector_view(tset[col])
        assert matrix.dtype == np.float32 and matrix.shape == (len(tset), dim) and present.any(), col
    # the entity rows it was joined from, with the same provenance
    rows, rows_info = load_training_set(out / "training_entities.parquet")
    assert rows_info == info and len(rows) == len(tset)
    assert rows[["user_id", "item_id", "label", "split"]].equals(tset[["user_id", "item_id", "label", "split"]])
    assert info["model_ids"]["text_model"][0].startswith("all-MiniLM-L6-v2@sha256:")
    assert (tset.groupby(["user_id", "event_timestamp"]).label.max() == 1).all()
    # every feature row is from the past of its example
    assert (tset.last_rating_ts.dropna() <= tset.request_ts[tset.last_rating_ts.notna()]).all()
    # the checkpoint alone rebuilds the model and its transform: same predictions as a fresh load
    model, spec, ckpt = load_checkpoint(out / "ranking_model.pt")
    assert tuple(ckpt["config"]["groups"]) == ("behavior", "text", "image", "sequence")
    assert ckpt["features"] == info["features"] and "item_content.popularity" in ckpt["normalization"]
    assert ckpt["embedding_models"] == info["model_ids"] and ckpt["feature_selection"]["genre"]["kept"]
    import torch

    arrays = spec.transform(tset.head(50))
    with torch.inference_mode():
        p1 = torch.sigmoid(model({k: torch.from_numpy(v) for k, v in arrays.items()})).numpy()
    model2, spec2, _ = load_checkpoint(out / "ranking_model.pt")
    with torch.inference_mode():
        p2 = torch.sigmoid(model2({k: torch.from_numpy(v) for k, v in spec2.transform(tset.head(50)).items()})).numpy()
    np.testing.assert_array_equal(p1, p2)
    assert p1.shape == (50,) and ((p1 > 0) & (p1 < 1)).all()


def test_tables_stamp_availability_so_the_default_set_sees_history(small_run):
    """created_timestamp is each value's availability (its event time on a first run), never the run
    time: the default training set, which hides values created after the row, keeps every historical
    row (the old rule stamped the run time and hid them all)."""
    import pyarrow.parquet as pq

    from recfeast.io import CREATED_META

    repo, _, _ = small_run
    for path in sorted((repo / "data" / "tables").glob("*.parquet")):
        if path.stem in ("quarantine", "user_realtime"):
            continue
        t = pd.read_parquet(path)
        assert (t.created_timestamp == pd.to_datetime(t.event_timestamp, utc=True)).all(), path.stem
        assert pq.read_schema(path).metadata[CREATED_META] == b"available", path.stem
