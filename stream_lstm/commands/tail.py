"""``stream-lstm tail``: print forecasts as they arrive."""

from __future__ import annotations

import argparse
import time
import uuid

from rich.console import Console

from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.commands._output import JSON_HELP, stdout_closed, write_json
from stream_lstm.config import KafkaSettings
from stream_lstm.errors import ConfigError, KafkaClientError

# while messages that are not forecasts keep arriving, say how many so far this often
NOT_FORECAST_REPORT_S = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tail",
        help="print forecasts from a topic as they arrive",
        description=(
            "Read a forecast topic (from its end by default; all partitions, without joining a "
            "consumer group) and print one line per forecast target (--json: one JSON object "
            "per forecast message). A message that is not a "
            "forecast is shown once (the first, with its partition and offset, on stderr) and "
            "then counted; the count is printed at the end and every "
            f"{NOT_FORECAST_REPORT_S:.0f} s while more arrive. A missing topic exits with 2."
        ),
        epilog=(
            "--json: JSON Lines on stdout, one object per forecast message (not per target), "
            "flushed per line: the decoded forecast as published (key, ts in epoch ms, model, "
            "interval, interval_ms, forecast: {TARGET: [every horizon step, full precision]}, "
            "partition and offset of the source event, quantiles when the model has them) "
            "plus kafka: {topic, partition, offset, timestamp (epoch ms, null if none)} "
            "locating the forecast message itself; --steps does not apply. Messages that are "
            "not forecasts are reported on stderr as without --json. "
            "example: stream-lstm tail --topic forecasts --bootstrap 127.0.0.1:9092  ·  "
            "stream-lstm tail --topic forecasts --json | jq -c '{key, f: .forecast}'"
        ),
    )
    p.add_argument("--topic", required=True, help="forecast topic")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message")
    p.add_argument(
        "--max",
        type=int,
        help="exit after reading this many messages from the topic: forecasts and messages "
        "that are not forecasts alike (a forecast counts once, whatever its number of targets)",
    )
    p.add_argument(
        "--timeout", type=float, help="exit after this many seconds without a new message"
    )
    p.add_argument(
        "--steps", type=int, default=6, help="horizon steps to show (default 6; not with --json)"
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    add_kafka_flags(p)
    p.set_defaults(run=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    import msgspec
    import pandas as pd
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        TIMESTAMP_NOT_AVAILABLE,
        KafkaError,
        TopicPartition,
    )

    from stream_lstm.drivers.kafka_client import check_topics, make_consumer
    from stream_lstm.kafka_readers import reader_options
    from stream_lstm.runtime.events import decode_forecast

    if args.max is not None and args.max < 1:
        raise ConfigError(f"--max must be at least 1, got {args.max}")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    k = kafka_settings(args, KafkaSettings)
    # a missing topic or an unreachable broker: an error that says what to do (exit 2 / 1)
    partitions = check_topics(k.bootstrap, k.kafka_options, [args.topic])[args.topic]
    group = f"stream-lstm-tail-{uuid.uuid4().hex[:8]}"
    c = make_consumer(k.bootstrap, group, reader_options(k.kafka_options))
    start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    c.assign([TopicPartition(args.topic, p, start) for p in range(partitions)])
    notes = Console(stderr=True, highlight=False)
    read = other = 0
    first_other = ""
    last = time.monotonic()
    reported_at, reported = last, 0
    try:
        while args.max is None or read < args.max:
            if args.timeout and time.monotonic() - last > args.timeout:
                break
            want = 500 if args.max is None else min(500, args.max - read)
            for m in c.consume(num_messages=want, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise KafkaClientError(f"reading {args.topic}: {err.str()}", err)
                    notes.print(f"kafka: {err.str()}", markup=False)
                    continue
                read += 1
                last = time.monotonic()
                try:
                    f = decode_forecast(m.value() or b"")
                except Exception as e:
                    other += 1
                    if other == 1:
                        first_other = f"{m.partition()}/{m.offset()}"
                        notes.print(
                            f"not a forecast at partition/offset {first_other}: {e} "
                            "(further ones are counted, not shown)",
                            style="yellow",
                            markup=False,
                        )
                    continue
                if args.json:
                    ts_type, ts = m.timestamp()
                    kafka = {
                        "topic": m.topic(),
                        "partition": m.partition(),
                        "offset": m.offset(),
                        "timestamp": None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                    }
                    write_json(msgspec.to_builtins(f) | {"kafka": kafka})
                    continue
                when = pd.Timestamp(f.ts, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")
                for target, vals in f.forecast.items():
                    shown = " ".join(f"{v:.4g}" for v in vals[: args.steps])
                    more = " …" if len(vals) > args.steps else ""
                    head = f"{when} {f.key} {target} [{f.model}] +1..+{len(vals)} {f.interval}"
                    print(f"{head}: {shown}{more}", flush=True)
            now = time.monotonic()
            if other > reported and now - reported_at >= NOT_FORECAST_REPORT_S:
                notes.print(f"{other} of {read} messages so far were not forecasts", markup=False)
                reported_at, reported = now, other
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader has gone (`… | head -3`): stop, as after --max
        stdout_closed()
    finally:
        c.close()
    if other:
        notes.print(
            f"{other} of {read} messages read were not forecasts (the first at partition/offset "
            f"{first_other})",
            style="yellow",
            markup=False,
        )
    return 0
