"""JSON that always serialises: for echoing untrusted input back (HTTP error bodies, ``rejected.jsonl``).

Python's ``json`` accepts ``NaN``/``Infinity`` literals and lone UTF-16 surrogates (``"\\ud800"``) on
input, but strict output (``allow_nan=False``, UTF-8) refuses them, and very deep nesting overflows
the encoder's recursion. :func:`json_safe` turns any decoded JSON value into one that strict output
accepts; :func:`dumps` is the strict encoder with that fallback.
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 64
TOO_DEEP = "<nested too deep>"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates: replaced by U+FFFD
        return _SURROGATE.sub("\ufffd", s)


def json_safe(obj, max_depth: int = MAX_DEPTH):
    """A copy of ``obj`` (decoded JSON: dict/list/str/int/float/bool/None, other objects ``str()``-ed)
    that strict JSON output accepts.

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; lone surrogates
    in strings (and keys) become U+FFFD; containers nested deeper than ``max_depth`` become
    ``"<nested too deep>"``. Iterative, so any depth is handled without recursion errors.
    """
    def scalar(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, str):
            return _text(v)
        if v is None or isinstance(v, (bool, int, float)):
            return v
        return _text(str(v))

    if not isinstance(obj, (dict, list, tuple)):
        return scalar(obj)
    root: list = [None]
    stack = [(obj, root, 0, 0)]   # (source, target container, target index/key, depth)
    while stack:
        src, dst, at, depth = stack.pop()
        if isinstance(src, dict):
            if depth >= max_depth:
                dst[at] = TOO_DEEP
                continue
            out: dict | list = {}
            for k, v in src.items():
                key = _text(k) if isinstance(k, str) else scalar(k)
                key = key if isinstance(key, str) else json.dumps(key)
                if isinstance(v, (dict, list, tuple)):
                    out[key] = None
                    stack.append((v, out, key, depth + 1))
                else:
                    out[key] = scalar(v)
            dst[at] = out
        elif isinstance(src, (list, tuple)):
            if depth >= max_depth:
                dst[at] = TOO_DEEP
                continue
            out = [None] * len(src)
            for i, v in enumerate(src):
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, out, i, depth + 1))
                else:
                    out[i] = scalar(v)
            dst[at] = out
        else:
            dst[at] = scalar(src)
    return root[0]


def dumps(obj, **kw) -> str:
    """Strict JSON text of ``obj`` (no bare NaN, valid UTF-8 when encoded): ``json.dumps`` with
    ``allow_nan=False``, falling back to :func:`json_safe` when ``obj`` holds what strict JSON
    cannot say. Keyword arguments go to ``json.dumps`` (``default=str`` unless given)."""
    kw.setdefault("default", str)
    kw["allow_nan"] = False
    try:
        text = json.dumps(obj, **kw)
        text.encode("utf-8")
        return text
    except (ValueError, UnicodeEncodeError, RecursionError, TypeError):
        return json.dumps(json_safe(obj), **kw)
