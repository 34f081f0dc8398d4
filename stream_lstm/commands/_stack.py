"""Flags and output shared by the commands that run the local stack (``stack``, ``demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from stream_lstm.config import StackSettings, build_settings
from stream_lstm.stack import ComponentStatus, Stack


def add_stack_flags(p: argparse.ArgumentParser, *, redis_cluster: bool = False) -> None:
    """The ``[stack]`` settings as flags; ``redis_cluster``: also the Redis Cluster ones."""
    g = p.add_argument_group("local stack (env STREAM_LSTM_STACK_*, TOML [stack])")
    g.add_argument("--config", type=Path, help="TOML file with a [stack] table")
    g.add_argument("--dir", type=Path, help="run directory: PID files, logs, data")
    g.add_argument("--cache-dir", type=Path, help="where the Kafka jars are cached")
    g.add_argument("--host", help="address to bind (default 127.0.0.1)")
    g.add_argument("--kafka-port", type=int, help="Kafka broker port (default 9092)")
    g.add_argument("--controller-port", type=int, help="KRaft controller port (default 9093)")
    g.add_argument("--redis-port", type=int, help="Redis port (default 6379)")
    g.add_argument("--kafka-heap", help="broker JVM heap, e.g. 512m (default)")
    if redis_cluster:
        g.add_argument(
            "--redis-cluster",
            action="store_true",
            default=None,
            help="also a local Redis Cluster, 3 masters + 3 replicas, next to Kafka and the "
            "single Redis (which stay); `status` shows one row per node with its role and slots, "
            "`down` stops every node (a cluster `up` started is found again without this flag)",
        )
        g.add_argument(
            "--redis-cluster-port",
            type=int,
            metavar="BASE",
            help="with --redis-cluster: nodes on BASE..BASE+5 (created masters BASE..BASE+2), "
            "cluster buses on BASE+10000..BASE+10005 (default 7000)",
        )
        g.add_argument(
            "--schema-registry",
            action="store_true",
            default=None,
            help="also a local Schema Registry (Apicurio Registry 3.0.9 from Maven Central, "
            "fetched once; schemas kept in memory, lost when it stops) for --input-format / "
            "--output-format avro|protobuf|json-schema; its URL for --schema-registry-url is "
            "http://HOST:PORT/apis/ccompat/v7 (`status` and `down` find it without this flag)",
        )
        g.add_argument(
            "--schema-registry-port",
            type=int,
            metavar="PORT",
            help="with --schema-registry: its HTTP port (default 8081)",
        )


def stack_from_args(args: argparse.Namespace) -> Stack:
    s = build_settings(
        StackSettings,
        args.config,
        dir=args.dir,
        cache_dir=args.cache_dir,
        host=args.host,
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        redis_port=args.redis_port,
        kafka_heap=args.kafka_heap,
        redis_cluster=getattr(args, "redis_cluster", None),
        redis_cluster_port=getattr(args, "redis_cluster_port", None),
        schema_registry=getattr(args, "schema_registry", None),
        schema_registry_port=getattr(args, "schema_registry_port", None),
    )
    return Stack(
        s.dir,
        s.cache_dir,
        host=s.host,
        kafka_port=s.kafka_port,
        controller_port=s.controller_port,
        redis_port=s.redis_port,
        kafka_heap=s.kafka_heap,
        redis_cluster_port=s.redis_cluster_port if s.redis_cluster else None,
        registry_port=s.schema_registry_port if s.schema_registry else None,
    )


def print_status(
    stack: Stack, console: Console, parts: list[ComponentStatus] | None = None
) -> None:
    """The status table of ``parts`` (default: asked now)."""
    table = Table(title=f"local stack in {stack.root}")
    for col in ("part", "address"):  # long ones fold rather than end in "…"
        table.add_column(col, overflow="fold")
    for col in ("state", "pid", "RSS"):
        table.add_column(col, no_wrap=True)
    for c in stack.status() if parts is None else parts:
        rss = f"{c.rss_bytes / 2**20:.0f} MiB" if c.rss_bytes else "-"
        table.add_row(c.detail, c.address, c.state, str(c.pid or "-"), rss)
    console.print(table)


# what `stack status --json` prints; the shape is in STATUS_JSON_SHAPE
STATUS_JSON_SHAPE = (
    "--json: one JSON document: {root (run directory), ready (every part ready), parts: [{name "
    "(kafka, redis, redis-cluster, schema-registry), part (the table's text), address, state, "
    "ready, pid, "
    "rss_bytes, role, slots, master_of, cluster_ok}]}; pid and rss_bytes are null for a part "
    "not running (or not ours); role (master, replica, down, fail), slots, master_of and "
    "cluster_ok are set for Redis Cluster nodes only (null otherwise). The exit code is the "
    "same as without --json."
)


def status_json(stack: Stack, parts: list[ComponentStatus]) -> dict[str, Any]:
    """``stack status --json``: the table's rows as fields (see STATUS_JSON_SHAPE)."""
    return {
        "root": str(stack.root),
        "ready": all(c.ready for c in parts),
        "parts": [
            {
                "name": c.name,
                "part": c.detail,
                "address": c.address,
                "state": c.state,
                "ready": c.ready,
                "pid": c.pid,
                "rss_bytes": c.rss_bytes,
                "role": c.role,
                "slots": c.slots,
                "master_of": c.master_of,
                "cluster_ok": c.cluster_ok,
            }
            for c in parts
        ],
    }
