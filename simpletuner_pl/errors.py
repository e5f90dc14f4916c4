"""Errors that mean "fix your input": the CLI prints their message without a traceback."""


class UserError(Exception):
    """A problem with the user's configuration, data or model source; the message says what to change."""


class ConfigError(UserError, ValueError):
    """An invalid config value or option combination."""


class DataError(UserError):
    """A dataset that cannot be trained on as configured."""


class ModelSourceError(UserError):
    """A model path or hub id that cannot be loaded."""
