"""``stream-lstm demo``: the main job end to end on the local stack.

Until the streaming worker lands, the demo brings the stack up, reports its status and stops
what it started.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from stream_lstm.commands.stack import add_stack_flags, print_status, stack_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="bring up the local stack, report it, and stop what was started",
        description=(
            "Run the demo on the local stack (Apache Kafka + Redis). Everything the demo starts "
            "is stopped at the end; parts that were already running are left running."
        ),
    )
    add_stack_flags(p)
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running at the end")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    stack = stack_from_args(args)
    started = []
    try:
        for r in stack.up():
            verb = f"started in {r.seconds:.1f} s" if r.started else "already running"
            console.print(f"{r.name}: {verb} at {r.address} (pid {r.pid})")
            if r.started:
                started.append(r.name)
        print_status(stack, console)
    finally:
        if not args.keep_stack:
            for comp in (stack.kafka, stack.redis):
                if comp.name in started:
                    comp.stop()
                    console.print(f"{comp.name}: stopped")
    return 0
