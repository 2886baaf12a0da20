"""The one exception hierarchy of recfeast.

Every error recfeast raises on purpose derives from :class:`RecfeastError`, so callers can catch the
family with one ``except``. Messages name the file, row or field at fault and what was expected.
"""


class RecfeastError(Exception):
    """Base class of every error raised by recfeast on purpose.

    ``str()`` of every recfeast error is redacted (:func:`recfeast.redact.redact`): a message that
    quotes a connection string or a library error holding one never shows the password, wherever it
    is printed, logged, recorded or returned.
    """

    def __str__(self) -> str:
        from recfeast.redact import redact

        return redact(super().__str__())


class ConfigError(RecfeastError):
    """A setting, path or environment variable is missing or has an unusable value."""


class DataError(RecfeastError):
    """Input data cannot be used at all (missing file, missing column, wrong layout).

    Individual bad rows are never raised: they go to the quarantine table with a reason.
    """


class ModelError(RecfeastError):
    """A model's weights or configuration cannot be found or loaded."""


class StoreError(RecfeastError):
    """The feature store (registry, offline or online store) refused an operation."""


class FeatureLookupError(RecfeastError):
    """An online lookup was asked for something malformed (e.g. no items)."""


class EmptyResultWarning(RuntimeWarning):
    """An online read found no value at all for any entity asked (warned, not raised): the online
    store is empty, was never loaded (``recfeast materialize``), or is another project's."""
