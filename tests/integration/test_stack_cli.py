"""`stream-lstm stack up|status|down` on its own ports: idempotent, reports PIDs, stops by PID."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from stream_lstm.cli import main
from stream_lstm.config import default_cache_dir
from stream_lstm.stack import procs
from stream_lstm.stack.kafka import KafkaBroker, KafkaSpec
from tests.integration.conftest import Services


def test_up_is_idempotent_status_reports_and_down_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = [procs.free_port() for _ in range(3)]
    flags = [
        "--dir", str(tmp_path / "stack"),
        "--kafka-port", str(ports[0]),
        "--controller-port", str(ports[1]),
        "--redis-port", str(ports[2]),
        "--kafka-heap", "256m",
    ]  # fmt: skip
    try:
        assert main(["stack", "up", *flags]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"kafka: started at 127\.0\.0\.1:{ports[0]} \(pid \d+\)", out)
        assert re.search(rf"redis: started at redis://127\.0\.0\.1:{ports[2]}/0", out)
        pids = {int(p) for p in re.findall(r"\(pid (\d+)\)", out)}
        assert len(pids) == 2

        assert main(["stack", "up", *flags]) == 0
        out = capsys.readouterr().out
        assert "kafka: already running" in out
        assert "redis: already running" in out
        assert {int(p) for p in re.findall(r"\(pid (\d+)\)", out)} == pids

        assert main(["stack", "status", *flags]) == 0
        out = capsys.readouterr().out
        assert out.count("ready") == 2
        assert re.search(r"\d+ MiB", out), "RSS is reported"

        assert main(["stack", "status", "--json", *flags]) == 0
        doc = json.loads(capsys.readouterr().out)  # one document, nothing else
        assert doc["root"] == str(tmp_path / "stack") and doc["ready"] is True
        parts = {p["name"]: p for p in doc["parts"]}
        assert set(parts) == {"kafka", "redis"}
        assert {p["pid"] for p in parts.values()} == pids
        assert parts["kafka"]["address"] == f"127.0.0.1:{ports[0]}"
        assert parts["redis"]["address"] == f"redis://127.0.0.1:{ports[2]}/0"
        assert all(p["state"] == "ready" and p["rss_bytes"] > 0 for p in parts.values())
    finally:
        assert main(["stack", "down", *flags]) == 0
    out = capsys.readouterr().out
    assert "kafka: stopped" in out
    assert "redis: stopped" in out
    assert not any(procs.is_alive(p) for p in pids)
    assert main(["stack", "status", *flags]) == 3
    capsys.readouterr()
    assert main(["stack", "status", "--json", *flags]) == 3  # the same exit code with --json
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is False
    assert all(p["state"] == "stopped" and p["pid"] is None for p in doc["parts"])
    assert main(["stack", "down", *flags]) == 0
    assert "was not running" in capsys.readouterr().out


def test_schema_registry_part_of_the_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stack up --schema-registry` starts a local Apicurio Registry next to Kafka and Redis;
    `status` and `down` find it without the flag; its URL serves the Confluent API."""
    ports = [procs.free_port() for _ in range(4)]
    flags = [
        "--dir", str(tmp_path / "stack"),
        "--kafka-port", str(ports[0]),
        "--controller-port", str(ports[1]),
        "--redis-port", str(ports[2]),
        "--kafka-heap", "256m",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{ports[3]}/apis/ccompat/v7"
    pid = None
    try:
        up = ["stack", "up", *flags, "--schema-registry", "--schema-registry-port", str(ports[3])]
        assert main(up) == 0
        out = capsys.readouterr().out
        assert re.search(rf"schema-registry: started at {re.escape(url)} \(pid \d+\)", out)
        assert main(["stack", "status", "--json", *flags]) == 0  # found without the flag
        parts = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parts"]}
        reg = parts["schema-registry"]
        assert reg["address"] == url and reg["state"] == "ready"
        pid = reg["pid"]
        with urllib.request.urlopen(f"{url}/subjects", timeout=10) as r:
            assert json.loads(r.read()) == []
    finally:
        assert main(["stack", "down", *flags]) == 0
    assert "schema-registry: stopped" in capsys.readouterr().out
    assert pid is not None and not procs.is_alive(pid)


def test_busy_port_fails_with_a_clear_message(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_port = services.redis_url.rsplit(":", 1)[1].split("/")[0]
    other = [str(procs.free_port()), str(procs.free_port())]
    rc = main(["stack", "up", "--dir", str(tmp_path), "--redis-port", redis_port,
               "--kafka-port", other[0], "--controller-port", other[1]])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert f"Redis port 127.0.0.1:{redis_port} is already in use" in err
    assert "--redis-port" in err


def test_broker_that_does_not_come_up_names_its_log(tmp_path: Path) -> None:
    broker = KafkaBroker(
        KafkaSpec(
            run_dir=tmp_path,
            cache_dir=default_cache_dir(),
            broker_port=procs.free_port(),
            controller_port=procs.free_port(),
            heap="1k",  # the JVM refuses to start
        )
    )
    with pytest.raises(Exception, match="exited during start-up") as e:
        broker.start()
    assert str(tmp_path / "logs" / "kafkaServer.out") in str(e.value)
    assert "Too small maximum heap" in str(e.value)
    assert broker.pid() is None
