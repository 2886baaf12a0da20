"""Decode serialised Feast ``Value`` protos straight into typed numpy columns.

Vectors take a fast path: an ``Array(Float32)`` value is ``0x82 0x01 <len> 0x0a <len> <float32 LE ...>``
on the wire (field 16 ``float_list_val``, a packed ``FloatList``), so the floats are read with
``np.frombuffer`` without building a Python float per element. Anything else (and any vector whose
bytes do not match that shape) goes through ``Value.ParseFromString``. ``tests/serving/test_codec.py``
pins the fast path against the proto parser.

The encoder side (:func:`encode_column`, :func:`encode_timestamps`) writes the bytes Feast 0.67's
materialize writes (``python_values_to_proto_values`` then ``SerializeToString``) for whole Arrow
columns at once: fixed-width floats, int64, strings and equal-length ``Array(Float32)`` vectors
take vectorised paths (a null or NaN scalar is the empty ``Value()``, as in Feast); any other type
or shape goes through Feast's own converter. ``tests/materialize/test_online_writer.py`` pins both
against Feast.
"""

from __future__ import annotations

import numpy as np

from recfeast.layout import FLOAT32, FLOAT64, INT64, LIST, STRING, VECTOR

_FLOAT_LIST_TAG = b"\x82\x01"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7


def _parse(buf: bytes):
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value()
    v.ParseFromString(buf)
    return v


def _vector_header(buf: bytes) -> int | None:
    """Bytes before the floats when ``buf`` is exactly a non-empty packed ``float_list_val``; else None."""
    if buf[:2] != _FLOAT_LIST_TAG:
        return None
    outer, pos = _varint(buf, 2)
    if pos + outer != len(buf) or outer == 0 or buf[pos] != 0x0A:
        return None
    inner, start = _varint(buf, pos + 1)
    return start if start + inner == len(buf) and inner % 4 == 0 and inner else None


