"""The Kafka connection flags every command that talks to Kafka shares: ``--config``,
``--bootstrap``, ``--kafka-option``, read through :class:`~stream_lstm.config.KafkaSettings`.

Only the flags a user gave are passed on (argparse defaults are None), so the environment and
the TOML file are never shadowed by a default.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from stream_lstm.commands._settings import add_settings_flags
from stream_lstm.config import KafkaSettings, build_settings

K = TypeVar("K", bound=KafkaSettings)

SOURCES = (
    "Each value comes from its flag, else the environment (STREAM_LSTM_BOOTSTRAP, "
    "STREAM_LSTM_KAFKA_OPTIONS, …), else the [worker] table of the --config file (the worker's "
    "own config file serves), else the default."
)


def add_kafka_flags(p: argparse.ArgumentParser, reads: str = "bootstrap and kafka_options") -> None:
    """``--config``, ``--bootstrap`` and ``--kafka-option`` in a group that says where values
    come from; ``reads``: the names this command takes from the TOML table."""
    g = p.add_argument_group("Kafka connection and configuration", SOURCES)
    g.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help=f"TOML file with a [worker] table; this command reads {reads} from it",
    )
    add_settings_flags(g, KafkaSettings)  # --bootstrap, --kafka-option


def kafka_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The given Kafka connection flags as settings (None: not given)."""
    return {"bootstrap": args.bootstrap, "kafka_options": args.kafka_options}


def kafka_settings(args: argparse.Namespace, cls: type[K], **more: Any) -> K:
    """``cls`` (KafkaSettings or a subclass) from the given flags (``more``: the command's own),
    the environment, the --config file and the defaults, in that order."""
    return build_settings(cls, args.config, **kafka_flags(args), **more)
