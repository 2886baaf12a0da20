"""Adapters turn a data folder into the tables :mod:`recfeast.cleaning` validates, as a catalog spec says.

:func:`read_catalog` uses the spec's ``adapter`` when it names one (``movielens-100k``: the raw GroupLens
files plus the optional TMDB enrichment), else the generic file reader (:mod:`.files`) over the spec's
``source`` entries. A new catalog needs a spec, and only an adapter when its files cannot be described
by sources (e.g. fixed-width or multi-file joins).
"""

from __future__ import annotations

from pathlib import Path

from recfeast.errors import ConfigError
from recfeast.schema import Catalog

ADAPTERS = ("movielens-100k",)


def default_spec():
    """The catalog spec of the feature repository in use (``<repo>/catalog.yaml``).

    Raises:
        ConfigError: no repository or no spec in it.
    """
    from recfeast import config
    from recfeast.spec import load_spec, spec_path

    return load_spec(spec_path(config.repo_path()))


def read_catalog(data_dir: Path, spec=None) -> Catalog:
    """Read ``data_dir`` as ``spec`` says (default: :func:`default_spec`).

    Raises:
        ConfigError: the spec names an unknown adapter. DataError: a file or a column is missing.
    """
    from recfeast.adapters import files, movielens

    spec = spec or default_spec()
    data_dir = Path(data_dir)
    if spec.adapter is None:
        return files.read(data_dir, spec)
    if spec.adapter == "movielens-100k":
        cat = movielens.read(data_dir)
        cat.spec = spec
        return cat
    raise ConfigError(f"catalog spec {spec.name!r}: unknown adapter {spec.adapter!r}; expected one of {ADAPTERS} "
                      "or no adapter (files read from items/users/events source entries)")
