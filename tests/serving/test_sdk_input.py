"""The SDK refuses malformed lookups with FeatureLookupError before touching the store."""

import pytest

from recfeast.errors import FeatureLookupError
from recfeast.serving.sdk import _as_key


@pytest.mark.parametrize("value", [1.5, "7", True, None, 2**63, [1]])
def test_bad_keys_refused(value):
    with pytest.raises(FeatureLookupError, match="expected an integer|outside the int64 range"):
        _as_key(value, "item_ids[0]")


def test_good_keys():
    import numpy as np

    assert [_as_key(v, "k") for v in (7, np.int64(8), 9.0, -3)] == [7, 8, 9, -3]


@pytest.mark.slow   # full data set or the main job
def test_client_validates_before_reading(small_run):
    from recfeast.serving.sdk import OnlineFeatureClient

    repo, _, project = small_run
    client = OnlineFeatureClient(repo, "sqlite", project=project)
    for args, msg in [((10, "123"), "must be a list"), ((10, 3), "must be a list"), ((10, []), "is empty"),
                      ((10, [1.5]), r"item_ids\[0\]=1.5"), ((10.9, [1]), "user_id=10.9"),
                      ((10, [1], -5), "request_ts=-5")]:
        with pytest.raises(FeatureLookupError, match=msg):
            client.get_features(*args)
