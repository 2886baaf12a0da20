"""Shared setup of the headless-browser UI tests (``feast ui``, ``mlflow server``): a free local port,
a web server started as a subprocess and waited for, and Debian's chromium driven by playwright (no
browser download; ``apt-get install -y chromium``, which ``.ci/run`` does). ``$RECFEAST_CHROMIUM``
names another binary."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

#: chromium's flags for a container: no sandbox (root), no GPU, /tmp instead of a small /dev/shm
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """The chromium binary: ``$RECFEAST_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH, else None."""
    return os.environ.get("RECFEAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def free_port(ports: range) -> int:
    """The first port of ``ports`` that 127.0.0.1 can bind now; fails the test when none can."""
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail(f"no free port in {ports}")


@contextlib.contextmanager
def web_server(cmd: list[str], url: str, log: Path, cwd: Path | None = None,
               timeout: float = 240) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` (stdout and stderr to ``log``) until ``url`` answers 200, yield the process, then
    stop it: SIGTERM to its process group (killed after 30 s). Fails the test, with the log's tail,
    when the process exits first or ``url`` does not answer within ``timeout`` seconds.

    The whole group, because ``mlflow server`` runs its web server as a child: SIGTERM to the parent
    alone took 26 s to stop both, to the group 2 s (measured)."""
    name = Path(cmd[0]).name
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"{name} did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def headless_page(width: int, height: int) -> Iterator:
    """A playwright page of ``width`` x ``height`` pixels in headless chromium; the browser is closed
    afterwards. Fails the test when no chromium is installed."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if not exe:
        pytest.fail("no chromium found: apt-get install -y chromium (or set RECFEAST_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
