"""Forecast a Kafka topic with a plain confluent-kafka loop and stream-lstm's online forecaster.

Each poll batch of input events goes to ``OnlineForecaster.update_many`` as one tick (one
batched model call for every key in it); each event's forecast is published to the output
topic as JSON (``Forecast.to_dict()``), keyed by the entity key. Rejected events (late,
duplicate, a missing feature, a bad time, ...) are logged on stderr with their reason.

Input events are the stream worker's: a JSON object ``{"key": "m1", "ts": 1704067200000 or
"2024-01-01T00:00:00Z", "values": {"f0": 1.5, "f1": 3.0}}``, keyed in Kafka by the entity key
(so that one key's events stay in one partition, in time order).

Offsets are committed by hand, in this order: the producer is flushed (every forecast so far
is delivered), then the forecaster's states are written to its store, then the offsets are
committed. With ``--store redis://...`` a restart then continues each key from its stored
state; events delivered again after a crash that the stored state already covers are rejected
as late/duplicate, not applied twice. With the default in-memory store a restart starts every
key afresh.

    python examples/kafka_forecaster.py --bootstrap 127.0.0.1:9092 --input events \\
        --output forecasts --model models/pedestrian
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

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
    p.add_argument("--group", default="stream-lstm-example", help="consumer group")
    p.add_argument("--store", default=None, help="state store: memory (default) or a redis:// URL")
    p.add_argument("--batch", type=int, default=1000, help="most events per poll (one tick)")
    p.add_argument("--commit-interval", type=float, default=1.0, help="seconds between commits")
    p.add_argument("--max-events", type=int, default=0, help="stop after N events (0: never)")
    p.add_argument(
        "--idle-timeout", type=float, default=0.0,
        help="stop after this many seconds without a message (0: never)",
    )  # fmt: skip
    return p.parse_args(argv)


def event_of(value: bytes | None, key: bytes | None) -> dict[str, Any] | None:
    """The message as update_many takes it ({"key", "ts", "values"}), None if it is not one."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    if event.get("key") is None and key is not None:
        event["key"] = key.decode(errors="replace")
    return event


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,  # committed below, after the forecasts and states
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    # States are written on flush() only (below, before each commit), never on their own.
    online = sl.load(args.model).online(store=args.store)  # states written by flush() only
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def commit() -> None:
        if producer.flush(30) != 0:
            raise RuntimeError("forecasts not delivered in 30 s")
        online.flush()
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:  # _NO_OFFSET: nothing new to commit
                raise

    consumer.subscribe([args.input])
    seen = forecasts = 0
    last_commit = last_message = time.monotonic()
    try:
        while not stopping and not (args.max_events and seen >= args.max_events):
            want = args.batch if not args.max_events else min(args.batch, args.max_events - seen)
            msgs = consumer.consume(num_messages=want, timeout=0.5)
            now = time.monotonic()
            if not msgs and args.idle_timeout and now - last_message > args.idle_timeout:
                break
            events = []
            for m in msgs:
                if m.error() is not None:
                    print(f"consumer error: {m.error()}", file=sys.stderr)
                    continue
                seen += 1
                last_message = now
                event = event_of(m.value(), m.key())
                if event is None:
                    print(f"rejected: not a JSON event object at {m.offset()}", file=sys.stderr)
                else:
                    events.append(event)
            for result in online.update_many(events):
                if isinstance(result, sl.Forecast):
                    value = json.dumps(result.to_dict(), separators=(",", ":"))
                    producer.produce(args.output, value.encode(), result.key.encode())
                    forecasts += 1
                elif result is not None:  # a Rejected (None: a late event dropped)
                    print(f"rejected: {result}", file=sys.stderr)
            producer.poll(0)
            if now - last_commit >= args.commit_interval:
                commit()
                last_commit = now
        commit()
    finally:
        producer.flush(30)
        online.close()
        consumer.close()
    print(f"{seen} events, {forecasts} forecasts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
