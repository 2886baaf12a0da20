"""An online store that was never loaded is reported as such: `recfeast lookup` exits 1 with a hint,
the SDK warns (EmptyResultWarning). Feast apply only: no model, no data."""

import pytest
from click.testing import CliRunner

from recfeast import store
from recfeast.cli import main
from recfeast.errors import EmptyResultWarning
from recfeast.serving.sdk import OnlineFeatureClient
from tests.conftest import make_repo, unique_project

pytestmark = pytest.mark.slow   # runs Feast apply (seconds idle, minutes on a busy machine)


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("empty_repo"))
    project = unique_project()
    store.apply(store.feature_store(repo, "sqlite", project))   # registry and tables, no rows
    return repo, project


def test_sdk_warns_on_a_never_loaded_store(empty_repo):
    repo, project = empty_repo
    client = OnlineFeatureClient(repo, "sqlite", project=project)
    with pytest.warns(EmptyResultWarning, match="never loaded"):
        feats = client.get_features(196, [242, 302])
    assert feats.nothing_found and (feats.status[["user_profile", "item_text_embedding"]] == "missing").all().all()


def test_lookup_exits_1_with_a_hint(empty_repo, monkeypatch):
    repo, project = empty_repo
    monkeypatch.setenv("RECFEAST_PROJECT", project)
    out = CliRunner().invoke(main, ["lookup", "--user", "196", "--items", "242,302", "--repo-path", str(repo),
                                    "--online-store", "sqlite"])
    assert out.exit_code == 1, out.output
    assert '"feature_service": "ranking_v1"' in out.output      # the JSON is still printed
    assert "error: nothing found for user 196" in out.output and "recfeast materialize" in out.output
