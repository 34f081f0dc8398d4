"""Forecast a Kafka topic with a Bytewax dataflow and stream-lstm's online forecaster.

``KafkaSource(input)`` → ``op.flat_map_batch`` (each batch of events that the source hands
over goes to ``OnlineForecaster.update_many`` as one tick: one batched model call for every key
in it; rejected events are logged on stderr) → ``KafkaSink(output)``: each event's forecast as
JSON (``Forecast.to_dict()``), keyed by the entity key. ``op.map`` with ``update`` works too,
one model call per event.

Input events are the stream worker's: a JSON object ``{"key": "m1", "ts": 1704067200000 or
"2024-01-01T00:00:00Z", "values": {"f0": 1.5, "f1": 3.0}}``, keyed in Kafka by the entity key.

Run it with Bytewax's runner (the flow is built by ``get_flow``, from the same arguments)::

    python -m bytewax.run "examples/bytewax_forecaster.py:get_flow('--bootstrap', \\
        '127.0.0.1:9092', '--input', 'events', '--output', 'forecasts', '--model', 'models/ped')"

or directly: ``python examples/bytewax_forecaster.py --bootstrap 127.0.0.1:9092 --input events
--output forecasts --model models/ped`` (one worker). ``--until-end`` stops the dataflow at the
end of the input topic (for tests and batch runs); without it, it follows the topic.

Each worker keeps its own forecaster (state in memory; ``--store redis://host:6379/0`` keeps it
in Redis, where it survives restarts). A Kafka partition is read by one worker, so with events
keyed by entity a key's events all reach the same forecaster, in order. Without Bytewax
recovery (``-r``), every run reads the topic from ``--from`` (the beginning by default).

Runs in the examples' environment (``make examples-env``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import threading
from typing import Any

from bytewax import operators as op
from bytewax.connectors.kafka import (
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.dataflow import Dataflow
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

import stream_lstm as sl


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    p.add_argument("--input", required=True, help="input topic (events)")
    p.add_argument("--output", required=True, help="output topic (forecasts)")
    p.add_argument("--model", required=True, help="model artifact directory")
    p.add_argument("--store", default=None, help="state store: memory (default) or a redis:// URL")
    p.add_argument(
        "--from", dest="start", choices=["beginning", "end"], default="beginning",
        help="where to start reading the input topic",
    )  # fmt: skip
    p.add_argument(
        "--until-end", action="store_true",
        help="stop at the end of the input topic instead of following it",
    )  # fmt: skip
    return p


class Forecasters(threading.local):
    """One online forecaster per Bytewax worker (worker threads do not share one), each
    closed (its states flushed to the store) when the process exits."""

    def __init__(self, model: str, store: str | None) -> None:
        self.model, self.store = model, store
        self.online: sl.OnlineForecaster | None = None

    def get(self) -> sl.OnlineForecaster:
        if self.online is None:
            self.online = sl.load(self.model).online(store=self.store, flush_interval_s=1.0)
            atexit.register(self.online.close)
        return self.online


def get_flow(*argv: str) -> Dataflow:
    """The dataflow for these command-line arguments (see ``--help``)."""
    args = parser().parse_args(list(argv))
    forecasters = Forecasters(args.model, args.store)

    def forecast(batch: list[KafkaSourceMessage]) -> list[KafkaSinkMessage]:
        events: list[dict[str, Any]] = []
        for msg in batch:
            try:
                event = json.loads(msg.value or b"")
            except ValueError:
                event = None
            if not isinstance(event, dict):
                print(f"rejected: not a JSON event object at {msg.offset}", file=sys.stderr)
                continue
            if event.get("key") is None and msg.key is not None:
                event["key"] = msg.key.decode(errors="replace")
            events.append(event)
        out = []
        for result in forecasters.get().update_many(events):
            if isinstance(result, sl.Forecast):
                value = json.dumps(result.to_dict(), separators=(",", ":")).encode()
                out.append(KafkaSinkMessage(result.key.encode(), value))
            elif result is not None:  # a Rejected (None: a late event dropped)
                print(f"rejected: {result}", file=sys.stderr)
        return out

    flow = Dataflow("stream-lstm-forecasts")
    source = KafkaSource(
        [args.bootstrap],
        [args.input],
        tail=not args.until_end,
        starting_offset=OFFSET_BEGINNING if args.start == "beginning" else OFFSET_END,
    )
    messages = op.input("events", flow, source)
    forecasts = op.flat_map_batch("forecast", messages, forecast)
    op.output("forecasts", forecasts, KafkaSink([args.bootstrap], args.output))
    return flow


if __name__ == "__main__":
    from bytewax.run import cli_main

    cli_main(get_flow(*sys.argv[1:]), workers_per_process=1)
