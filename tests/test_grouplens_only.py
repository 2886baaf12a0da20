"""The main job on the GroupLens files alone (what `recfeast datasets download movielens-100k` gives:
no TMDB overviews, no posters): it runs end to end, the image view is empty, and lookups work."""

import shutil

import pandas as pd
import pytest

from recfeast.materialize.job import JobConfig, run
from recfeast.serving.sdk import OnlineFeatureClient
from tests.conftest import make_repo, unique_project

pytestmark = pytest.mark.slow   # encodes the full catalog's text


def test_main_job_on_grouplens_files_only(tmp_path, data_dir):
    gl = tmp_path / "ml-100k"
    gl.mkdir()
    for name in ("u.data", "u.item", "u.user", "u.genre", "u.occupation"):
        shutil.copy(data_dir / name, gl / name)
    repo = make_repo(tmp_path / "repo", "movielens")
    project = unique_project()
    summary = run(JobConfig(data_dir=gl, repo=repo, online_store="sqlite", project=project, progress=False))
    t = summary.tables
    assert (t["item_text_embedding"]["rows"], t["item_image_embedding"]["rows"]) == (1682, 0)
    assert (t["user_profile"]["rows"], t["user_sequence_embedding"]["rows"]) == (943, 2515)
    assert t["item_image_embedding"]["loaded_online"] == 0 and t["item_text_embedding"]["loaded_online"] == 1682
    assert summary.quarantine == {"items/empty_description": 1682, "items/image_missing": 1682}
    assert summary.embeddings["image"] == {"computed": 0, "reused": 0}
    texts = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet")
    assert texts["text_embedding"].map(len).eq(384).all()
    feats = OnlineFeatureClient(repo, "sqlite", project=project).get_features(196, [242, 302], 893000000)
    assert not feats.nothing_found
    assert (feats.status["item_text_embedding"] == "found").all()
    assert (feats.status["item_image_embedding"] == "missing").all()
    assert feats.frame["image_embedding"].isna().all()
