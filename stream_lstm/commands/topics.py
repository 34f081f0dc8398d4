"""``stream-lstm topics``: create or list Kafka topics."""

from __future__ import annotations

import argparse

from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.config import KafkaSettings
from stream_lstm.errors import ConfigError, KafkaClientError


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "topics", help="create or list Kafka topics", description="Create or list Kafka topics."
    )
    acts = t.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = acts.add_parser(
        "create",
        help="create topics (NAME[:PARTITIONS]; existing ones are left as they are)",
        description="Create topics (NAME[:PARTITIONS], 1 partition by default); existing ones "
        "are left as they are.",
        epilog="example: stream-lstm topics create events:8 forecasts:8 events-dlq:1",
    )
    c.add_argument("topics", nargs="+", metavar="NAME[:PARTITIONS]")
    add_kafka_flags(c)
    c.set_defaults(run=run_create)
    ls = acts.add_parser(
        "list",
        help="list topics and their partition counts",
        description="List the topics (not the internal ones) and their partition counts.",
    )
    add_kafka_flags(ls)
    ls.set_defaults(run=run_list)


def run_create(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    from stream_lstm.drivers.kafka_client import cluster_metadata, make_admin

    new = []
    for spec in args.topics:
        name, _, parts = spec.partition(":")
        n = int(parts) if parts.isdigit() and parts.isascii() else 0 if parts else 1
        if not name or n < 1:
            raise ConfigError(
                f"bad topic spec {spec!r}; use NAME or NAME:PARTITIONS (PARTITIONS at least 1)"
            )
        new.append(NewTopic(name, num_partitions=n, replication_factor=1))
    k = kafka_settings(args, KafkaSettings)
    cluster_metadata(k.bootstrap, k.kafka_options)  # unreachable, refused: a clear error first
    admin = make_admin(k.bootstrap, k.kafka_options)
    for name, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result(timeout=30)
            print(f"created {name}")
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                print(f"{name} exists")
            else:
                raise KafkaClientError(
                    f"creating {name} on {k.bootstrap} failed: {err.str()}", err
                ) from None
    return 0


def run_list(args: argparse.Namespace) -> int:
    from stream_lstm.drivers.kafka_client import cluster_metadata

    k = kafka_settings(args, KafkaSettings)
    md = cluster_metadata(k.bootstrap, k.kafka_options)
    for name in sorted(md.topics):
        if not name.startswith("__"):
            print(f"{name}\t{len(md.topics[name].partitions)} partition(s)")
    return 0
