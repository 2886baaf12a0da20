"""Sequence encoder training (`recfeast finetune sequence`): metrics on hand-made inputs, the data
preparation on hand-made events, the all-prefix training pass against the encoder's forward, and a
tiny real run on a slice of MovieLens-100k (training lowers validation loss, the checkpoint reloads exactly)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from recfeast.errors import ConfigError, DataError, RecfeastError
from recfeast.encoders.sequence import SequenceEncoder, SequenceEncoderConfig
from recfeast.training.sequence_task import (
    SequenceTrainConfig, Targets, build_sequence_data, cluster_bootstrap, evaluate, history_matrix,
    prefix_outputs, recall_ndcg, split_targets, target_ranks, train_sequence, training_windows)


# --- metrics ---------------------------------------------------------------------------------


def test_target_ranks_known_values():
    scores = np.array([[0.9, 0.5, 0.7, 0.1],
                       [0.9, 0.5, 0.7, 0.1],
                       [0.5, 0.5, 0.5, 0.5],
                       [0.2, 0.3, 0.1, 0.4]])
    targets = np.array([2, 2, 0, 3])
    np.testing.assert_array_equal(target_ranks(scores, targets), [1.0, 1.0, 1.5, 0.0])
    exclude = np.zeros((4, 4), bool)
    exclude[1, 0] = True   # the better item was seen: the target moves to the top
    exclude[2, [0, 1, 2]] = True  # the target itself is never excluded; one tie left
    exclude[3, 3] = True
    np.testing.assert_array_equal(target_ranks(scores, targets, exclude), [1.0, 0.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        target_ranks(scores, np.array([0, 1, 4, 0]))
    with pytest.raises(ValueError):
        target_ranks(scores, targets[:2])


def test_recall_ndcg_known_values():
    recall, ndcg = recall_ndcg(np.array([0.0, 1.0, 9.0, 10.0, 500.0]), k=10)
    np.testing.assert_array_equal(recall, [1, 1, 1, 0, 0])
    np.testing.assert_allclose(ndcg, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])
    recall, ndcg = recall_ndcg(np.array([0.5]), k=1)  # a half tie at the top still counts at K=1
    assert recall[0] == 1.0 and ndcg[0] == pytest.approx(1 / np.log2(2.5))


def test_cluster_bootstrap():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    groups = np.array([7, 7, 8, 8, 9, 9])
    same = cluster_bootstrap(a, a, groups, n=200)
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0], "groups": 3}
    shifted = cluster_bootstrap(a, a - 0.25, groups, n=200)
    assert shifted["diff"] == pytest.approx(0.25) and shifted["ci95"] == pytest.approx([0.25, 0.25])
    # one user carries the whole difference: the interval covers 0 .. the largest resample
    one = cluster_bootstrap(np.array([1.0, 1, 0, 0, 0, 0]), np.zeros(6), groups, n=2000, seed=1)
    assert one["diff"] == pytest.approx(1 / 3)
    assert one["ci95"][0] == 0.0 and one["ci95"][1] == pytest.approx(1.0)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    ({"cell": "transformer"}, "cell"),
    ({"window_stride": 21}, "window_stride"),
    ({"window_stride": 0}, "window_stride"),
    ({"temperature": 0.0}, "temperature"),
    ({"lr": float("nan")}, "lr"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"val_start": "1998-04-01"}, "before test_start"),
    ({"test_start": "not a date"}, "expected dates"),
    ({"max_users": 1}, "max_users"),
    ({"hidden_dim": 2.5}, "hidden_dim"),
    ({"monitor": "auc"}, "monitor"),
])
def test_bad_config_raises_config_error(change, match):
    with pytest.raises(ConfigError, match=match):
        SequenceTrainConfig(**change).validate()
    assert issubclass(ConfigError, RecfeastError)
    SequenceTrainConfig().validate()


def test_train_sequence_validates_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="cell"):
        train_sequence(SequenceTrainConfig(cell="rnn", data_dir=str(tmp_path / "nowhere"), out_dir=str(tmp_path)))


# --- data preparation on hand-made events -------------------------------------------------------


def _ts(*days):
    return pd.to_datetime([f"1998-02-{d:02d}" for d in days], utc=True)


def _items(ids, dim=4, model="m@sha256:0"):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"item_id": ids, "text_embedding": list(rng.normal(size=(len(ids), dim)).astype(np.float32)),
                         "text_model": model})


def test_build_sequence_data_orders_and_indexes():
    events = pd.DataFrame({
        "user_id": [2, 1, 1, 1, 1, 2],
        "item_id": [30, 20, 10, 40, 99, 10],   # 99 has no embedding: dropped
        "event_timestamp": _ts(3, 5, 5, 1, 2, 4),
    })
    data = build_sequence_data(events, _items([40, 10, 20, 30]))
    np.testing.assert_array_equal(data.item_ids, [10, 20, 30, 40])   # rows sorted by item id
    np.testing.assert_array_equal(data.user_ids, [1, 2])
    assert data.dropped_events == 1 and data.item_emb.shape == (4, 4) and data.item_emb.dtype == np.float32
    # user 1: 40 (day 1), then 10 and 20 tied on day 5, ordered by item id
    np.testing.assert_array_equal(data.item_ids[data.seqs[0]], [40, 10, 20])
    np.testing.assert_array_equal(data.item_ids[data.seqs[1]], [30, 10])
    never = np.iinfo(np.int32).max
    np.testing.assert_array_equal(data.first_pos, [[1, 2, never, 0], [1, never, 0, never]])
    assert data.item_model == "m@sha256:0"


def test_build_sequence_data_errors():
    events = pd.DataFrame({"user_id": [1], "item_id": [10], "event_timestamp": _ts(1)})
    with pytest.raises(DataError, match="event_timestamp"):
        build_sequence_data(events.drop(columns="event_timestamp"), _items([10]))
    mixed = pd.concat([_items([10]), _items([20], model="other@sha256:1")])
    with pytest.raises(DataError, match="mixes embedding models"):
        build_sequence_data(events, mixed)
    with pytest.raises(DataError, match="no event"):
        build_sequence_data(events, _items([20]))


def _toy_data(n_items=6, lengths=(7, 3, 12)):
    rows, users, days = [], [], []
    rng = np.random.default_rng(1)
    for u, n in enumerate(lengths):
        items = rng.permutation(n_items * 3)[:n] % n_items + 1  # repeats allowed
        rows += list(items)
        users += [u + 1] * n
        days += list(range(1, n + 1))
    events = pd.DataFrame({"user_id": users, "item_id": rows,
                           "event_timestamp": pd.Timestamp("1998-02-01", tz="UTC") + pd.to_timedelta(days, "D")})
    return build_sequence_data(events, _items(list(range(1, n_items + 1))))


def test_split_targets_by_target_time():
    data = _toy_data()
    splits = split_targets(data, "1998-02-05", "1998-02-08")
    # a user's first rating is never a target; day d is position d - 1 (d = 2..)
    assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == sum(len(s) - 1 for s in data.seqs)
    # position p is on 1998-02-(p + 2): train before the 5th, validation the 5th to the 7th, test from the 8th
    for name, expected in {"train": {1, 2}, "val": {3, 4, 5}, "test": set(range(6, 12))}.items():
        t = splits[name]
        assert set(t.pos.tolist()) == expected, name
        assert (np.diff(t.user) >= 0).all()
    assert splits["test"].user.tolist() == [0] + [2] * 6  # user 1 (3 ratings) has no test target
    idx, lengths = history_matrix(data, splits["test"], max_len=4)
    assert idx.shape == (len(splits["test"]), 4) and (lengths == 4).all()
    first = splits["test"]
    np.testing.assert_array_equal(idx[0], data.seqs[first.user[0]][first.pos[0] - 4:first.pos[0]])


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_training_windows_cover_each_target_once(stride):
    data = _toy_data()
    m, L = len(data.item_ids), 5
    targets = Targets(np.repeat(np.arange(3), [6, 2, 11]),
                      np.concatenate([np.arange(1, 7), np.arange(1, 3), np.arange(1, 12)]))
    win = training_windows(data, targets, L, stride, np.random.default_rng(0))
    seen = []
    for w in range(len(win["idx"])):
        u, s = win["user"][w], win["start"][w]
        for j in np.flatnonzero(win["loss"][w]):
            p = win["tpos"][w, j]
            seen.append((u, p))
            assert p == s + j + 1 and win["target"][w, j] == data.seqs[u][p]
            # inputs up to step j are exactly the items before the target, at least L - stride + 1 of them
            np.testing.assert_array_equal(win["idx"][w, :j + 1], data.seqs[u][s:p])
            assert j + 1 >= min(p, L - stride + 1) and j + 1 <= L
        assert (win["idx"][w, win["loss"][w].nonzero()[0].max() + 1:] == m).all()  # padding after the last target
    assert sorted(seen) == sorted(zip(targets.user.tolist(), targets.pos.tolist()))


# --- the all-prefix pass equals the encoder's forward ---------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_prefix_outputs_equal_forward(cell):
    enc = SequenceEncoder(SequenceEncoderConfig(input_dim=8, hidden_dim=6, cell=cell, max_len=5, seed=3))
    torch.nn.init.normal_(enc.proj.weight)  # a non-zero projection, as after training
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        out = prefix_outputs(enc, x)
        assert out.shape == (4, 5, 8)
        for j in range(5):
            ref = enc(x[:, :j + 1], torch.full((4,), j + 1))
            torch.testing.assert_close(out[:, j], ref, atol=1e-6, rtol=1e-5)


def test_evaluate_untrained_is_mean_of_history_and_last_item():
    data = _toy_data(n_items=6, lengths=(9, 8, 12))
    targets = split_targets(data, "1998-02-04", "1998-02-07")["test"]
    cfg = SequenceTrainConfig(max_len=4, hidden_dim=8)
    enc = SequenceEncoder(SequenceEncoderConfig(input_dim=4, hidden_dim=8, max_len=4))
    res = evaluate(data, targets, {"untrained": enc, "last": "last_item"}, cfg)
    idx, lengths = history_matrix(data, targets, 4)
    emb = data.item_emb / np.linalg.norm(data.item_emb, axis=1, keepdims=True)
    mean = np.stack([data.item_emb[i[:n]].mean(0) for i, n in zip(idx, lengths)])
    tgt = np.array([data.seqs[u][p] for u, p in zip(targets.user, targets.pos)])
    exclude = np.stack([data.first_pos[u] < p for u, p in zip(targets.user, targets.pos)])
    np.testing.assert_array_equal(res["untrained"]["ranks"], target_ranks(mean @ emb.T, tgt, exclude))
    last = emb[idx[np.arange(len(idx)), lengths - 1]]
    np.testing.assert_array_equal(res["last"]["ranks"], target_ranks(last @ emb.T, tgt, exclude))
    assert res["last"]["loss"] is None and res["untrained"]["loss"] > 0


# --- a tiny real run on a slice of MovieLens-100k (slice_items: tests/training/conftest.py) ---


@pytest.mark.slow
def test_train_sequence_on_real_slice(slice_items, data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = SequenceTrainConfig(data_dir=str(data_dir), item_embeddings=str(slice_items), max_users=150,
                              hidden_dim=32, max_epochs=4, patience=4, batch_size=64, temperature=0.1,
                              bootstrap=200, out_dir=str(out), progress=False)
    metrics = train_sequence(cfg, log=lambda *_: None)
    assert metrics["data"]["users"] == 150 and metrics["data"]["items"] == 250
    assert metrics["data"]["dropped_events"] > 0  # ratings of items outside the slice
    assert all(n > 50 for n in metrics["data"]["targets"].values())
    hist = metrics["history"]
    assert hist[0]["epoch"] == 0 and hist[0]["train_loss"] is None and len(hist) == 5
    # training lowers the validation loss below the untrained encoder's
    assert min(h["val_loss"] for h in hist[1:]) < hist[0]["val_loss"] - 0.05
    rows = {r["method"]: r for r in metrics["test"]}
    assert set(rows) == {"untrained", "last_item", "popular", "trained"}
    assert set(metrics["diff"]) == {"trained - untrained", "trained - last_item", "trained - popular"}
    for r in rows.values():
        assert r["events"] == metrics["data"]["targets"]["test"]
        assert 0.0 <= r["ndcg@10"] <= r["recall@10"] <= 1.0
    assert rows["trained"]["loss"] < rows["untrained"]["loss"]
    d = metrics["diff"]["trained - untrained"]["ndcg@10"]
    assert d["diff"] == pytest.approx(rows["trained"]["ndcg@10"] - rows["untrained"]["ndcg@10"])
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    for name in ("sequence_encoder.pt", "metrics.json", "results.md", "training_curve.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text())["model_id"] == metrics["model_id"]

    # the checkpoint alone rebuilds the encoder: same identity, bit-identical outputs
    enc = SequenceEncoder.load(out / "sequence_encoder.pt")
    assert enc.model_id == metrics["model_id"] and enc.model_id.startswith("sequence-gru@sha256:")
    assert enc.config.hidden_dim == 32 and enc.config.input_dim == 384 and enc.config.max_len == 20
    assert enc.proj.weight.abs().sum() > 0  # trained: no longer the mean of the history
    table = pd.read_parquet(slice_items)
    emb = np.stack(table.text_embedding.to_numpy())
    rng = np.random.default_rng(0)
    seqs = [emb[rng.integers(0, len(emb), n)] for n in (1, 5, 20, 37)]
    a = enc.encode(seqs)
    b = SequenceEncoder.load(out / "sequence_encoder.pt").encode(seqs)
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    # and differ from the untrained encoder's
    untrained = SequenceEncoder(enc.config)
    assert not np.allclose(a, untrained.encode(seqs))


@pytest.mark.slow
def test_cli_finetune_sequence(slice_items, data_dir, tmp_path):
    from recfeast.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, [
        "finetune", "sequence", "--data-dir", str(data_dir), "--item-embeddings", str(slice_items),
        "--out-dir", str(out), "--cell", "lstm", "--hidden-dim", "16", "--max-epochs", "1", "--max-users", "60",
        "--quiet"])
    assert res.exit_code == 0, res.output
    assert "trained LSTM" in res.output and "last item" in res.output and "untrained encoder" in res.output
    assert SequenceEncoder.load(out / "sequence_encoder.pt").config.cell == "lstm"
    bad = CliRunner().invoke(main, ["finetune", "sequence", "--data-dir", str(data_dir), "--item-embeddings",
                                    str(slice_items), "--out-dir", str(out), "--window-stride", "30"])
    assert bad.exit_code == 2 and "window_stride=30 must be <= max_len=20" in bad.output
