"""The consumer settings every Kafka *reader* the project ships shares: ``stream-lstm tail``,
the dashboard, the demo's live view and the benchmark's readers.

``isolation.level=read_committed``: a reader sees only what committed transactions wrote, so the
forecasts, dead letters and alerts of an aborted transaction are never shown. It is librdkafka's
default too; it is set here so that no reader depends on that default. The worker's own
consumer is configured in ``drivers/kafka_client.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

READER_DEFAULTS: dict[str, str] = {"isolation.level": "read_committed"}


def reader_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A reader's librdkafka options: :data:`READER_DEFAULTS`, each overridden by ``options``
    (the user's pass-through ``--kafka-option`` still win)."""
    return {**READER_DEFAULTS, **(options or {})}
