"""Forecast a Kafka topic with a Quix Streams application and stream-lstm's online forecaster.

``app.dataframe(input)`` → ``.apply(forecast)`` (each event through
``OnlineForecaster.update_many``) → ``.filter`` (rejected events are logged on stderr and
dropped) → ``.to_topic(output)``: each event's forecast as JSON (``Forecast.to_dict()``),
keyed by the entity key.

Input events are the stream worker's: a JSON object ``{"key": "m1", "ts": 1704067200000 or
"2024-01-01T00:00:00Z", "values": {"f0": 1.5, "f1": 3.0}}``, keyed in Kafka by the entity key.

The forecaster keeps each key's state in memory (this process); ``--store redis://host:6379/0``
keeps it in Redis, where it survives restarts. Quix Streams commits offsets on its own
schedule, independently of the forecaster's state writes (every ``flush_interval_s``, 1 s):
after a crash, events that the stored state already covers are rejected as late/duplicate
(never applied twice), but up to a flush interval of a key's events may be missing from its
state. The plain loop (kafka_forecaster.py) ties the two together.

Runs in the examples' environment (``make examples-env``): quixstreams needs an older
confluent-kafka than the project's own environment has.

    python examples/quix_forecaster.py --bootstrap 127.0.0.1:9092 --input events \\
        --output forecasts --model models/pedestrian
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quixstreams import Application

import stream_lstm as sl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    p.add_argument("--input", required=True, help="input topic (events)")
    p.add_argument("--output", required=True, help="output topic (forecasts)")
    p.add_argument("--model", required=True, help="model artifact directory")
    p.add_argument("--group", default="stream-lstm-quix-example", help="consumer group")
    p.add_argument("--store", default=None, help="state store: memory (default) or a redis:// URL")
    p.add_argument(
        "--max-events", type=int, default=0,
        help="stop after N forecasts are published (Application.run(count=N); 0: never)",
    )  # fmt: skip
    p.add_argument(
        "--idle-timeout", type=float, default=0.0,
        help="stop after this many seconds without a message (Application.run(timeout=); 0: never)",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    online = sl.load(args.model).online(store=args.store, flush_interval_s=1.0)

    def forecast(event: Any, key: Any, timestamp: int, headers: Any) -> dict[str, Any] | None:
        if not isinstance(event, dict):
            print(f"rejected: not a JSON event object: {event!r}", file=sys.stderr)
            return None
        if event.get("key") is None and key is not None:
            event = {**event, "key": key.decode() if isinstance(key, bytes) else key}
        (result,) = online.update_many([event])
        if isinstance(result, sl.Forecast):
            return result.to_dict()
        if result is not None:  # a Rejected (None: a late event dropped)
            print(f"rejected: {result}", file=sys.stderr)
        return None

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
    )
    events = app.topic(args.input, value_deserializer="json", key_deserializer="str")
    forecasts = app.topic(args.output, value_serializer="json", key_serializer="str")
    sdf = app.dataframe(events)
    sdf = sdf.apply(forecast, metadata=True).filter(lambda f: f is not None)
    sdf.to_topic(forecasts, key=lambda f: f["key"])
    try:
        app.run(count=args.max_events, timeout=args.idle_timeout, collect=False)
    finally:
        online.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
