"""``stream-lstm tail``: print forecasts as they arrive; ``stream-lstm topics``: create/list."""

from __future__ import annotations

import argparse
import time
import uuid

from rich.console import Console

from stream_lstm.commands.replay import kafka_option_pairs
from stream_lstm.errors import ConfigError, KafkaClientError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tail",
        help="print forecasts from a topic as they arrive",
        description="Read a forecast topic (from its end by default); one line per forecast.",
        epilog="example: stream-lstm tail --topic forecasts --bootstrap 127.0.0.1:9092",
    )
    p.add_argument("--topic", required=True, help="forecast topic")
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest forecast")
    p.add_argument("--max", type=int, help="exit after this many forecasts")
    p.add_argument("--timeout", type=float, help="exit after this many seconds without a forecast")
    p.add_argument("--steps", type=int, default=6, help="horizon steps to show (default 6)")
    p.add_argument(
        "--kafka-option",
        action="append",
        metavar="KEY=VALUE",
        help="librdkafka setting (repeatable)",
    )
    p.set_defaults(run=run_tail)

    t = sub.add_parser(
        "topics", help="create or list Kafka topics", description="Create or list Kafka topics."
    )
    acts = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = acts.add_parser(
        "create", help="create topics (NAME[:PARTITIONS]; existing ones are left as they are)"
    )
    c.add_argument("topics", nargs="+", metavar="NAME[:PARTITIONS]")
    c.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    c.add_argument(
        "--kafka-option", action="append", metavar="KEY=VALUE", help="librdkafka setting"
    )
    c.set_defaults(run=run_create)
    ls = acts.add_parser("list", help="list topics and their partition counts")
    ls.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    ls.add_argument(
        "--kafka-option", action="append", metavar="KEY=VALUE", help="librdkafka setting"
    )
    ls.set_defaults(run=run_list)


def run_tail(args: argparse.Namespace) -> int:
    import pandas as pd
    from confluent_kafka import KafkaError

    from stream_lstm.events import decode_forecast
    from stream_lstm.kafka import make_consumer

    opts = {
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        **kafka_option_pairs(args.kafka_option),
    }
    c = make_consumer(args.bootstrap, f"stream-lstm-tail-{uuid.uuid4().hex[:8]}", opts)
    c.subscribe([args.topic])
    console = Console()
    seen, last = 0, time.monotonic()
    try:
        while args.max is None or seen < args.max:
            if args.timeout and time.monotonic() - last > args.timeout:
                break
            for m in c.consume(num_messages=500, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        console.print(f"[red]{err}[/red]")
                    continue
                last = time.monotonic()
                try:
                    f = decode_forecast(m.value() or b"")
                except Exception:
                    console.print(
                        f"[yellow]not a forecast at {m.partition()}/{m.offset()}[/yellow]"
                    )
                    continue
                when = pd.Timestamp(f.ts, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")
                for target, vals in f.forecast.items():
                    shown = " ".join(f"{v:.4g}" for v in vals[: args.steps])
                    more = " …" if len(vals) > args.steps else ""
                    head = f"{when} {f.key} {target} [{f.model}] +1..+{len(vals)} {f.interval}"
                    console.print(f"{head}: {shown}{more}")
                seen += 1
                if args.max is not None and seen >= args.max:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return 0


def run_create(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from stream_lstm.kafka import make_admin

    admin = make_admin(args.bootstrap, kafka_option_pairs(args.kafka_option))
    new = []
    for spec in args.topics:
        name, _, parts = spec.partition(":")
        try:
            n = int(parts) if parts else 1
        except ValueError:
            raise ConfigError(f"bad topic spec {spec!r}; use NAME or NAME:PARTITIONS") from None
        new.append(NewTopic(name, num_partitions=n, replication_factor=1))
    console = Console()
    for name, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result(timeout=30)
            console.print(f"created {name}")
        except KafkaException as e:
            err = e.args[0]
            if err.code() == 36:  # TOPIC_ALREADY_EXISTS
                console.print(f"{name} exists")
            else:
                raise KafkaClientError(f"creating {name} failed: {err}", err) from None
    return 0


def run_list(args: argparse.Namespace) -> int:
    from stream_lstm.kafka import make_admin

    md = make_admin(args.bootstrap, kafka_option_pairs(args.kafka_option)).list_topics(timeout=15)
    for name in sorted(md.topics):
        if not name.startswith("__"):
            Console().print(f"{name}\t{len(md.topics[name].partitions)} partition(s)")
    return 0
