"""``feast ui`` on the repository, looked at in a real headless browser (Debian's chromium driven by
playwright): the page lists our feature views and the feature service; a screenshot is saved.

Needs ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it) and the ``grpcio``
extra of Feast (``feast ui`` imports ``grpc``). Set ``RECFEAST_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.browser import free_port, headless_page, web_server
from tests.conftest import ROOT, make_repo

pytestmark = pytest.mark.slow
PORTS = range(18300, 18400)
VIEWS = ["item_text_embedding", "item_image_embedding", "item_content", "user_profile", "user_behavior",
         "user_sequence_embedding", "user_realtime"]


def test_feast_ui_lists_views_and_service(tmp_path):
    from recfeast import store

    repo = make_repo(tmp_path / "feature_repo")
    store.apply(store.feature_store(repo, "sqlite", "recfeast"))   # the registry is all the UI reads
    port = free_port(PORTS)
    log = tmp_path / "feast_ui.log"
    feast = str(Path(sys.executable).parent / "feast")
    base = f"http://127.0.0.1:{port}"
    with web_server([feast, "ui", "--host", "127.0.0.1", "--port", str(port)], base + "/", log, cwd=repo), \
            headless_page(1400, 1100) as page:
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
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
