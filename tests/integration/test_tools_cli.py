"""The tools on the real broker: `topics create`/`topics list` with only STREAM_LSTM_BOOTSTRAP set,
and `tail` (--max bounds the messages read, messages that are not forecasts are summarised, a
missing topic is an error, --json prints JSON Lines only, flushed per line)."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from collections.abc import Callable, Iterator

import msgspec
import pytest
from confluent_kafka.admin import AdminClient

from stream_lstm.cli import main
from stream_lstm.runtime.events import ForecastOut, encode_forecast
from tests.integration.conftest import unique
from tests.integration.helpers import produce


@pytest.fixture
def env_bootstrap_only(monkeypatch: pytest.MonkeyPatch, bootstrap: str) -> str:
    """The session broker given only through the environment (no --bootstrap, no --config)."""
    monkeypatch.delenv("STREAM_LSTM_KAFKA_OPTIONS", raising=False)
    monkeypatch.setenv("STREAM_LSTM_BOOTSTRAP", bootstrap)
    return bootstrap


@pytest.fixture
def created(admin: AdminClient) -> Iterator[list[str]]:
    """Topics a test creates through the CLI; deleted afterwards."""
    names: list[str] = []
    yield names
    if names:
        for f in admin.delete_topics(names, operation_timeout=30).values():
            f.result(timeout=30)


def test_topics_create_and_list_use_the_bootstrap_from_the_environment(
    env_bootstrap_only: str,
    admin: AdminClient,
    created: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = unique("env-a"), unique("env-b")
    created += [a, b]
    assert main(["topics", "create", f"{a}:3", b]) == 0
    out = capsys.readouterr().out
    assert f"created {a}" in out and f"created {b}" in out
    # on the session's broker (not a default 127.0.0.1:9092 one)
    md = admin.list_topics(timeout=10)
    assert len(md.topics[a].partitions) == 3 and len(md.topics[b].partitions) == 1

    assert main(["topics", "create", f"{a}:3"]) == 0
    assert f"{a} exists" in capsys.readouterr().out

    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{a}\t3 partition(s)" in out.splitlines()
    assert f"{b}\t1 partition(s)" in out.splitlines()


def forecast(key: str, ts: int) -> bytes:
    return encode_forecast(
        ForecastOut(
            key=key,
            ts=ts,
            model="ab12cd34ef56",
            interval="1h",
            interval_ms=3_600_000,
            forecast={"f0": [1.0, 2.0, 3.0]},
            partition=0,
            offset=ts,
        )
    )


def test_tail_bounds_what_it_reads_and_summarises_other_messages(
    env_bootstrap_only: str,
    topic_factory: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("tail", partitions=1)
    junk = [(b"k", f"not json {i}".encode()) for i in range(40)]
    produce(env_bootstrap_only, topic, [*junk, *[(b"k", forecast("k", i)) for i in range(10)]])

    # --max counts every message read: the 40 others and 5 of the forecasts
    assert (
        main(["tail", "--topic", topic, "--from-beginning", "--max", "45", "--timeout", "30"]) == 0
    )
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert len(lines) == 5, got.out
    # the model version is printed as it is (a version that starts with a letter is not markup)
    assert all(re.match(r"1970-01-01 00:00 k f0 \[ab12cd34ef56\] \+1\.\.\+3 1h: 1 2 3$", x)
               for x in lines), lines  # fmt: skip
    err = " ".join(got.err.split())
    assert err.count("not a forecast at") == 1, got.err
    assert "not a forecast at partition/offset 0/0" in err
    assert "40 of 45 messages read were not forecasts (the first at partition/offset 0/0)" in err

    # without --max: everything there, then --timeout ends it
    assert main(["tail", "--topic", topic, "--from-beginning", "--timeout", "3"]) == 0
    got = capsys.readouterr()
    assert len(got.out.splitlines()) == 10
    assert "40 of 50 messages read were not forecasts" in " ".join(got.err.split())


def test_tail_json_prints_one_object_per_forecast_with_where_it_was_read(
    env_bootstrap_only: str,
    topic_factory: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory("tail-json", partitions=1)
    precise = ForecastOut(
        key="k", ts=7, model="ab12cd34ef56", interval="1h", interval_ms=3_600_000,
        forecast={"f0": [1.23456789012, -3e-7, 2.0]}, partition=2, offset=99,
        quantiles={"f0": {"0.1": [0.5, 0.0, 1.0], "0.9": [2.0, 1.0, 3.0]}},
    )  # fmt: skip
    produce(
        env_bootstrap_only,
        topic,
        [(b"k", b"not json"), (b"k", encode_forecast(precise)), (b"k", forecast("k", 8))],
    )
    argv = ["tail", "--topic", topic, "--from-beginning", "--max", "3", "--timeout", "30"]
    assert main([*argv, "--json"]) == 0
    got = capsys.readouterr()
    rows = [json.loads(line) for line in got.out.splitlines()]  # JSON Lines only on stdout
    assert len(rows) == 2, got.out
    first, second = rows
    assert first["kafka"]["timestamp"] > 0
    assert first == msgspec.to_builtins(precise) | {
        "kafka": {"topic": topic, "partition": 0, "offset": 1,
                  "timestamp": first["kafka"]["timestamp"]},
    }  # fmt: skip
    assert second["ts"] == 8 and second["forecast"] == {"f0": [1.0, 2.0, 3.0]}
    assert "quantiles" not in second and second["kafka"]["offset"] == 2
    assert "not a forecast at partition/offset 0/0" in " ".join(got.err.split())


def test_tail_json_flushes_each_line_and_stops_when_the_reader_goes_away(
    env_bootstrap_only: str, topic_factory: Callable[..., str]
) -> None:
    """`stream-lstm tail --json | jq`: each line arrives while tail runs; `| head -1`: tail
    ends without a traceback once it writes to the closed pipe."""
    topic = topic_factory("tail-pipe", partitions=1)
    produce(env_bootstrap_only, topic, [(b"k", forecast("k", 1))])
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_lstm", "tail", "--topic", topic, "--from-beginning",
         "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no line within 60 s"
        assert json.loads(proc.stdout.readline())["ts"] == 1
        assert proc.poll() is None  # still running: the line was flushed, not written at exit
        proc.stdout.close()
        produce(env_bootstrap_only, topic, [(b"k", forecast("k", i)) for i in range(2, 5)])
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_tail_on_a_missing_topic_exits_2_and_says_so(
    env_bootstrap_only: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = unique("no-such-topic")
    assert main(["tail", "--topic", missing, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert f"error: topic {missing} does not exist on {env_bootstrap_only}; create it first" in err
    assert "KafkaError" not in err
