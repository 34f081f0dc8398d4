"""``stream-lstm dashboard``: a live web chart of actuals and forecasts for chosen keys."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.config import TopicSettings
from stream_lstm.errors import ConfigError

DEFAULT_INPUT_TOPIC = TopicSettings.model_fields["input_topic"].default
DEFAULT_OUTPUT_TOPIC = TopicSettings.model_fields["output_topic"].default


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve a live web chart of actuals and forecasts for chosen keys",
        description=(
            "Read the input topic (actuals) and the forecast topic and serve a web page that "
            "charts, per key, the actual values, the latest forecast over its horizon with its "
            "interval band (lowest to highest quantile, when the model has quantiles) and the "
            "1-step-ahead forecast trail next to the actuals it predicted. The page refreshes "
            "every second; its data is also at /api/keys and /api/series?key=K (JSON). It only "
            "reads: offsets are never committed and no consumer group is joined."
        ),
        epilog=(
            "example: stream-lstm dashboard --bootstrap 127.0.0.1:9092 --input-topic events "
            "--output-topic forecasts --keys sensor-1,sensor-2 --from-beginning  "
            "(then open http://127.0.0.1:8050/)"
        ),
    )
    add_kafka_flags(p, reads="bootstrap, kafka_options, input_topic and output_topic")
    p.add_argument(
        "--input-topic",
        help="topic of input events, read for the actuals (env STREAM_LSTM_INPUT_TOPIC; default "
        f"{DEFAULT_INPUT_TOPIC})",
    )
    p.add_argument(
        "--output-topic",
        help=f"topic of forecasts (env STREAM_LSTM_OUTPUT_TOPIC; default {DEFAULT_OUTPUT_TOPIC})",
    )
    p.add_argument(
        "--keys",
        help="comma-separated keys to chart (default: the first --max-keys keys seen)",
    )
    p.add_argument(
        "--max-keys",
        type=_positive,
        default=4,
        help="how many keys to chart when --keys is not given (default 4)",
    )
    p.add_argument(
        "--target",
        help="the target to chart (default: the first target of the forecasts)",
    )
    p.add_argument(
        "--history",
        type=_positive,
        default=500,
        help="actuals and forecasts kept per key (default 500)",
    )
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="read both topics from their oldest message (default: from their end)",
    )
    p.add_argument("--addr", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=_port,
        default=8050,
        help="port to listen on (default 8050; 0 picks a free one; the URL is printed)",
    )
    p.set_defaults(run=run)


def parse_keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not keys:
        raise ConfigError(f"--keys {text!r} names no key; give e.g. --keys sensor-1,sensor-2")
    return keys


def run(args: argparse.Namespace) -> int:
    from stream_lstm.dashboard.feed import KafkaFeed
    from stream_lstm.dashboard.server import Dashboard
    from stream_lstm.dashboard.store import SeriesStore
    from stream_lstm.drivers.kafka_client import check_topics

    keys = parse_keys(args.keys)
    s = kafka_settings(
        args, TopicSettings, input_topic=args.input_topic, output_topic=args.output_topic
    )
    if s.input_topic == s.output_topic:
        raise ConfigError(
            f"--input-topic and --output-topic must be different topics (both {s.input_topic})"
        )
    store = SeriesStore(keys, args.max_keys, args.history, args.target)
    try:  # bind first: a busy port is reported at once, before any wait on the broker
        dash = Dashboard(store, args.addr, args.port)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {args.addr}:{args.port}: {e.strerror or e} "
            "(choose another --port, or 0 for a free one)"
        ) from None
    try:  # an unreachable broker or a missing topic is an error that says what to do
        partitions = check_topics(s.bootstrap, s.kafka_options, [s.input_topic, s.output_topic])
    except BaseException:
        dash.stop()
        raise
    feed = KafkaFeed(
        store,
        s.bootstrap,
        s.input_topic,
        s.output_topic,
        partitions,
        from_beginning=args.from_beginning,
        options=s.kafka_options,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        feed.start()
        dash.start()
        shown = f"keys {', '.join(keys)}" if keys else f"the first {args.max_keys} keys seen"
        print(
            f"dashboard on {dash.url} ({shown}; {s.input_topic} → {s.output_topic}); "
            "Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        dash.stop()
        feed.stop()
    print("dashboard stopped", file=sys.stderr)
    return 0
