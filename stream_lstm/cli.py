"""The ``stream-lstm`` command: parse, build, run; exit codes.

Each subcommand lives in ``stream_lstm/commands/<name>.py`` with ``register(subparsers)`` and a
``run(args) -> int``. Those modules import heavy libraries (torch, confluent-kafka) inside
``run`` only, so ``stream-lstm --help`` and ``stream-lstm stack status`` start fast.

Exit codes: 0 success; 1 runtime failure; 2 bad flags, configuration or input files; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

from stream_lstm import __version__
from stream_lstm.errors import StreamLSTMError

COMMANDS = [
    "train",
    "evaluate",
    "predict",
    "latest",
    "models",
    "worker",
    "replay",
    "tail",
    "topics",
    "migrate_state",
    "dashboard",
    "bench",
    "stack",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-lstm",
        description=(
            "Real-time LSTM forecasting on Kafka: per-key (h, c) state in Redis, "
            "one batched inference per tick."
        ),
        epilog="Run `stream-lstm COMMAND --help` for the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"stream-lstm {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f"stream_lstm.commands.{name}").register(sub)
    _accept_log_level_everywhere(parser)
    return parser


def _accept_log_level_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` also after the command (``stream-lstm worker --log-level DEBUG``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "--log-level",
                    default=argparse.SUPPRESS,
                    choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                    help="logging verbosity (default: INFO)",
                )
                _accept_log_level_everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args))
    except StreamLSTMError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
