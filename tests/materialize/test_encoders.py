"""Encoders on real models and real items: shapes, dtypes, norms, determinism, order, semantics."""

import numpy as np
import pytest
import torch

from recfeast.errors import ModelError
from recfeast.encoders import ImageEncoder, SequenceEncoder
from recfeast.encoders.sequence import SequenceEncoderConfig
from recfeast.entities import item_text

pytestmark = pytest.mark.slow


def _texts(catalog, ids):
    items = catalog.items.set_index("item_id").loc[ids].reset_index()
    return item_text(items)


def test_text_shape_dtype_norm_and_identity(text_encoder):
    emb = text_encoder.encode(["a", "a much longer text about space battles and rebels", ""])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert text_encoder.model_id.startswith("all-MiniLM-L6-v2@sha256:") and len(text_encoder.model_id) == 36
    assert text_encoder.encode([]).shape == (0, 384)
    raw = text_encoder.encode(["space"], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3  # normalisation is what makes the norm 1


def test_text_order_restored_and_deterministic(text_encoder, catalog):
    texts = _texts(catalog, [1, 50, 72, 172, 181, 267, 300])
    batch = text_encoder.encode(texts, batch_size=3)
    one_by_one = np.stack([text_encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batch, one_by_one, atol=2e-6)
    perm = [3, 0, 6, 2, 5, 1, 4]
    np.testing.assert_allclose(text_encoder.encode([texts[i] for i in perm], batch_size=2), batch[perm], atol=2e-6)
    np.testing.assert_array_equal(text_encoder.encode(texts, batch_size=3), batch)


def test_text_matches_sentence_transformers(text_encoder, catalog):
    from sentence_transformers import SentenceTransformer

    texts = _texts(catalog, [1, 50, 98, 127])
    st = SentenceTransformer(str(text_encoder.path), device="cpu")
    ref = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(text_encoder.encode(texts), ref, atol=1e-5)


def test_text_semantics_star_wars(text_encoder, catalog):
    # 50 Star Wars, 172 The Empire Strikes Back, 181 Return of the Jedi, 1 Toy Story, 98 Silence of the Lambs
    e = dict(zip([50, 172, 181, 1, 98], text_encoder.encode(_texts(catalog, [50, 172, 181, 1, 98]))))
    sequel = e[50] @ e[172]
    assert sequel > e[50] @ e[1] + 0.1 and sequel > e[50] @ e[98] + 0.1
    assert e[172] @ e[181] > e[172] @ e[98]


def test_text_rejects_non_strings(text_encoder):
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        text_encoder.encode(["ok", None])


def test_image_shapes_failures_and_self_similarity(image_encoder, data_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    posters = [data_dir / "posters" / f"{i}.jpg" for i in (50, 172, 1, 98)]
    res = image_encoder.encode([*posters, None, tmp_path / "nope.jpg", bad], batch_size=3)
    assert res.embeddings.shape == (7, 1280) and res.embeddings.dtype == np.float32
    assert res.valid.tolist() == [True] * 4 + [False] * 3
    assert {i: r for i, (r, _) in res.errors.items()} == {4: "image_missing", 5: "image_missing", 6: "image_corrupt"}
    assert "bad.jpg" in res.errors[6][1]
    np.testing.assert_allclose(np.linalg.norm(res.embeddings[:4], axis=1), 1.0, atol=1e-5)
    again = image_encoder.encode(posters[::-1]).embeddings[::-1]
    np.testing.assert_allclose(again, res.embeddings[:4], atol=1e-5)
    sims = again @ res.embeddings[:4].T
    assert (np.argmax(sims, axis=1) == np.arange(4)).all()
    assert np.diag(sims).min() > 0.9999 and (sims - 2 * np.eye(4)).max() < 0.95


def test_image_decode_threads_channels_last_and_bf16_agree_with_the_plain_path(image_encoder, data_dir, tmp_path):
    """The fast options keep the failures, order and float32 values of the plain path (decode in the
    calling thread, NCHW); bf16 is its own identity within cosine 0.99."""
    from recfeast.encoders.text import cpu_has_bf16

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [data_dir / "posters" / f"{i}.jpg" for i in range(1, 12)] + [None, bad]
    plain = ImageEncoder(decode_workers=0, channels_last=False)
    assert plain.model_id == image_encoder.model_id   # the options are not part of the identity
    ref = plain.encode(paths, batch_size=4)
    fast = image_encoder.encode(paths, batch_size=4)   # 2 decode threads, channels-last (defaults)
    assert fast.errors == ref.errors and sorted(ref.errors) == [11, 12]
    np.testing.assert_allclose(fast.embeddings[:11], ref.embeddings[:11], atol=1e-5)
    assert np.isnan(fast.embeddings[11:]).all()
    with pytest.raises(ModelError, match="precision"):
        ImageEncoder(precision="fp16")
    if not cpu_has_bf16():
        pytest.skip("no avx512_bf16/amx_bf16 on this CPU")
    bf = ImageEncoder(precision="bf16")
    assert bf.model_id != plain.model_id and bf.model_id.startswith("efficientnet-lite0@sha256:")
    out = bf.encode(paths, batch_size=4)
    assert out.embeddings.dtype == np.float32 and out.errors == ref.errors
    np.testing.assert_allclose(np.linalg.norm(out.embeddings[:11], axis=1), 1.0, rtol=1e-5)
    assert (out.embeddings[:11] * ref.embeddings[:11]).sum(1).min() >= 0.99


def test_image_model_id_and_missing_resnet_weights(image_encoder, monkeypatch, tmp_path):
    assert image_encoder.model_id.startswith("efficientnet-lite0@sha256:")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # a machine without torchvision's cached weights
    with pytest.raises(ModelError, match="no local weights for resnet18"):
        ImageEncoder("resnet18")
    with pytest.raises(ModelError, match="unknown image backbone"):
        ImageEncoder("vgg16")


def test_resnet_from_local_weights_file(tmp_path, data_dir):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    enc = ImageEncoder("resnet18", weights_path=path)
    res = enc.encode([data_dir / "posters" / "50.jpg"])
    assert enc.dim == 512 and res.embeddings.shape == (1, 512) and res.valid.all()
    assert enc.model_id.startswith("resnet18@sha256:")


def test_sequence_untrained_is_mean_of_history():
    rng = np.random.default_rng(0)
    hist = rng.normal(size=(30, 384)).astype(np.float32)
    enc = SequenceEncoder(SequenceEncoderConfig(max_len=20))
    out = enc.encode([hist, hist[:1], np.zeros((0, 384), np.float32)])
    assert out.shape == (3, 384) and out.dtype == np.float32
    mean = hist[-20:].mean(0)
    np.testing.assert_allclose(out[0], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:2], axis=1), 1.0, atol=1e-6)
    assert not out[2].any()


def test_sequence_seeded_save_load_and_order(tmp_path):
    a, b = SequenceEncoder(), SequenceEncoder()
    assert a.model_id == b.model_id and a.model_id.startswith("sequence-gru@sha256:")
    assert SequenceEncoder(SequenceEncoderConfig(seed=1)).model_id != a.model_id
    lstm = SequenceEncoder(SequenceEncoderConfig(cell="lstm"))
    assert lstm.model_id.startswith("sequence-lstm@")
    torch.nn.init.normal_(a.proj.weight, std=0.1)  # stand-in for training: order now matters
    x = np.random.default_rng(1).normal(size=(5, 384)).astype(np.float32)
    fwd, rev = a.encode([x, x[::-1].copy()])
    assert not np.allclose(fwd, rev, atol=1e-4)
    a.save(tmp_path / "seq.pt")
    back = SequenceEncoder.load(tmp_path / "seq.pt")
    assert back.model_id == a.model_id
    np.testing.assert_array_equal(back.encode([x]), a.encode([x]))
    with pytest.raises(ValueError, match=r"sequences\[0\] has shape \(5, 3\)"):
        a.encode([np.zeros((5, 3), np.float32)])
    with pytest.raises(ModelError, match="expected 'gru' or 'lstm'"):
        SequenceEncoder(SequenceEncoderConfig(cell="rnn"))
