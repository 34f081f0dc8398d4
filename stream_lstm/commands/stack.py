"""``stream-lstm stack up|down|status``: the local Apache Kafka broker and Redis (and, with
``--redis-cluster``, a local Redis Cluster)."""

from __future__ import annotations

import argparse

from rich.console import Console

from stream_lstm.commands._output import JSON_HELP, write_json
from stream_lstm.commands._stack import (
    STATUS_JSON_SHAPE,
    add_stack_flags,
    print_status,
    stack_from_args,
    status_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="start, stop or inspect the local Apache Kafka broker and Redis",
        description=(
            "Manage the local stack: Apache Kafka (single node, KRaft, jars from Maven Central, "
            "resolved once and cached) and redis-server (Debian package, installed if missing, "
            "append-only persistence on). Processes are recorded and stopped by PID. "
            "--redis-cluster adds a Redis Cluster of 3 masters + 3 replicas from the same "
            "redis-server (formed with `redis-cli --cluster create`), ports BASE..BASE+5 "
            "(--redis-cluster-port, default 7000), its URL redis://host:BASE,host:BASE+1,"
            "host:BASE+2/0; the single Redis keeps running beside it."
        ),
    )
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_, fn in (
        (
            "up",
            "start Kafka and Redis (idempotent: says so if already running); a broker that is "
            "not running starts on a FRESH data directory (topics and offsets gone: "
            "docs/local-stack.md); a Redis that is not running restarts on its append-only "
            "file (its keys come back)",
            _up,
        ),
        ("down", "stop everything by PID (SIGTERM, then SIGKILL after a grace period)", _down),
        (
            "status",
            "report each part (each Redis Cluster node with its role and slots), its address, "
            "PID and RSS; exit code 3 when any part is not ready",
            _status,
        ),
    ):
        a = acts.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=STATUS_JSON_SHAPE if name == "status" else None,
        )
        add_stack_flags(a, redis_cluster=True)
        if name == "status":
            a.add_argument("--json", action="store_true", help=JSON_HELP)
        a.set_defaults(run=fn)


def _up(args: argparse.Namespace) -> int:
    console = Console()
    stack = stack_from_args(args)
    for r in stack.up():
        if r.started:
            console.print(
                f"{r.name}: started at {r.address} (pid {r.pid}), ready in {r.seconds:.2f} s"
            )
        else:
            console.print(f"{r.name}: already running at {r.address} (pid {r.pid})")
    print_status(stack, console)
    return 0


def _down(args: argparse.Namespace) -> int:
    console = Console()
    for name, was_running in stack_from_args(args).down():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    stack = stack_from_args(args)
    parts = stack.status()  # asked once: the exit code agrees with what is printed
    if args.json:
        write_json(status_json(stack, parts))
    else:
        print_status(stack, Console(), parts)
    return 0 if all(c.ready for c in parts) else 3
