"""Where the worker keeps its state, for the commands that read it (``migrate-state``,
``latest``): the worker's own ``redis``, ``namespace`` and ``group`` settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from stream_lstm.config import NonEmpty, Settings, WorkerSettings, build_settings
from stream_lstm.errors import ConfigError


class StateStoreSettings(Settings):
    """Where the worker keeps its state: the worker's own ``redis``, ``namespace`` and ``group``
    settings (same flags, ``STREAM_LSTM_*`` variables and ``[worker]`` table; other names in that
    table are ignored here)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="STREAM_LSTM_")
    toml_section: ClassVar[str] = "worker"

    redis: SecretStr = WorkerSettings.model_fields["redis"].default
    group: NonEmpty = WorkerSettings.model_fields["group"].default
    namespace: NonEmpty | None = None

    @property
    def state_namespace(self) -> str:
        return self.namespace or f"slstm:{self.group}"


def add_state_flags(p: argparse.ArgumentParser) -> None:
    """--config, --redis, --namespace | --group: the worker's settings of the same names."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="TOML file with a [worker] table; this command reads redis, namespace and group",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL, any form the worker takes: one node, cluster seed nodes, "
        "redis+sentinel://… (default: the worker's, redis://127.0.0.1:6379/0)",
    )
    ns = p.add_mutually_exclusive_group()
    ns.add_argument(
        "--namespace", metavar="NS", help="the worker's --namespace (default slstm:<group>)"
    )
    ns.add_argument(
        "--group",
        metavar="G",
        help="the worker's consumer group: namespace slstm:G (default stream-lstm)",
    )


def where_state_is(args: argparse.Namespace) -> tuple[str, str]:
    """The Redis URL and the namespace: --redis, else the worker's setting; --group or
    --namespace, else the worker's (its namespace, else slstm:<its group>)."""
    s = build_settings(StateStoreSettings, args.config, redis=args.redis)
    if args.group is not None:
        if not args.group:
            raise ConfigError("--group must not be empty")
        namespace = f"slstm:{args.group}"
    elif args.namespace is not None:
        if not args.namespace:
            raise ConfigError("--namespace must not be empty")
        namespace = args.namespace
    else:
        namespace = s.state_namespace
    if "{" in namespace or "}" in namespace:
        raise ConfigError(
            f"--namespace {namespace!r}: braces are reserved for the Redis Cluster hash tag"
        )
    return s.redis.get_secret_value(), namespace
