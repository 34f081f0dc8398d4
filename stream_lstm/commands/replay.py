"""``stream-lstm replay``: send a data file to a topic as input events (the load generator)."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream_lstm.commands._data import add_data_flags, data_flags, resolve_series
from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.config import DataSettings, KafkaSettings, build_settings
from stream_lstm.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="send a data file to a Kafka topic as input events",
        description=(
            "Turn each row of a long-form CSV/Parquet file into an input event "
            '{"key", "ts", "values"} keyed by its entity, in time order across keys, optionally '
            "rate-limited and looped (times shift by the file's span on each loop)."
        ),
        epilog="example: stream-lstm replay --dataset pedestrian --topic events --rate 500",
    )
    add_data_flags(p)
    p.add_argument("--topic", required=True, help="topic to produce to")
    p.add_argument(
        "--rate", type=float, default=0.0, help="events per second (default 0: as fast as possible)"
    )
    p.add_argument(
        "--loop", action="store_true", help="repeat the file forever (times keep increasing)"
    )
    p.add_argument("--limit", type=int, help="stop after this many events")
    p.add_argument(
        "--iso", action="store_true", help="send ts as ISO 8601 text instead of epoch ms"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--format",
        choices=("json", "avro", "protobuf", "json-schema"),
        default="json",
        help="send events as JSON (default) or, through a Schema Registry, as Avro, Protobuf "
        "or JSON Schema (the event schema is registered under <topic>-value; docs/formats.md)",
    )
    p.add_argument(
        "--schema-registry-url",
        help="Schema Registry URL for --format avro|protobuf|json-schema "
        "(default: env STREAM_LSTM_SCHEMA_REGISTRY_URL)",
    )
    p.add_argument(
        "--schema-registry-auth",
        metavar="USER:PASSWORD",
        help="HTTP basic auth for the Schema Registry (default: env "
        "STREAM_LSTM_SCHEMA_REGISTRY_AUTH)",
    )
    add_kafka_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.data.loading import load_frame
    from stream_lstm.drivers.kafka_client import KafkaSink
    from stream_lstm.replay import RateLimiter, iter_events

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.rate < 0:
        raise ConfigError(f"--rate must be 0 (as fast as possible) or more, got {args.rate}")
    k = kafka_settings(args, KafkaSettings)
    encode = _encoder(args)
    s = build_settings(DataSettings, None, **data_flags(args))
    path, spec, _ = resolve_series(s)
    frame, report = load_frame(path, spec)
    events = iter_events(
        frame, spec.value_cols, loop=args.loop, iso=args.iso, interval_ms=report.interval_ms
    )
    total = args.limit or (None if args.loop else len(frame))
    if args.limit:
        events = itertools.islice(events, args.limit)
    sink = KafkaSink(k.bootstrap, k.kafka_options)
    limiter = RateLimiter(args.rate)
    console = Console(stderr=True)
    columns = [
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    ]
    sent = 0
    try:
        with Progress(*columns, console=console, disable=args.no_progress) as bar:
            task = bar.add_task("replay", total=total, rate="")
            for ev in events:
                sink.produce(args.topic, ev.key.encode(), encode(ev.value) if encode else ev.value)
                sent += 1
                if sent % 256 == 0:
                    sink.poll()
                    limiter.wait(256)
                    elapsed = bar.tasks[0].elapsed or 1e-9
                    bar.update(task, completed=sent, rate=f"{sent / elapsed:,.0f} ev/s")
            bar.update(task, completed=sent)
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        sink.flush()
    console.print(f"sent {sent} events from {path} to {args.topic}")
    return 0


def _encoder(args: argparse.Namespace) -> Callable[[bytes], bytes] | None:
    """The registry serializer of ``--format`` (None: JSON as it is)."""
    if args.format == "json":
        return None
    import os

    from stream_lstm.drivers.formats import EventSerializer, registry_client, registry_conf

    url = args.schema_registry_url or os.environ.get("STREAM_LSTM_SCHEMA_REGISTRY_URL")
    if not url:
        raise ConfigError(
            f"--format {args.format} needs a Schema Registry: give --schema-registry-url "
            "(or STREAM_LSTM_SCHEMA_REGISTRY_URL)"
        )
    auth = args.schema_registry_auth or os.environ.get("STREAM_LSTM_SCHEMA_REGISTRY_AUTH")
    client = registry_client(registry_conf(url, auth, None))
    return EventSerializer(args.format, client, args.topic)
