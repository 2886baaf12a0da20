"""Training fixtures shared across modules: the 250 most rated real items embedded with the real
text encoder, and one tiny real text fine-tuning run tracked in its own MLflow database."""

from __future__ import annotations

import os
from unittest import mock

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def slice_items(tmp_path_factory, catalog, text_encoder):
    """The 250 most rated real items, embedded with the real text encoder (the table materialize
    writes: ``item_id`` int64, ``text_embedding`` (384,) float32, ``text_model``); its path."""
    from recfeast.materialize import features as F

    top = catalog.events.item_id.value_counts().index[:250]
    items = catalog.items[catalog.items.item_id.isin(top)].reset_index(drop=True)
    emb = text_encoder.encode(F.item_text(items), 64)
    path = tmp_path_factory.mktemp("seq") / "item_text_embedding.parquet"
    pd.DataFrame({"item_id": items.item_id.astype("int64"), "text_embedding": list(emb),
                  "text_model": text_encoder.model_id}).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def tiny_text_finetune(tmp_path_factory, data_dir):
    """`finetune text` on 40 real items for one epoch (seconds), tracked in MLflow: ``(config,
    result, tracking URI)``. The checkpoint test and the tracking test read the same run."""
    from recfeast import mlflow_store
    from recfeast.training.text_finetune import TextFinetuneConfig, finetune_text

    root = tmp_path_factory.mktemp("text_finetune")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = TextFinetuneConfig(data_dir=str(data_dir), max_items=40, max_epochs=1, pairs_per_epoch=16,
                             pair_batch_size=4, genre_batch_size=8, max_length=32, out_dir=str(root / "ft"))
    with mock.patch.dict(os.environ, {"RECFEAST_TRACKING": "1", mlflow_store.TRACKING_ENV: uri}):
        mlflow_store.ensure_sqlite(root / "mlflow.db")
        res = finetune_text(cfg, log=lambda *_: None)
    return cfg, res, uri
