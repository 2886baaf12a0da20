"""The SDK's byte-level decoding agrees with protobuf's parser and Feast's key encoding, value by value."""

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Value

from recfeast.codec import decode_column, decode_scalar, decode_vector
from recfeast.layout import FLOAT32, FLOAT64, INT64, STRING, entity_key_bytes


@pytest.mark.parametrize("dim", [1, 18, 31, 32, 384, 1280])
def test_vectors_decode_like_protobuf(dim):
    rng = np.random.default_rng(dim)
    vals = rng.standard_normal(dim).astype(np.float32)
    vals[0] = -0.0
    if dim > 3:
        vals[1:4] = [np.inf, -np.inf, 1e-40]  # infinities and a subnormal survive the fast path
    buf = Value(float_list_val=FloatList(val=vals.tolist())).SerializeToString()
    got = decode_vector(buf)
    assert got.dtype == np.float32 and got.shape == (dim,)
    np.testing.assert_array_equal(got.view(np.uint32), vals.view(np.uint32))  # bit for bit


def test_vector_column_mixed_nulls_and_fallbacks():
    a, b = np.arange(4, dtype=np.float32), np.arange(4, 8, dtype=np.float32)
    bufs = [Value(float_list_val=FloatList(val=a.tolist())).SerializeToString(), None, b"",
            Value().SerializeToString(), Value(float_list_val=FloatList(val=[])).SerializeToString(),
            Value(float_list_val=FloatList(val=b.tolist())).SerializeToString(),
            Value(double_list_val=DoubleList(val=[1.0, 2.0, 3.0, 4.0])).SerializeToString()]
    mat, present = decode_column(bufs, "vector", len(bufs))
    assert present.tolist() == [True, False, False, False, False, True, False]
    np.testing.assert_array_equal(mat[0], a)
    np.testing.assert_array_equal(mat[5], b)
    assert np.isnan(mat[[1, 2, 3, 4, 6]]).all() and mat.dtype == np.float32
    # vectors of another width than the first do not pass as the column's
    odd = [bufs[0], Value(float_list_val=FloatList(val=[1.0, 2.0])).SerializeToString()]
    assert decode_column(odd, "vector", 2)[1].tolist() == [True, False]
    assert decode_column([None, None], "vector", 2)[0].shape == (2, 0)


def test_scalars_decode_like_protobuf():
    cases = {
        FLOAT32: [Value(float_val=x) for x in (0.0, -1.5, 3.25, float("inf"))],
        FLOAT64: [Value(double_val=x) for x in (0.0, -1e300, 2.5)],
        INT64: [Value(int64_val=x) for x in (0, 1, -1, 2**63 - 1, -(2**63), 881252305)],
        STRING: [Value(string_val=x) for x in ("", "M", "45-49", "Amélie ✓")],
    }
    for kind, values in cases.items():
        bufs = [v.SerializeToString() for v in values] + [None, Value().SerializeToString()]
        want = [getattr(v, v.WhichOneof("val")) for v in values]
        assert [decode_scalar(b, kind) for b in bufs] == want + [None, None], kind
        col = decode_column(bufs, kind, len(bufs))
        if kind == INT64:
            assert col[0].tolist()[:len(want)] == want and col[1].tolist() == [False] * len(want) + [True, True]
        elif kind == STRING:
            assert col == want + [None, None]
        else:
            np.testing.assert_array_equal(col[:len(want)], np.array(want, col.dtype))
            assert np.isnan(col[-2:]).all() and col.dtype == (np.float32 if kind == FLOAT32 else np.float64)
    # a value of another type than declared still decodes (through the proto parser)
    assert decode_column([Value(int64_val=3).SerializeToString()], FLOAT32, 1).tolist() == [3.0]


@pytest.mark.parametrize("value", [0, 1, 196, -5, 2**63 - 1, -(2**63)])
def test_entity_keys_match_feast(value):
    for jk in ("user_id", "item_id"):
        want = serialize_entity_key(EntityKey(join_keys=[jk], entity_values=[Value(int64_val=value)]), 3)
        assert entity_key_bytes(jk, value) == want
