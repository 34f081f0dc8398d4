"""One root exception and small subclasses that carry their cause.

Bad *input events* are not exceptions: they are values with a reason that go to the dead-letter
topic (see ``runtime/events.py``). Exceptions here are for things an operator must fix.
"""

from __future__ import annotations

import os
from pathlib import Path


class StreamLSTMError(Exception):
    """Root of every error this package raises on purpose.

    The CLI prints ``error: <message>`` and exits with :attr:`exit_code`; the message must say what
    to fix, and must never contain a secret.
    """

    exit_code = 1


class ConfigError(StreamLSTMError):
    """A flag, environment variable or config-file value is missing or wrong."""

    exit_code = 2


class StackError(StreamLSTMError):
    """The local stack (Apache Kafka broker, Redis) could not be set up, started or stopped."""


class DataError(StreamLSTMError):
    """An input data file is unreadable or does not fit the requested columns."""

    exit_code = 2


class ModelError(StreamLSTMError):
    """A model artifact is missing, malformed, tampered with, or does not fit the data."""

    exit_code = 2


class StateError(StreamLSTMError):
    """The state store (Redis) refused or failed an operation."""


class KafkaClientError(StreamLSTMError):
    """A Kafka client operation failed; ``cause`` holds the underlying ``KafkaError`` if any."""

    def __init__(self, message: str, cause: object | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class PublishError(KafkaClientError):
    """Forecasts or dead letters could not be delivered; offsets must not be committed."""


def read_error(path: Path, e: OSError) -> ModelError:
    """An OS error reading a model file or directory, as an error that says what to check."""
    if isinstance(e, PermissionError):
        return ModelError(
            f"cannot read {path}: permission denied for this process (uid {os.geteuid()}). "
            "The model files must be readable, and the directories above them searchable, by the "
            "user that runs stream-lstm: check their owner and mode (`ls -ld`; `chmod -R a+rX` "
            "lets every user read them)"
        )
    if isinstance(e, IsADirectoryError):
        return ModelError(f"cannot read {path}: it is a directory, not a file")
    return ModelError(f"cannot read {path}: {e.strerror or e}; check the file and its file system")
