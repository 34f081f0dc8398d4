"""Start-up errors on the real stack: each exits non-zero with a message that says what to fix."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_lstm.cli import main
from stream_lstm.stack.procs import free_port
from tests.integration.conftest import Services, unique


def argv(services: Services, model: Path, inp: str, out: str, dlq: str, *extra: str) -> list[str]:
    return ["worker", "--model", str(model), "--bootstrap", services.bootstrap, "--redis", services.redis_url,
            "--input-topic", inp, "--output-topic", out, "--dlq-topic", dlq, "--group", unique("g"),
            "--metrics-port", "0", *extra]  # fmt: skip


def test_missing_topics_are_named_with_the_command_that_creates_them(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inp = topic_factory("in", partitions=2)
    out, dlq = unique("no-out"), unique("no-dlq")
    assert main(argv(services, synth_model, inp, out, dlq)) == 2
    err = capsys.readouterr().err
    assert f"topics {out}, {dlq} do not exist on {services.bootstrap}; create them first" in err
    assert f"stream-lstm topics create --bootstrap {services.bootstrap} {out}:8 {dlq}:8" in err


def test_unreachable_kafka_and_busy_metrics_port(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = [topic_factory("t") for _ in range(3)]
    dead = f"127.0.0.1:{free_port()}"
    args = argv(services, synth_model, *t)
    args[args.index("--bootstrap") + 1] = dead
    assert main(args) == 1
    assert f"error: cannot reach Kafka at {dead}" in capsys.readouterr().err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = argv(services, synth_model, *t)
        args[args.index("--metrics-port") + 1] = str(port)
        assert main(args) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err
