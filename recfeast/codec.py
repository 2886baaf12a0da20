"""Decode serialised Feast ``Value`` protos straight into typed numpy columns.

Vectors take a fast path: an ``Array(Float32)`` value is ``0x82 0x01 <len> 0x0a <len> <float32 LE ...>``
on the wire (field 16 ``float_list_val``, a packed ``FloatList``), so the floats are read with
``np.frombuffer`` without building a Python float per element. Anything else (and any vector whose
bytes do not match that shape) goes through ``Value.ParseFromString``. ``tests/serving/test_codec.py``
pins the fast path against the proto parser.
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
    if not all(len(b) == width and b[0] == tag for b in present):
        return None
    out = np.full(len(bufs), np.nan, dtype)
    if present:
        raw = np.frombuffer(b"".join(present), np.uint8).reshape(len(present), width)[:, 1:]
        vals = np.ascontiguousarray(raw).view(fmt)[:, 0]
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
        if hdr is not None and all(len(b) == len(first) and b[:hdr] == first[:hdr] for b in present):
            dim = (len(first) - hdr) // 4
            raw = np.frombuffer(b"".join(present), np.uint8).reshape(len(present), len(first))[:, hdr:]
            vals = np.ascontiguousarray(raw).view("<f4").astype(np.float32, copy=False)
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
