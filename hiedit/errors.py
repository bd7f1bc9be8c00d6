"""Exceptions whose messages name the file, record, key or module at fault."""


class HiEditError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(HiEditError):
    """A configuration value is missing or invalid (the message names the key)."""


class DataError(HiEditError):
    """A dataset record is malformed (the message names the file, record index and field)."""


class ModelError(HiEditError):
    """A model or its profile does not match what the configuration expects."""


class NonFiniteError(HiEditError):
    """A NaN or inf appeared in an update or a loss (the message names the step and module)."""


class CheckpointMismatchError(HiEditError):
    """A checkpoint was written under a different configuration (the message lists the keys)."""
