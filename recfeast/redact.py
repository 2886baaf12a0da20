"""Secrets never leave: passwords in connection strings and URLs are replaced by ``***`` in any text
recfeast prints, logs, records or answers with.

Forms covered (Feast's Redis connection string and the usual URL forms):
``host:port,password=SECRET`` / ``passwd=`` / ``pwd=``, ``redis://user:SECRET@host``,
``rediss://:SECRET@host``, ``postgresql://user:SECRET@host/db``, the bare ``SECRET@host:port``, quoted
keys as in JSON or a dict repr (``{"password": "SECRET"}``) and redis-server's ``requirepass SECRET``.
"""

from __future__ import annotations

import re

_RULES = (
    # key=value settings (Feast's ",password=..."), also inside JSON or Python reprs
    # (also quoted, as in JSON or a Python dict repr: {"password": "..."}, {'password': '...'})
    (re.compile(r"(?i)\b(password|passwd|pwd|pass|secret|token|api_key|apikey)(['\"]?\s*[=:]\s*['\"]?)([^,\s'\"}&]+)"),
     r"\1\2***"),
    # redis-server's own option
    (re.compile(r"(?i)(--requirepass\s+|\brequirepass\s+)(\S+)"), r"\1***"),
    # scheme://user:password@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)([^@\s'\"]+)@"), r"\1***@"),
    # bare password@host:port (no scheme)
    # (a model identity ``name@sha256:<hex>`` is not one: the "port" must end the address)
    (re.compile(r"(^|[\s,'\"(=\[])(?![a-zA-Z][a-zA-Z0-9+.-]*://)([^\s@,'\"()=\[\]/]+)@(?!sha256:)"
                r"([A-Za-z0-9_.\-\[\]:]+:\d{1,5})(?!\w|\.\w)"), r"\1***@\3"),
)


def redact(text) -> str:
    """``text`` (any object, ``str()``-ed) with every password-like value replaced by ``***``.

    >>> redact("127.0.0.1:6379,db=0,password=hunter2")
    '127.0.0.1:6379,db=0,password=***'
    >>> redact("redis://alice:hunter2@cache:6379/0")
    'redis://alice:***@cache:6379/0'
    """
    out = str(text)
    for pattern, repl in _RULES:
        out = pattern.sub(repl, out)
    return out
