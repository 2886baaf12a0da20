"""bf16 text encoding: its own model identity, embeddings within cosine 0.99 of float32; the setting
is read in one place and validated."""

import numpy as np
import pytest

from recfeast import config
from recfeast.errors import ConfigError


@pytest.mark.parametrize("kind", ["text", "image"])
def test_encoder_precision_setting(monkeypatch, kind):
    var = f"RECFEAST_{kind.upper()}_PRECISION"
    monkeypatch.delenv(var, raising=False)
    assert config.encoder_precision(kind) == "fp32"
    monkeypatch.setenv(var, "BF16")
    assert config.encoder_precision(kind) == "bf16"
    assert config.encoder_precision(kind, "fp32") == "fp32"
    monkeypatch.setenv(var, "fp16")
    with pytest.raises(ConfigError, match=f"{var}='fp16'"):
        config.encoder_precision(kind)


@pytest.mark.slow
def test_bf16_encoder_agrees_with_fp32_under_its_own_identity(text_encoder, monkeypatch, tmp_path):
    from recfeast import model_registry
    from recfeast.encoders.text import TextEncoder, cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("no avx512_bf16/amx_bf16 on this CPU")
    bf = TextEncoder(precision="bf16")
    assert bf.model_id != text_encoder.model_id and bf.model_id.startswith("all-MiniLM-L6-v2@")
    texts = ["Star Wars (1977). A long time ago in a galaxy far, far away.", "", "Toy Story", "ü" * 300]
    a, b = text_encoder.encode(texts), bf.encode(texts)
    assert b.dtype == np.float32 and b.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert (a * b).sum(1).min() >= 0.99
    monkeypatch.setenv("RECFEAST_TEXT_PRECISION", "bf16")
    assert model_registry.text_encoder(tmp_path).model_id == bf.model_id  # the main job's encoder
