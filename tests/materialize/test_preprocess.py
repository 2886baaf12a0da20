import numpy as np
import pandas as pd
import pytest

from recfeast.errors import DataError
from recfeast.preprocess import apply_normalizer, fit_normalizer, select_columns


def test_zscore_roundtrip_and_imputation():
    stats = fit_normalizer(pd.Series([1.0, 2.0, 3.0, np.nan]), "zscore", "x")
    assert stats == {"method": "zscore", "median": 2.0, "mean": 2.0, "std": pytest.approx(np.sqrt(2 / 3)),
                     "fitted_on": 3}
    y = apply_normalizer([1.0, 3.0, None], stats)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-1.2247449, 1.2247449, 0.0], rtol=1e-6)


def test_minmax_and_constant_input():
    stats = fit_normalizer(pd.Series([0, 5, 10]), "minmax", "x")
    np.testing.assert_allclose(apply_normalizer([0, 5, 10, 20], stats), [0, 0.5, 1, 2])
    const = fit_normalizer(pd.Series([4.0, 4.0]), "zscore", "c")
    assert const["std"] == 1.0


def test_bad_method_and_empty():
    with pytest.raises(DataError, match="'x': unknown method 'log'"):
        fit_normalizer(pd.Series([1.0]), "log", "x")
    empty = fit_normalizer(pd.Series([np.nan, None]), "zscore", "x")  # an optional column left out
    assert empty["fitted_on"] == 0 and apply_normalizer([np.nan, 3.0], empty).tolist() == [0.0, 3.0]


@pytest.mark.slow   # full data set or the main job
def test_select_columns_real_genres(catalog):
    from recfeast.entities import genre_matrix

    genres = ["unknown", "Action", "Documentary", "Fantasy"]
    frame = pd.DataFrame(genre_matrix(catalog.items, genres), columns=genres)
    kept, dropped = select_columns(frame, 0.995)
    assert kept == ["Action", "Documentary", "Fantasy"]  # Fantasy: 22 of 1682 items (1.3%) stays
    assert list(dropped) == ["unknown"] and "near-constant" in dropped["unknown"] and "99.88%" in dropped["unknown"]
    _, dropped_const = select_columns(pd.DataFrame({"c": [1, 1, 1]}))
    assert dropped_const["c"].startswith("constant")
