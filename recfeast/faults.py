"""Failpoints for crash tests (the idea of FreeBSD's fail(9) and TiKV's fail-rs, in one function).

``RECFEAST_CRASH_AT=<name>`` makes the process kill itself with SIGKILL (no cleanup, no ``finally``,
like a power cut or the OOM killer) when it reaches :func:`point` ``(name)``. Unset, a point costs
one environment lookup. ``tests/materialize/test_crash.py`` uses them to prove that a run killed at
any of them leaves no half-written table and that the rerun ends where a clean run ends.

``RECFEAST_CRASH_AT`` may name several points, comma-separated. With ``RECFEAST_CRASH_ONCE=<prefix>``
as well, only the first process to reach a point dies there (it first creates the file
:func:`once_marker` ``(name)``, atomically); later ones pass. A Ray worker killed this way is
restarted and its batch retried, and the retry goes through (tests/materialize/test_ray_engine.py).
"""

from __future__ import annotations

import os
import signal

ENV = "RECFEAST_CRASH_AT"
ONCE_ENV = "RECFEAST_CRASH_ONCE"


def once_marker(name: str) -> str | None:
    """File whose creation arms the one crash at point ``name`` (``$RECFEAST_CRASH_ONCE-<name>``, with
    ``:`` as ``_``); None without ``$RECFEAST_CRASH_ONCE``."""
    prefix = os.environ.get(ONCE_ENV)
    return f"{prefix}-{name.replace(':', '_')}" if prefix else None


def point(name: str) -> None:
    """Kill this process now if ``$RECFEAST_CRASH_AT`` names ``name`` (once, with ``$RECFEAST_CRASH_ONCE``)."""
    armed = os.environ.get(ENV)
    if armed and name in armed.split(","):
        marker = once_marker(name)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
