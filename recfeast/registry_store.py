"""A Feast file registry that readers never see half-written.

Feast 0.67's ``FileRegistryStore`` rewrites ``registry.db`` in place (``open(path, "wb")``): a
process that reads it during a write can parse a truncated file ("Wire format was corrupt",
``FeatureViewNotFoundException``; DESIGN.md fact 10). :class:`AtomicFileRegistryStore` writes the
new registry to a temporary file in the same folder, fsyncs it and renames it over the old one
(``os.replace`` is atomic on POSIX), so a reader opens either the old file or the new one.

Select it in ``feature_store.yaml``::

    registry:
      path: data/registry.db
      registry_store_type: recfeast.registry_store.AtomicFileRegistryStore

Concurrent *writers* still need one lock (a read-modify-write of two writers loses one's update):
recfeast's writers take the repository's ``tables`` lock (:mod:`recfeast.materialize.schedule`).
For several machines use Feast's SQL registry on PostgreSQL (README: "Redis with a password or TLS,
PostgreSQL registry").
"""

from __future__ import annotations

import os
import tempfile
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.utils import _utc_now


class AtomicFileRegistryStore(FileRegistryStore):
    """Feast's ``FileRegistryStore`` with an atomic write (temporary file, fsync, rename)."""

    def _write_registry(self, registry_proto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        folder = self._filepath.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self._filepath.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(registry_proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._filepath)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
