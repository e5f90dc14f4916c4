"""Errors that mean "fix your input": the CLI prints their message without a traceback."""


class UserError(Exception):
    """A problem with the user's configuration, data or model source; the message says what to change."""


class ConfigError(UserError, ValueError):
    """An invalid config value or option combination."""


class DataError(UserError):
    """A dataset that cannot be trained on as configured."""


class ModelSourceError(UserError):
    """A model path or hub id that cannot be loaded."""


class Interrupted(Exception):
    """Training stopped by a signal (SIGTERM, Ctrl-C) after saving a checkpoint; the CLI exits with 128 + signal."""

    def __init__(self, signal_name: str, exit_code: int, checkpoint: str):
        super().__init__(f"{signal_name}: stopped after saving {checkpoint}; run the same command again to resume")
        self.signal_name, self.exit_code, self.checkpoint = signal_name, exit_code, checkpoint
