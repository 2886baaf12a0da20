"""The ranking checkpoint loads without running code from disk, and only the bytes training wrote."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from recfeast.errors import ModelError
from recfeast.ranking.checkpoint import load_checkpoint, manifest_path, save_checkpoint
from recfeast.ranking.features import FeatureSpec
from recfeast.ranking.model import RankingModel


def _save(path):
    torch.manual_seed(0)
    model = RankingModel(5, {"text_embedding": 8}, (16,), 0.0, 4)
    spec = FeatureSpec(groups=("behavior", "text"), vocab={"gender": ["F", "M"]}, mean={"age": 30.5},
                       std={"age": 10.0}, dims={"text_embedding": 8})
    save_checkpoint(path, model, {"hidden": [16], "dropout": 0.0, "groups": ["behavior", "text"]}, spec,
                    ["user_profile:age"], {"age": {"mean": np.float64(30.5)}}, {"auc": np.float32(0.75)},
                    model_ids={"text_model": ["m@sha256:1"]}, feature_selection={"kept": ["Drama"]})
    return model


def test_roundtrip_rebuilds_the_same_model(tmp_path):
    path = tmp_path / "ranking_model.pt"
    model = _save(path)
    loaded, spec, ckpt = load_checkpoint(path)
    assert spec.vocab == {"gender": ["F", "M"]} and spec.dims == {"text_embedding": 8}
    assert ckpt["features"] == ["user_profile:age"] and ckpt["metrics"]["auc"] == pytest.approx(0.75)
    assert ckpt["embedding_models"] == {"text_model": ["m@sha256:1"]}
    batch = {"dense": torch.ones(3, 5), "text_embedding": torch.ones(3, 8)}
    with torch.inference_mode():
        np.testing.assert_array_equal(model.eval()(batch).numpy(), loaded(batch).numpy())
    meta = json.loads(manifest_path(path).read_text())
    assert meta["tensors"]["bytes"] == path.stat().st_size and len(meta["tensors"]["sha256"]) == 64


def test_changed_bytes_are_refused(tmp_path):
    path = tmp_path / "ranking_model.pt"
    _save(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickle_with_code_is_refused_even_with_a_matching_manifest(tmp_path, monkeypatch):
    """An attacker who can write both files still cannot run code: weights_only=True refuses it."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ranking_model.pt"
    _save(path)
    torch.save({"format": "recfeast-ranking-v2", "state_dict": {}, "x": _Payload()}, path)
    meta = json.loads(manifest_path(path).read_text())
    from recfeast.ranking.checkpoint import file_sha256

    meta["tensors"] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest_path(path).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="weights_only=True"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_old_single_pickle_format_asks_to_retrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ranking_model.pt"
    with open(path, "wb") as f:
        pickle.dump({"config": {}, "state_dict": {}, "x": _Payload()}, f)
    with pytest.raises(ModelError, match="retrain"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_ranker_refuses_a_tampered_checkpoint(tmp_path):
    from recfeast.serving.ranker import Ranker

    path = tmp_path / "ranking_model.pt"
    _save(path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="differs from the manifest"):
        Ranker(path)
