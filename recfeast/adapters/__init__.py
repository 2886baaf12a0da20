"""Adapters turn a data folder in some layout into the canonical tables of :mod:`..schema`.

:func:`read_catalog` picks the adapter from the folder's contents: MovieLens-100k (``u.data``) or
canonical files (``items``/``users``/``events`` as Parquet or CSV).
"""

from __future__ import annotations

from pathlib import Path

from recfeast.errors import DataError
from recfeast.schema import Catalog


def read_catalog(data_dir: Path) -> Catalog:
    """Read ``data_dir`` with the adapter its layout calls for.

    Raises:
        DataError: the folder matches no known layout, or a required file/column is missing.
    """
    from recfeast.adapters import canonical, movielens

    data_dir = Path(data_dir)
    if (data_dir / "u.data").is_file():
        return movielens.read(data_dir)
    if canonical.looks_canonical(data_dir):
        return canonical.read(data_dir)
    raise DataError(
        f"{data_dir}: unknown layout; expected MovieLens-100k files (u.data, u.item, u.user) or "
        "canonical items/users/events .parquet or .csv files (see recfeast.schema)"
    )
