"""bench/exactly_once.py's argument parsing and the worker flags it builds (no network, no
timing: the script's figures are measurements for docs/benchmarks.md, never assertions)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from stream_lstm.benchmark.run import BenchConfig, _worker_args
from stream_lstm.cli import build_parser
from stream_lstm.commands.worker import worker_settings
from stream_lstm.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "exactly_once.py"


@pytest.fixture(scope="module")
def eos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_exactly_once", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_defaults_are_the_issue_s_comparison(eos: ModuleType) -> None:
    a = eos.build_parser().parse_args([])
    assert a.guarantees == ("at-least-once", "exactly-once")
    assert a.intervals == (200, 1000, 5000)
    assert (a.rounds, a.latency_rounds, a.load) == (3, 1, 5000)


def test_lists_parse_and_bad_ones_are_refused(eos: ModuleType) -> None:
    a = eos.build_parser().parse_args(
        ["--guarantees", "eos,alo", "--intervals", "1000", "--kafka-port", "29092"]
    )
    assert a.guarantees == ("exactly-once", "at-least-once")
    assert a.intervals == (1000,)
    assert a.kafka_port == 29092
    for bad in ("at-most-once", "", "alo,at-least-once"):
        with pytest.raises(argparse.ArgumentTypeError):
            eos.parse_guarantees(bad)
    for bad in ("", "0", "1000,x", "-200"):
        with pytest.raises(argparse.ArgumentTypeError):
            eos.parse_ints(bad)


def test_the_two_guarantees_alternate_which_runs_first(eos: ModuleType) -> None:
    g = ("at-least-once", "exactly-once")
    assert [eos.round_order(g, r)[0] for r in range(4)] == [
        "at-least-once",
        "exactly-once",
        "at-least-once",
        "exactly-once",
    ]


def test_only_exactly_once_gets_a_transactional_id(eos: ModuleType) -> None:
    assert eos.guarantee_args("at-least-once", 200, "t") == [
        "--processing-guarantee",
        "at-least-once",
        "--commit-interval-ms",
        "200",
    ]
    assert eos.guarantee_args("exactly-once", 5000, "t")[-2:] == ["--transactional-id", "t"]


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_the_worker_accepts_the_flags_it_builds(
    eos: ModuleType, tiny_model: Path, guarantee: str
) -> None:
    args = _worker_args(
        BenchConfig(), tiny_model, "127.0.0.1:1", "redis://127.0.0.1:1/0", "i", "o", "d", "g"
    ) + eos.guarantee_args(guarantee, 5000, "bench-tx")
    s = worker_settings(build_parser().parse_args(["worker", *args]))
    assert s.processing_guarantee == guarantee
    assert s.commit_interval_ms == 5000
    assert s.transactional_id == ("bench-tx" if guarantee == "exactly-once" else None)


def test_a_transactional_id_with_at_least_once_would_be_refused(tiny_model: Path) -> None:
    base = _worker_args(
        BenchConfig(), tiny_model, "127.0.0.1:1", "redis://127.0.0.1:1/0", "i", "o", "d", "g"
    )
    args = [*base, "--transactional-id", "x"]
    with pytest.raises(ConfigError, match="--transactional-id"):
        worker_settings(build_parser().parse_args(["worker", *args]))


def test_summary_rows_pair_each_interval(eos: ModuleType) -> None:
    result = {
        "settings": {"intervals": (1000,), "guarantees": ("at-least-once", "exactly-once")},
        "throughput": {
            "median_events_per_s": {"at-least-once 1000 ms": 100.0, "exactly-once 1000 ms": 80.0},
            "eos_over_alo": {"1000": {"of_medians": 0.8, "per_round": [0.8]}},
        },
        "latency": [
            {
                "guarantee": g,
                "commit_interval_ms": 1000,
                "visible_latency_ms": {"p50": v, "p99": 2 * v},
                "produced_latency_ms": {"p50": 1.0, "p99": 2.0},
            }
            for g, v in (("at-least-once", 10.0), ("exactly-once", 500.0))
        ],
    }
    alo, eo = eos.rows(result)
    assert (alo["events_per_s"], "eos_over_alo" in alo) == (100.0, False)
    assert (eo["events_per_s"], eo["eos_over_alo"], eo["visible_p99_ms"]) == (80.0, 0.8, 1000.0)


def test_the_burst_schedule_and_its_flag() -> None:
    """The burst run's producer schedule: each phase's events at its own rate, back to back."""
    from stream_lstm.benchmark.run import due_times
    from stream_lstm.commands.bench import _parts, _phases

    due = due_times([(10, 1.0), (100, 0.5), (10, 1.0)], 70)
    assert list(due[:2]) == [0.0, 0.1] and due[9] == 0.9
    assert due[10] == 1.0 and abs(due[11] - 1.01) < 1e-12 and due[59] < 1.5 <= due[60]
    assert (np.diff(due) > 0).all()
    assert list(due_times(4.0, 3)) == [0.0, 0.25, 0.5]
    assert _phases("5000:10, 50000:5,5000:20") == ((5000, 10.0), (50000, 5.0), (5000, 20.0))
    with pytest.raises(argparse.ArgumentTypeError, match="RATE:SECONDS"):
        _phases("5000")
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        _phases("0:5")
    assert _parts("burst,micro") == ("burst", "micro")
    with pytest.raises(ConfigError, match="unknown latncy"):
        _parts("latncy")
