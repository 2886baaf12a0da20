"""Int8 text encoder on the real model and real item texts: contract, agreement, identity, config errors."""

import numpy as np
import pytest
import torch

from recfeast.errors import ConfigError, RecfeastError
from recfeast.encoders.quantized import QuantizationConfig, QuantizedTextEncoder, weight_bytes
from recfeast.entities import item_text

pytestmark = pytest.mark.slow

#: lowest cosine allowed between full and int8 embeddings of one item text. Measured on all 1,682
#: MovieLens item texts (bench/bench_quantized.py): min 0.98 with the default settings, 0.87 with
#: quantize_dynamic's defaults (per-tensor weights, 7-bit activations).
MIN_COSINE = 0.97
MIN_MEAN_COSINE = 0.985


@pytest.fixture(scope="module")
def int8(text_encoder):
    return QuantizedTextEncoder.from_encoder(text_encoder)


@pytest.fixture(scope="module")
def texts50(catalog):
    items = catalog.items.sort_values("item_id").head(50)
    return item_text(items)


def test_contract_shape_dtype_norm_order(int8, texts50):
    emb = int8.encode(texts50[:7], batch_size=3)
    assert emb.shape == (7, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert int8.encode([]).shape == (0, 384)
    assert abs(np.linalg.norm(int8.encode(["space"], normalize=False)) - 1.0) > 1e-3
    # order restored: a permutation in one batch gives the permuted rows
    perm = [3, 0, 6, 2, 5, 1, 4]
    np.testing.assert_allclose(int8.encode([texts50[i] for i in perm], batch_size=7),
                               int8.encode(texts50[:7], batch_size=7)[perm], atol=1e-5)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        int8.encode(["ok", None])


def test_agrees_with_full_model_on_50_items(int8, text_encoder, texts50):
    full, q = text_encoder.encode(texts50), int8.encode(texts50)
    cos = (full * q).sum(1)
    assert cos.min() >= MIN_COSINE and cos.mean() >= MIN_MEAN_COSINE, (cos.min(), cos.mean())
    # the linear layers really run in int8: outputs differ from the full model's
    assert np.abs(full - q).max() > 1e-3
    # one text at a time (the serving case) agrees within the same bound
    alone = np.stack([int8.encode([t], batch_size=1)[0] for t in texts50[:10]])
    assert ((alone * full[:10]).sum(1)).min() >= MIN_COSINE


def test_deterministic_and_full_encoder_untouched(int8, text_encoder, texts50):
    before = text_encoder.encode(texts50[:5])
    again = QuantizedTextEncoder.from_encoder(text_encoder)
    np.testing.assert_array_equal(int8.encode(texts50[:20]), int8.encode(texts50[:20]))
    np.testing.assert_array_equal(again.encode(texts50[:20]), int8.encode(texts50[:20]))
    assert again.model_id == int8.model_id
    np.testing.assert_array_equal(text_encoder.encode(texts50[:5]), before)
    assert isinstance(text_encoder.model.encoder.layer[0].intermediate.dense, torch.nn.Linear)
    assert weight_bytes(int8.model) < 0.7 * weight_bytes(text_encoder.model)


def test_identity_is_distinct_and_carries_the_settings(int8, text_encoder):
    assert int8.model_id.startswith("all-MiniLM-L6-v2-int8@sha256:") and len(int8.model_id) == 41
    assert int8.model_id != text_encoder.model_id and int8.source_model_id == text_encoder.model_id
    other = QuantizedTextEncoder.from_encoder(text_encoder, QuantizationConfig(weight_scheme="per_tensor"))
    assert other.model_id != int8.model_id
    assert int8.config == QuantizationConfig()


@pytest.mark.parametrize("config", [
    QuantizationConfig(dtype="int4"),
    QuantizationConfig(weight_scheme="per_group"),
    QuantizationConfig(engine="tpu"),
    QuantizationConfig(modules=("Conv2d",)),
    QuantizationConfig(modules=("Embedding",)),
    QuantizationConfig(reduce_range="yes"),
])
def test_bad_config_is_refused(text_encoder, config):
    with pytest.raises(ConfigError):
        QuantizedTextEncoder.from_encoder(text_encoder, config)
    with pytest.raises(RecfeastError):  # checked before any model is loaded
        QuantizedTextEncoder(config=config)


def test_refuses_to_requantise(int8):
    with pytest.raises(ConfigError, match="full-precision TextEncoder"):
        QuantizedTextEncoder.from_encoder(int8)
