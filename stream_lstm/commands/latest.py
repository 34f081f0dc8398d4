"""``stream-lstm latest``: a key's latest forecast, read from the worker's state store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_lstm.commands._state import add_state_flags, where_state_is


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latest",
        help="the latest forecast of one or more keys, from the worker's state in Redis",
        description=(
            "For each KEY, the forecast the worker published after the key's last event whose "
            "state is written (as of the worker's last commit cycle, about a second behind the "
            "stream), computed from the state in Redis with --model: the same numbers as the "
            "output topic's message. Read-only: nothing in Redis changes. A key whose state was "
            "written by another model version is replayed from its stored window (marked "
            "'rebuilt', with the version that wrote it: right only when both models have the same "
            "features). The running worker answers the same query over HTTP: "
            "GET http://<metrics-addr>:<metrics-port>/latest?key=K. Exit code 0 when every key "
            "has state, 1 when one has none (or Redis cannot be read), 2 for bad flags."
        ),
        epilog=(
            "examples: stream-lstm latest sensor-1 --model models/vic_elec; "
            "stream-lstm latest a b c --model models/m --redis redis://10.0.0.5:6379/0 --json"
        ),
    )
    p.add_argument("keys", nargs="+", metavar="KEY", help="entity key(s)")
    p.add_argument("--model", type=Path, required=True, help="the artifact the worker runs")
    add_state_flags(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON document on stdout: {"forecasts": [<forecast message> + rebuilt, events, '
        'state_version], "missing": [keys]}',
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import orjson
    from rich.console import Console
    from rich.table import Table

    from stream_lstm.drivers.queries import latest_json
    from stream_lstm.model.artifact import load_artifact
    from stream_lstm.model.runtime import Forecaster
    from stream_lstm.redact import redact_url
    from stream_lstm.runtime.engine import layout_for
    from stream_lstm.stores.redis import RedisStateStore

    url, namespace = where_state_is(args)
    fc = Forecaster(load_artifact(args.model))
    store = RedisStateStore(url, namespace, layout_for(fc))
    try:
        records = store.peek(list(args.keys))
    finally:
        store.close()
    out = latest_json(fc, list(args.keys), records)
    if args.json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        return 1 if out["missing"] else 0
    console = Console()
    cfg = fc.config
    t = Table(title=f"latest forecasts, model {fc.version}, {redact_url(url)} {namespace}")
    for col in ("key", "time (UTC)", "events", "target", f"h=1..{cfg.horizon}"):
        t.add_column(col)
    import pandas as pd

    for f in out["forecasts"]:
        when = pd.Timestamp(f["ts"], unit="ms", tz="UTC").isoformat()
        for target, values in f["forecast"].items():
            shown = " ".join(f"{v:.4g}" for v in values[:8]) + (" …" if len(values) > 8 else "")
            note = " (rebuilt)" if f["rebuilt"] else ""
            t.add_row(f["key"], when + note, str(f["events"]), target, shown)
    if out["forecasts"]:
        console.print(t)
    for f in out["forecasts"]:
        if f["rebuilt"]:
            console.print(
                f"[yellow]{f['key']}: its state was written by model {f['state_version']}; "
                f"replayed under {fc.version} (right only if both models have the same features, "
                "in the same order)[/yellow]"
            )
    for key in out["missing"]:
        console.print(
            f"[yellow]{key}: no state under model {fc.version} (or the one before it) in "
            f"{namespace}, or a state with another number of features[/yellow]"
        )
    return 1 if out["missing"] else 0
