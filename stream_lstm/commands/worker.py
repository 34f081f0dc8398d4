"""``stream-lstm worker``: the stream worker."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import sys

from stream_lstm.commands._kafka import add_kafka_flags, kafka_settings
from stream_lstm.commands._settings import add_settings_flags, given
from stream_lstm.config import WorkerSettings, unknown_variables

log = logging.getLogger(__name__)


def add_worker_flags(p: argparse.ArgumentParser) -> list[str]:
    """The Kafka connection flags, then one flag per worker setting (stream_lstm/config.py)."""
    add_kafka_flags(
        p, reads="every setting (the option maps as [worker.kafka_options] tables and the like)"
    )
    return add_settings_flags(p, WorkerSettings, skip=("bootstrap", "kafka_options"))


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    return kafka_settings(args, WorkerSettings, **given(args, args.setting_names))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="consume events, keep per-key state in Redis, publish forecasts",
        description=(
            "The stream worker: consumes input events in a consumer group, keeps each key's "
            "(h, c) and window in Redis, runs one batched model call per tick, publishes one "
            "forecast per event, dead-letters bad events with a reason, and commits offsets only "
            "after forecasts are acknowledged and states written. Every setting also comes from "
            "its environment variable, STREAM_LSTM_<SETTING> (e.g. STREAM_LSTM_BOOTSTRAP; a "
            "flag whose variable is named otherwise says so), or a [worker] TOML table. "
            "SIGTERM or SIGINT: finish the tick, commit, leave the group, exit 0."
        ),
        epilog=(
            "example: stream-lstm worker --model models/pedestrian --bootstrap 127.0.0.1:9092 "
            "--input-topic events --output-topic forecasts --dlq-topic events-dlq "
            "--redis redis://127.0.0.1:6379/0"
        ),
    )
    p.set_defaults(run=run, setting_names=add_worker_flags(p))


def run(args: argparse.Namespace) -> int:
    s = worker_settings(args)
    for name in unknown_variables():
        log.warning("%s is set but no setting reads it (the README's table lists the names)", name)
    if s.kafka_options or s.consumer_options or s.producer_options:
        log.info("Kafka pass-through options: %s", s.kafka_shown())
    if s.runtime == "faust":
        from stream_lstm.drivers.faust import run_faust

        gc.freeze()
        keep_freed_memory()
        return run_faust(s, logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower())

    from stream_lstm.drivers.confluent import Worker

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
