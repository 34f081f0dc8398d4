"""``stream-lstm worker``: the stream worker."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import sys
from pathlib import Path

from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.config import WorkerSettings

log = logging.getLogger(__name__)


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    add_kafka_flags(
        p, reads="every setting (the option maps as [worker.kafka_options] tables and the like)"
    )
    p.add_argument("--model", type=Path, help="model artifact directory (required)")
    p.add_argument(
        "--features",
        help="the feature names producers send; the worker refuses to start if the model's differ",
    )
    p.add_argument("--input-topic", help="topic of input events (default events)")
    p.add_argument("--output-topic", help="topic for forecasts (default forecasts)")
    p.add_argument("--dlq-topic", help="dead-letter topic for bad events (default events-dlq)")
    p.add_argument(
        "--redis", help="Redis URL, e.g. redis://[user:password@]host:6379/0 or rediss://…"
    )
    p.add_argument("--group", help="consumer group (default stream-lstm; the Faust app id)")
    p.add_argument(
        "--runtime",
        choices=["confluent", "faust"],
        help="confluent: the confluent-kafka driver (default); faust: the same engine as a "
        "faust-streaming agent",
    )
    p.add_argument(
        "--faust-web-port",
        type=int,
        help="with --runtime faust: serve Faust's web views on this port (default -1: off)",
    )
    p.add_argument("--namespace", help="Redis key prefix for state (default slstm:<group>)")
    t = p.add_argument_group("ticks and commits")
    t.add_argument(
        "--max-batch", type=int, help="close a tick at this many messages (default 4096)"
    )
    t.add_argument("--max-wait-ms", type=int, help="close a tick after this long (default 5)")
    t.add_argument("--commit-interval-ms", type=int, help="commit cycle interval (default 1000)")
    t.add_argument("--device", help="auto (CUDA if available), cpu, cuda or cuda:N")
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    v = p.add_argument_group("validation")
    v.add_argument(
        "--late-policy", choices=["dlq", "drop"], help="late events: dead-letter (default) or drop"
    )
    v.add_argument(
        "--missing",
        choices=["dlq", "ffill"],
        help="a feature an event does not send (or sends as null): dlq dead-letters the event "
        "(reason missing_feature; the default), ffill carries the key's previous value forward "
        "(as `stream-lstm predict --missing ffill` does; a key's first event still needs every "
        "feature)",
    )
    v.add_argument(
        "--max-future-ms",
        type=int,
        help="refuse ts further ahead than this (default 1 day; -1: off)",
    )
    v.add_argument("--max-message-bytes", type=int, help="refuse larger messages (default 65536)")
    v.add_argument("--max-key-bytes", type=int, help="refuse longer keys (default 256)")
    v.add_argument(
        "--allow-unknown-features",
        action="store_true",
        default=None,
        help="ignore unknown value names",
    )
    sc = p.add_argument_group("live scoring and alerts")
    sc.add_argument(
        "--score-steps",
        help="horizon steps to score against the actuals: auto (1,2,3,6,12,24,… and H; the "
        "default), all, none, or a list like 1,6,24 (step 1 is always included)",
    )
    sc.add_argument(
        "--residual-alpha",
        type=float,
        help="weight of the newest one-step residual in each key's running mean and variance "
        "(default 0.02: about the last 50 residuals; keep 1/alpha at a day of events or more)",
    )
    sc.add_argument(
        "--alert-sigma",
        type=float,
        help="an actual is outside when its residual is this many standard deviations from the "
        "key's mean residual (default 6; 0: off)",
    )
    sc.add_argument(
        "--alert-interval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an actual farther from the median than --alert-sigma standard deviations as the "
        "forecast's quantiles imply them (and outside the interval) is outside too (models "
        "with quantiles; default on)",
    )
    sc.add_argument(
        "--alert-warmup",
        type=int,
        help="residuals a key needs before the sigma rule applies (default 48)",
    )
    sc.add_argument(
        "--alerts-topic",
        help="topic for excursion alerts (open/close); without it alerts are only counted",
    )
    o = p.add_argument_group("operations")
    o.add_argument(
        "--model-poll-s",
        type=float,
        help="check the --model path this often for a new model version and switch to it "
        "without a restart (default 10; 0: never)",
    )
    o.add_argument(
        "--metrics-addr", help="address for /metrics, /healthz, /readyz (default 127.0.0.1)"
    )
    o.add_argument(
        "--metrics-port", type=int, help="port (default 9464; 0: any free port; -1: off)"
    )
    o.add_argument(
        "--state-ttl-s", type=int, help="expire idle keys' state after this long (default 7 days)"
    )
    o.add_argument(
        "--redis-connect-timeout", type=float, help="wait this long for Redis at start (default 0)"
    )
    o.add_argument(
        "--redis-outage-limit",
        type=float,
        help="give up after Redis fails this long (default 240 s)",
    )
    o.add_argument(
        "--consumer-option",
        action="append",
        metavar="KEY=VALUE",
        help="librdkafka setting for the consumer only, e.g. session.timeout.ms=10000",
    )
    o.add_argument(
        "--producer-option",
        action="append",
        metavar="KEY=VALUE",
        help="librdkafka setting for the producer only, e.g. linger.ms=5",
    )


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    return kafka_settings(
        args,
        WorkerSettings,
        model=args.model,
        features=args.features,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dlq_topic=args.dlq_topic,
        redis=args.redis,
        group=args.group,
        runtime=args.runtime,
        faust_web_port=args.faust_web_port,
        namespace=args.namespace,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        commit_interval_ms=args.commit_interval_ms,
        device=args.device,
        threads=args.threads,
        late_policy=args.late_policy,
        missing=args.missing,
        max_future_ms=args.max_future_ms,
        max_message_bytes=args.max_message_bytes,
        max_key_bytes=args.max_key_bytes,
        allow_unknown_features=args.allow_unknown_features,
        metrics_addr=args.metrics_addr,
        metrics_port=args.metrics_port,
        state_ttl_s=args.state_ttl_s,
        redis_connect_timeout_s=args.redis_connect_timeout,
        redis_outage_limit_s=args.redis_outage_limit,
        score_steps=args.score_steps,
        residual_alpha=args.residual_alpha,
        alert_sigma=args.alert_sigma,
        alert_interval=args.alert_interval,
        alert_warmup=args.alert_warmup,
        alerts_topic=args.alerts_topic,
        model_poll_s=args.model_poll_s,
        consumer_options=args.consumer_option,
        producer_options=args.producer_option,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="consume events, keep per-key state in Redis, publish forecasts",
        description=(
            "The stream worker: consumes input events in a consumer group, keeps each key's "
            "(h, c) and window in Redis, runs one batched model call per tick, publishes one "
            "forecast per event, dead-letters bad events with a reason, and commits offsets only "
            "after forecasts are acknowledged and states written. Every flag also comes from "
            "STREAM_LSTM_<FLAG> (e.g. STREAM_LSTM_BOOTSTRAP) or a [worker] TOML table. SIGTERM "
            "or SIGINT: finish the tick, commit, leave the group, exit 0."
        ),
        epilog=(
            "example: stream-lstm worker --model models/pedestrian --bootstrap 127.0.0.1:9092 "
            "--input-topic events --output-topic forecasts --dlq-topic events-dlq "
            "--redis redis://127.0.0.1:6379/0"
        ),
    )
    add_worker_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    s = worker_settings(args)
    if s.kafka_options or s.consumer_options or s.producer_options:
        log.info("Kafka pass-through options: %s", s.kafka_shown())
    if s.runtime == "faust":
        from stream_lstm.faust_app import run_faust

        gc.freeze()
        keep_freed_memory()
        return run_faust(s, logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower())

    from stream_lstm.worker import Worker

    w = Worker(s)
    w.install_signal_handlers()
    w.start()
    # everything allocated so far (model, clients, caches) lives as long as the process: keep it
    # out of the cyclic GC's scans, which otherwise stall ticks (throughput +45 % measured)
    gc.freeze()
    keep_freed_memory()
    # the state writer thread holds the GIL in short bursts: hand it back to the hot loop
    # within 1 ms instead of 5 (shorter tail latency measured)
    sys.setswitchinterval(0.001)
    return w.run()


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory for the large per-tick arrays instead of returning it to
    the kernel and faulting fresh pages in on every tick (stalls of tens of ms measured)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 64 * 2**20)
