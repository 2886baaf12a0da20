"""``feast ui`` on the repository, looked at in a real headless browser (Debian's chromium driven by
playwright): the page lists our feature views and the feature service; a screenshot is saved.

Needs ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it) and the ``grpcio``
extra of Feast (``feast ui`` imports ``grpc``). Set ``RECFEAST_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_repo

pytestmark = pytest.mark.slow
PORTS = range(18300, 18400)
VIEWS = ["item_text_embedding", "item_image_embedding", "item_content", "user_profile", "user_behavior",
         "user_sequence_embedding", "user_realtime"]


def _chromium() -> str:
    path = os.environ.get("RECFEAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium found: apt-get install -y chromium (or set RECFEAST_CHROMIUM)")
    return path


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail(f"no free port in {PORTS}")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"feast ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"feast ui did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def test_feast_ui_lists_views_and_service(tmp_path):
    from playwright.sync_api import sync_playwright

    from recfeast import store

    repo = make_repo(tmp_path / "feature_repo")
    store.apply(store.feature_store(repo, "sqlite", "recfeast"))   # the registry is all the UI reads
    port = _free_port()
    log = tmp_path / "feast_ui.log"
    feast = str(Path(sys.executable).parent / "feast")
    with open(log, "w") as fh:
        proc = subprocess.Popen([feast, "ui", "--host", "127.0.0.1", "--port", str(port)], cwd=repo,
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/", proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(base + "/p/recfeast/feature-view/", timeout=120_000)
                shot = tmp_path / "feast_ui_feature_views.png"
                try:
                    for name in VIEWS:
                        page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
                    for name in ("user_item_similarity", "user_recency"):   # on-demand: name + "ondemand" badge
                        page.get_by_role("link", name=name).first.wait_for(timeout=30_000)
                finally:
                    page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                page.goto(base + "/p/recfeast/feature-service/", timeout=120_000)
                page.get_by_text("ranking_v1", exact=True).first.wait_for(timeout=120_000)
                page.screenshot(path=str(tmp_path / "feast_ui_feature_services.png"), full_page=True)
                if os.environ.get("RECFEAST_UPDATE_DOCS_SCREENSHOT"):
                    shutil.copy(shot, ROOT / "docs" / "feast_ui_feature_views.png")
            finally:
                browser.close()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
