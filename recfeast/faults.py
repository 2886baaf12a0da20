"""Failpoints for crash tests (the idea of FreeBSD's fail(9) and TiKV's fail-rs, in one function).

``RECFEAST_CRASH_AT=<name>`` makes the process kill itself with SIGKILL (no cleanup, no ``finally``,
like a power cut or the OOM killer) when it reaches :func:`point` ``(name)``. Unset, a point costs
one environment lookup. ``tests/materialize/test_crash.py`` uses them to prove that a run killed at
any of them leaves no half-written table and that the rerun ends where a clean run ends.
"""

from __future__ import annotations

import os
import signal

ENV = "RECFEAST_CRASH_AT"


def point(name: str) -> None:
    """Kill this process now if ``$RECFEAST_CRASH_AT`` equals ``name``."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
