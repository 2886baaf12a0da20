"""Known-harmless Feast 0.67 noise, silenced at the source, and one equality fix.

Imported by ``feature_repo/feature_definitions.py`` (so Feast's own CLI, ``feast apply``, gets it) and by
:mod:`recfeast.store` (every recfeast process that touches Feast). :func:`install` is idempotent.

1. **"Updated feature view" on every ``feast apply`` after a load.** Feast's ``FeatureView.__eq__``
   compares ``materialization_intervals``, which a definition file never carries and the registry
   gains on every ``materialize``. So each apply after a load saw all six views as changed, printed
   their data sources' creation timestamps as the "difference", and rewrote them, erasing the tracked
   intervals: the destructive update that Feast's registry meant to skip for unchanged views
   (feast-dev/feast PR #1559, "do not update if feature view has not changed"). Here two views are
   equal when their definitions are, whatever has been loaded; a changed definition is still an update.
2. **"On demand feature view is an experimental feature"** (a ``RuntimeWarning`` on every apply and
   read through ``user_item_similarity``/``user_recency``): the on-demand views here are two numpy
   one-liners, tested value by value against Feast's own answer.
3. **ibis ``DeprecationWarning``s** from the DuckDB offline store: not ours and not actionable.
4. **"serve_features_while_materializing ... typically has no effect"** (``feast.repo_config``'s
   log): it does take effect here (tests/materialize/test_online_refresh.py). recfeast sets the flag
   in :func:`recfeast.store.repo_config`, not in ``feature_store.yaml``, so Feast's CLI, which does not
   serve reads, never prints the notice; the filter covers a yaml that sets it anyway.
"""

from __future__ import annotations

import copy
import logging
import warnings

_INSTALLED = False


class _DropServeWhileMaterializingNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "serve_features_while_materializing" not in record.getMessage()


def filter_warnings() -> None:
    """Install the warning filters of points 2-4 (process-wide, idempotent)."""
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature",
                            category=RuntimeWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ibis(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ibis(\.|$)")
    log = logging.getLogger("feast.repo_config")
    if not any(isinstance(f, _DropServeWhileMaterializingNotice) for f in log.filters):
        log.addFilter(_DropServeWhileMaterializingNotice())


def _definition_eq(orig):
    def __eq__(self, other):
        from feast.feature_view import FeatureView

        if (isinstance(other, FeatureView) and self.materialization_intervals != other.materialization_intervals):
            a, b = copy.copy(self), copy.copy(other)
            a.materialization_intervals, b.materialization_intervals = [], []
            return orig(a, b)
        return orig(self, other)

    __eq__._recfeast = True
    __eq__.__doc__ = "Feast's FeatureView equality, without the loaded intervals (see recfeast.feast_compat)."
    return __eq__


def install() -> None:
    """Apply points 1-4 of the module docstring to this process (idempotent)."""
    global _INSTALLED
    filter_warnings()
    if _INSTALLED:
        return
    from feast.feature_view import FeatureView

    if not getattr(FeatureView.__eq__, "_recfeast", False):
        FeatureView.__eq__ = _definition_eq(FeatureView.__eq__)
    _INSTALLED = True


# ------------------------------------------------------------------ offline store named in feature_store.yaml
# ``feast materialize`` (Feast's CLI) never imports feature_definitions.py, only the registry and the
# yaml; naming this class as the offline store type is how the yaml gets the filters above into it.
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore as _FeastDuckDB  # noqa: E402
from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig as _FeastDuckDBConfig  # noqa: E402


class DuckDBOfflineStoreConfig(_FeastDuckDBConfig):
    """Feast's DuckDB offline store settings, under recfeast's type name (see :class:`DuckDBOfflineStore`)."""

    type: str = "recfeast.feast_compat.DuckDBOfflineStore"


class DuckDBOfflineStore(_FeastDuckDB):
    """Feast's DuckDB offline store, unchanged; importing it (Feast does, from ``feature_store.yaml``'s
    ``offline_store.type``) installs :func:`filter_warnings`, so ``feast materialize`` prints no ibis
    deprecation notices."""


filter_warnings()