def decode_vector(buf: bytes | None) -> np.ndarray | None:
    """A serialised ``Value`` holding ``float_list_val`` -> ``(d,)`` float32 (read-only view of
    ``buf``); ``None`` for a null value, no value, or an empty list."""
    if not buf:
        return None
    hdr = _vector_header(buf)
    if hdr is not None:
        return np.frombuffer(buf, "<f4", (len(buf) - hdr) // 4, hdr)
    v = _parse(buf)
    if v.WhichOneof("val") != "float_list_val" or not len(v.float_list_val.val):
        return None
    return np.array(v.float_list_val.val, np.float32)


def decode_scalar(buf: bytes | None, kind: str):
    """A serialised scalar ``Value`` -> Python float/int/str, or ``None`` for null/absent."""
    if not buf:
        return None
    tag = buf[0]
    if tag == 0x20 and kind == INT64:  # int64_val, varint (negatives are 10 bytes, two's complement)
        v, pos = _varint(buf, 1)
        if pos == len(buf):
            return v - (1 << 64) if v >= 1 << 63 else v
    elif tag == 0x12 and kind == STRING:  # string_val
        n, pos = _varint(buf, 1)
        if pos + n == len(buf):
            return buf[pos:].decode("utf-8")
    v = _parse(buf)
    which = v.WhichOneof("val")
    if which is None or which == "null_val":
        return None
    return getattr(v, which)


_FIXED = {FLOAT32: (0x35, "<f4", 5, np.float32), FLOAT64: (0x29, "<f8", 9, np.float64)}


def _fixed_width(bufs: list, kind: str) -> np.ndarray | None:
    """Float32/Float64 column in one ``np.frombuffer`` when every value is null or the plain
    ``float_val``/``double_val`` encoding (tag byte + little-endian value); else None."""
    tag, fmt, width, dtype = _FIXED[kind]
    present = [b for b in bufs if b]
    if present and set(map(len, present)) != {width}:
        return None
    out = np.full(len(bufs), np.nan, dtype)
    if present:
        raw = np.frombuffer(b"".join(present), np.uint8).reshape(len(present), width)
        if not (raw[:, 0] == tag).all():
            return None
        vals = np.ascontiguousarray(raw[:, 1:]).view(fmt)[:, 0]
        if len(present) == len(bufs):
            return vals.astype(dtype)
        out[[i for i, b in enumerate(bufs) if b]] = vals
    return out


def decode_vectors(bufs: list) -> tuple[np.ndarray, np.ndarray]:
    """A column of serialised ``float_list_val`` values -> (``(m, d)`` float32 with NaN rows where
    null, ``(m,)`` bool present). Equal-length vectors with the same header (the usual case) are
    sliced out of one buffer; others are decoded one by one. Vectors whose length differs from
    the first one's count as absent (``(m, 0)`` when there is none)."""
    present = [b for b in bufs if b]
    if present:
        first = present[0]
        hdr = _vector_header(first)
        raw = None
        if hdr is not None and set(map(len, present)) == {len(first)}:
            raw = np.frombuffer(b"".join(present), np.uint8).reshape(len(present), len(first))
            if not (raw[:, :hdr] == raw[0, :hdr]).all():   # same header bytes: same shape of value
                raw = None
        if raw is not None:
            dim = (len(first) - hdr) // 4
            vals = np.ascontiguousarray(raw[:, hdr:]).view("<f4").astype(np.float32, copy=False)
            mask = np.array([bool(b) for b in bufs], bool)
            if mask.all():
                return vals, mask
            out = np.full((len(bufs), dim), np.nan, np.float32)
            out[mask] = vals
            return out, mask
    vecs = [decode_vector(b) for b in bufs]
    dim = next((len(v) for v in vecs if v is not None), 0)
    mask = np.array([v is not None and len(v) == dim for v in vecs], bool)
    out = np.full((len(bufs), dim), np.nan, np.float32)
    for k in np.flatnonzero(mask):
        out[k] = vecs[k]
    return out, mask


def decode_column(bufs: list, kind: str, n: int):
    """``n`` serialised values of one feature -> a typed column.

    Returns:
        VECTOR: ``((n, d) float32 with NaN rows, (n,) bool present)``; FLOAT32/FLOAT64: ``(n,)``
        float array with NaN for nulls; INT64: ``(values (n,) int64, null mask (n,) bool)``;
        STRING: list of str/None; LIST: list of lists/None.
    """
    if kind == VECTOR:
        return decode_vectors(bufs)
    if kind == LIST:
        return decode_lists(bufs)
    if kind in _FIXED:
        fast = _fixed_width(bufs, kind)
        if fast is not None:
            return fast
    if kind in (INT64, STRING):   # few distinct values per column (counts, model ids): decode each once
        once = {b: decode_scalar(b, kind) for b in set(bufs)}
        vals = [once[b] for b in bufs]
    else:
        vals = [decode_scalar(b, kind) for b in bufs]
    if kind in (FLOAT32, FLOAT64):
        return np.array([np.nan if v is None else v for v in vals], np.float32 if kind == FLOAT32 else np.float64)
    if kind == INT64:
        mask = np.array([v is None for v in vals], bool)
        return np.array([0 if v is None else v for v in vals], np.int64), mask
    if kind == STRING:
        return [None if v is None else str(v) for v in vals]
    raise ValueError(kind)


def decode_lists(bufs: list) -> list:
    """Serialised ``Value`` protos holding any ``*_list_val`` -> Python lists (``[]`` kept), None for
    absent or null values (tags as ``list[str]``, ``Array(Int64)`` as ``list[int]``...)."""
    from feast.protos.feast.types.Value_pb2 import Value

    out = []
    for b in bufs:
        if b is None:
            out.append(None)
            continue
        v = Value()
        v.ParseFromString(b)
        which = v.WhichOneof("val")
        out.append(None if which is None or which == "null_val" or not which.endswith("_list_val")
                   else list(getattr(v, which).val))
    return out


def decode_int64_list(buf: bytes | None) -> list[int] | None:
    """A serialised ``Value`` holding ``int64_list_val`` -> list of ints; ``None`` for null/absent
    (:func:`decode_lists` for one value)."""
    return decode_lists([buf or None])[0]
# ------------------------------------------------------------------ encoding (the writer's side)
_TAG_FLOAT, _TAG_DOUBLE, _TAG_INT64, _TAG_STRING = 0x35, 0x29, 0x20, 0x12


def _uvarint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _fixed_bytes(vals: np.ndarray, tag: int, fmt: str) -> list[bytes]:
    """Tag byte + little-endian value per element; NaN -> ``b""`` (Feast writes ``Value()``)."""
    vals = np.ascontiguousarray(vals, fmt)
    size = vals.dtype.itemsize
    buf = np.empty((len(vals), size + 1), np.uint8)
    buf[:, 0] = tag
    buf[:, 1:] = vals.view(np.uint8).reshape(-1, size)
    raw, w = buf.tobytes(), size + 1
    out = [raw[i:i + w] for i in range(0, len(raw), w)]
    for k in np.flatnonzero(np.isnan(vals)):
        out[k] = b""
    return out


def _vector_bytes(arr) -> list[bytes] | None:
    """Packed ``float_list_val`` bytes of a list<float> Arrow array whose non-null rows all have the
    same length and no null elements; None when that does not hold. Null rows -> ``b""``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return None
    if not pa.types.is_floating(t.value_type):
        return None
    flat = pc.list_flatten(arr)
    if flat.null_count:
        return None
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    valid = ~np.isnan(lengths) if lengths.dtype.kind == "f" else np.ones(len(arr), bool)
    lens = lengths[valid].astype(np.int64)
    if not len(lens):
        return [b""] * len(arr)
    dim = int(lens[0])
    if (lens != dim).any():
        return None
    mat = flat.to_numpy(zero_copy_only=False).astype("<f4", copy=False).reshape(len(lens), dim)
    inner = 4 * dim
    hdr = b"\x82\x01" + _uvarint(1 + len(_uvarint(inner)) + inner if dim else 0)
    hdr += (b"\x0a" + _uvarint(inner)) if dim else b""
    w = len(hdr) + inner
    buf = np.empty((len(lens), w), np.uint8)
    buf[:, :len(hdr)] = np.frombuffer(hdr, np.uint8)
    buf[:, len(hdr):] = np.ascontiguousarray(mat).view(np.uint8).reshape(len(lens), inner)
    raw = buf.tobytes()
    rows = [raw[i:i + w] for i in range(0, len(raw), w)]
    if len(rows) == len(arr):
        return rows
    out, it = [b""] * len(arr), iter(rows)
    for k in np.flatnonzero(valid):
        out[k] = next(it)
    return out


def _feast_encode(arr, value_type) -> list:
    """Feast's own conversion of one column (the exact call its materialize makes) -> protos."""
    from feast.type_map import python_values_to_proto_values

    return python_values_to_proto_values(arr.to_numpy(zero_copy_only=False), value_type)


def encode_column(arr, value_type, texts: bool = False) -> tuple[list[bytes], list | None]:
    """Serialise one Arrow column of a feature as Feast's materialize would.

    Args:
        arr: ``pyarrow.Array`` (one chunk) of ``n`` values.
        value_type: the feature's Feast ``ValueType`` (``Field.dtype.to_value_type()``).
        texts: also return SQLite's ``value_text`` column (Feast's ``extract_text_and_num``).

    Returns:
        ``(n serialised Value protos, n value_text strings/None or None when not asked)``.
    """
    import pyarrow as pa
    from feast.value_type import ValueType as VT

    t, out, vals = arr.type, None, None
    if value_type in (VT.FLOAT, VT.DOUBLE) and (pa.types.is_floating(t) or pa.types.is_integer(t)):
        fmt = "<f4" if value_type == VT.FLOAT else "<f8"
        vals = arr.to_numpy(zero_copy_only=False).astype(fmt)
        out = _fixed_bytes(vals, _TAG_FLOAT if value_type == VT.FLOAT else _TAG_DOUBLE, fmt)
        if texts:
            return out, [None if b == b"" else str(v) for b, v in zip(out, vals.astype(np.float64).tolist())]
        return out, None
    if value_type == VT.INT64 and pa.types.is_integer(t) and not arr.null_count:
        vals = arr.to_numpy(zero_copy_only=False).tolist()
        cache: dict = {}
        out = []
        for v in vals:
            b = cache.get(v)
            if b is None:
                b = cache[v] = bytes((_TAG_INT64,)) + _uvarint(v)
            out.append(b)
        return out, ([str(v) for v in vals] if texts else None)
    if value_type == VT.STRING and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        vals = arr.to_pylist()
        cache = {None: b""}  # model ids and labels repeat
        out = []
        for v in vals:
            b = cache.get(v)
            if b is None:
                e = v.encode("utf-8")
                b = cache[v] = bytes((_TAG_STRING,)) + _uvarint(len(e)) + e
            out.append(b)
        return out, (list(vals) if texts else None)
    if value_type == VT.FLOAT_LIST:
        out = _vector_bytes(arr)
        if out is not None:
            return out, ([None] * len(out) if texts else None)
    protos = _feast_encode(arr, value_type)
    out = [p.SerializeToString() for p in protos]
    if texts:
        from feast.infra.online_stores.helpers import extract_text_and_num

        return out, [extract_text_and_num(p, False)[0] for p in protos]
    return out, None


def encode_timestamps(us: np.ndarray) -> list[bytes]:
    """Serialised ``google.protobuf.Timestamp`` of each UTC time in microseconds since the epoch
    (Feast's ``Timestamp.FromDatetime`` of the row's event time: whole seconds floor, nanos >= 0)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    us = np.asarray(us, np.int64)
    uniq, inv = np.unique(us, return_inverse=True)
    enc = [Timestamp(seconds=s, nanos=n * 1000).SerializeToString()
           for s, n in zip((uniq // 1_000_000).tolist(), (uniq % 1_000_000).tolist())]
    return [enc[i] for i in inv.tolist()]
