"""Incremental re-embedding (cache keyed by model identity and input hash), the model registry,
and promotion / roll-back of a text encoder version without mixing embedding spaces."""

import json
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recfeast.errors import ConfigError
from recfeast import model_registry as registry, store
from recfeast.materialize.job import JobConfig, run
from recfeast.materialize.rollout import promote, project_for
from tests.conftest import drop_online, make_repo, unique_project
from tests.materialize.test_online_refresh import _write

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def variant_model(tmp_path_factory):
    """A second version of the text encoder: MiniLM with one bias nudged (another identity, another
    embedding space), saved as a transformers folder the way `recfeast finetune text` saves one."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from recfeast.encoders.text import default_model_path

    src = default_model_path()
    out = tmp_path_factory.mktemp("variant") / "model"
    model = AutoModel.from_pretrained(str(src), local_files_only=True)
    with torch.no_grad():
        model.encoder.layer[5].output.dense.bias.add_(0.05)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(out))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    (out / "finetune.json").write_text(json.dumps({"config": {"name": "minilm-variant"}, "metrics": {"after": {"x": 1}},
                                                   "lineage": {"base_model_id": "test"}}))
    return out


def _small(tmp_path, data_dir):
    data = tmp_path / "data"
    data.mkdir()
    _write(data, data_dir)
    return data


def _text_table(repo):
    return pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").set_index("item_id")


def test_reembedding_is_incremental_per_input_and_per_model(tmp_path, data_dir, variant_model):
    data = _small(tmp_path, data_dir)
    repo = make_repo(tmp_path / "repo")
    cfg = dict(data_dir=data, repo=repo, apply=False, progress=False)
    first = run(JobConfig(**cfg))
    n_items, n_images = first.tables["item_text_embedding"]["rows"], first.tables["item_image_embedding"]["rows"]
    assert first.embeddings == {"text": {"computed": n_items, "reused": 0},
                                "image": {"computed": n_images, "reused": 0}}
    assert run(JobConfig(**cfg)).embeddings == {"text": {"computed": 0, "reused": n_items},
                                                "image": {"computed": 0, "reused": n_images}}
    before = _text_table(repo)

    items = pd.read_parquet(data / "items.parquet")
    items.loc[items.item_id == 50, "description"] = "A farm boy joins a rebellion against a galactic empire."
    poster = tmp_path / "edited_poster.jpg"
    Image.open(items.loc[items.item_id == 1, "image_path"].iat[0]).rotate(90).save(poster)
    items.loc[items.item_id == 1, "image_path"] = str(poster)
    items.to_parquet(data / "items.parquet", index=False)
    edited = run(JobConfig(**cfg))
    assert edited.embeddings == {"text": {"computed": 1, "reused": n_items - 1},
                                 "image": {"computed": 1, "reused": n_images - 1}}
    after = _text_table(repo)
    changed = [i for i in after.index if not np.array_equal(after.text_embedding[i], before.text_embedding[i])]
    assert changed == [50]

    entry = registry.register(repo, "text", variant_model)
    new = run(JobConfig(**cfg, text_model=entry["model_id"]))
    assert new.embeddings["text"] == {"computed": n_items, "reused": 0} and new.embeddings["image"]["computed"] == 0
    assert set(_text_table(repo).text_model) == {entry["model_id"]}
    assert run(JobConfig(**cfg, text_model=entry["model_id"])).embeddings["text"]["computed"] == 0
    back = run(JobConfig(**cfg, text_model="default"))             # the first version's cache is still there
    assert back.embeddings["text"] == {"computed": 0, "reused": n_items}
    assert set(_text_table(repo).text_model) == {first.models["text"]}


def test_registry_records_identity_metrics_lineage(tmp_path, variant_model):
    repo = make_repo(tmp_path / "repo")
    e = registry.register(repo, "text", variant_model)
    assert e["model_id"].startswith("minilm-variant@sha256:") and e["metrics"] == {"after": {"x": 1}}
    assert e["lineage"] == {"base_model_id": "test"}
    stored = registry.artefact_path(repo, e)
    assert (stored / "config.json").is_file() and registry.identity_of("text", stored, e["name"]) == e["model_id"]
    assert registry.register(repo, "text", variant_model) == e                 # idempotent
    assert len(registry.load(repo)["models"]) == 1
    assert registry.production(repo, "text") is None                             # registering is not promoting
    with pytest.raises(ConfigError, match="registered: \\['minilm-variant"):
        registry.entry(repo, "text", "nope@sha256:000000000000")
    with pytest.raises(ConfigError, match="kind"):
        registry.register(repo, "image", variant_model)
    (registry.models_dir(repo) / registry.REGISTRY).write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        registry.load(repo)


def test_promote_switches_projects_without_mixing_and_rolls_back(tmp_path, data_dir, variant_model, monkeypatch):
    from recfeast.serving.sdk import OnlineFeatureClient

    data = _small(tmp_path, data_dir)
    repo = make_repo(tmp_path / "repo")
    base = unique_project()
    monkeypatch.setenv("RECFEAST_PROJECT", base)
    run(JobConfig(data_dir=data, repo=repo, online_store="sqlite", progress=False))
    old_id = _text_table(repo).text_model.iat[0]
    items = _text_table(repo).index.tolist()
    new_id = registry.register(repo, "text", variant_model)["model_id"]
    new_project = project_for(base, new_id, None)
    stores = []
    try:
        old_client = OnlineFeatureClient(repo, "sqlite", project=base)       # a server started before the switch
        seen, errors, stop = [], [], threading.Event()

        def keep_reading():
            while not stop.is_set():
                try:
                    seen.extend(set(old_client.get_features(1, items).frame.text_model))
                except Exception as exc:  # any failure is a test failure
                    errors.append(exc)
                time.sleep(0.02)

        reader = threading.Thread(target=keep_reading)
        reader.start()
        try:
            res = promote(repo, data, text=new_id, online_stores=("sqlite", "redis"), log=lambda *_: None)
        finally:
            stop.set()
            reader.join()
        stores = [store.feature_store(repo, k, new_project) for k in ("sqlite", "redis")]
        assert res["serving_project"] == new_project and res["production"] == {"text": new_id, "sequence": None}
        assert errors == [] and len(seen) > 0 and set(seen) == {old_id}        # old server: answered, one space
        assert set(_text_table(repo).text_model) == {new_id}                  # offline: one space
        for kind in ("sqlite", "redis"):
            frame = OnlineFeatureClient(repo, kind, project=new_project).get_features(1, items).frame
            assert set(frame.text_model) == {new_id}                           # new project: one space
        assert registry.serving_project(repo) == new_project and registry.production(repo, "text")["model_id"] == new_id

        back = promote(repo, data, text="default", online_stores=("sqlite",), log=lambda *_: None)
        assert back["serving_project"] == base and back["embeddings"]["text"]["computed"] == 0
        assert set(OnlineFeatureClient(repo, "sqlite", project=base).get_features(1, items).frame.text_model) == {old_id}
        hist = registry.load(repo)["history"]
        assert [h["to"]["serving_project"] for h in hist] == [new_project, base]
        with pytest.raises(ConfigError, match="no text model"):
            promote(repo, data, text="unknown@sha256:000000000000", log=lambda *_: None)
    finally:
        for fs in stores + [store.feature_store(repo, "sqlite", base)]:
            drop_online(fs)


def test_damaged_cache_is_rebuilt_and_a_bad_registry_is_refused(tmp_path, variant_model):
    from recfeast.materialize.embedding_cache import EmbeddingCache, cache_path

    cache_path(tmp_path, "m@sha256:1").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        cache = EmbeddingCache(tmp_path, "m@sha256:1", 4)
    assert cache.lookup("x") is None
    cache.add(["x"], np.ones((1, 4), np.float32))
    assert cache.save() == 1 and EmbeddingCache(tmp_path, "m@sha256:1", 4).lookup("x").tolist() == [1.0] * 4
    repo = make_repo(tmp_path / "repo")
    registry.models_dir(repo).mkdir(parents=True)
    for bad in ("{}", "[]", "null", '{"models": [{"kind": "text"}], "production": {}}'):
        (registry.models_dir(repo) / registry.REGISTRY).write_text(bad)
        with pytest.raises(ConfigError, match="expected"):
            registry.load(repo)
    (registry.models_dir(repo) / registry.REGISTRY).unlink()
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(variant_model, no_tok, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special_tokens*"))
    from recfeast.errors import ModelError

    with pytest.raises(ModelError, match="no tokenizer"):
        registry.register(repo, "text", no_tok)
