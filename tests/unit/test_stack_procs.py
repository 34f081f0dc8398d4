"""PID files, stopping by PID, busy ports and missing tools: no Kafka or Redis needed."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack.kafka import ensure_jars, java_major_version, new_cluster_id


def test_busy_port_is_reported_with_the_flag_to_change_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not procs.port_is_free("127.0.0.1", port)
        assert procs.port_accepts("127.0.0.1", port)
        with pytest.raises(StackError) as e:
            procs.require_free_port("127.0.0.1", port, "Redis", "--redis-port")
    msg = str(e.value)
    assert f"127.0.0.1:{port} is already in use" in msg
    assert "--redis-port" in msg
    assert procs.port_is_free("127.0.0.1", port)


def test_spawn_records_pid_and_stop_terminates(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    proc = procs.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)],
        log_file=tmp_path / "x.log",
        pid_file=pid_file,
        fingerprint=str(tmp_path),
    )
    assert procs.read_pid(pid_file) == proc.pid
    assert procs.rss_bytes(proc.pid) is not None
    assert procs.stop_pid(proc.pid, grace_s=10) is False  # SIGTERM was enough
    assert procs.read_pid(pid_file) is None


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    log = tmp_path / "y.log"
    proc = procs.spawn(
        [sys.executable, "-c", code], log_file=log, pid_file=tmp_path / "y.pid", fingerprint="y"
    )
    deadline = time.monotonic() + 10
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs.stop_pid(proc.pid, grace_s=0.3) is True
    assert not procs.is_alive(proc.pid)


def test_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "z.pid"
    # this test process is alive but does not carry the fingerprint
    import os

    pid_file.write_text(f"{os.getpid()}\n/some/other/run/dir\n")
    assert procs.read_pid(pid_file) is None
    pid_file.write_text("not a pid\n")
    assert procs.read_pid(pid_file) is None


def test_wait_until_quotes_the_log_when_the_process_dies(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("line 1\nError: bad things\n")
    with pytest.raises(StackError) as e:
        procs.wait_until(
            lambda: False,
            alive=lambda: False,
            timeout_s=5,
            what="thing",
            log_hint=str(log),
            log_files=[log],
        )
    assert "thing exited during start-up" in str(e.value)
    assert str(log) in str(e.value)
    assert "Error: bad things" in str(e.value)


def test_missing_java_and_mvn_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(StackError, match="java was not found on PATH"):
        java_major_version()
    with pytest.raises(StackError, match=r"mvn \(Apache Maven\) was not found"):
        ensure_jars(tmp_path / "cache")


def test_cluster_id_shape() -> None:
    for _ in range(200):
        cid = new_cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
