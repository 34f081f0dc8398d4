"""`--json` on the commands that print tables (`models`, `evaluate`, `stack status`, `tail`):
stdout holds JSON only (parsed here line by line or as one document), with the values the table
shows at full precision; the exit codes are those without --json. `stack status` on a running
stack and `tail` on a real broker: tests/integration/test_stack_cli.py and test_tools_cli.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_lstm.cli import main
from stream_lstm.commands._stack import status_json
from stream_lstm.drivers import kafka_client
from stream_lstm.model.artifact import load_artifact
from stream_lstm.runtime.events import ForecastOut, encode_forecast
from stream_lstm.stack import ComponentStatus, Stack
from stream_lstm.stack.procs import free_port

# -- models ------------------------------------------------------------------------------------


def test_models_json_is_one_object_per_line_with_the_full_precision_metrics(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a long path: a table (or rich) would wrap it; JSON Lines never do
    folder = tmp_path / ("deep-" * 20) / "models"
    shutil.copytree(tiny_model, folder / "a")
    shutil.copytree(tiny_model, folder / "b")
    assert main(["models", "--json", str(folder)]) == 0
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert len(lines) == 2, got.out
    rows = [json.loads(line) for line in lines]
    art = load_artifact(tiny_model)
    metrics = json.loads((tiny_model / "metrics.json").read_text())
    overall = {
        name: metrics["evaluation"]["scores"][name]["original"]["overall"]["rmse"]
        for name in ("model", "seasonal_naive", "persistence")
    }
    assert [r["path"] for r in rows] == [str(folder / "a"), str(folder / "b")]
    for r, name in zip(rows, "ab", strict=True):
        assert set(r) == {
            "path", "version", "kind", "features", "targets", "time_step", "horizon",
            "interval_ms", "data", "rows", "test_rmse", "seasonal_naive_rmse",
            "persistence_rmse", "trained",
        }  # fmt: skip
        assert r["version"] == art.version and r["kind"] == art.config.kind
        assert r["features"] == ["f0", "f1"] and r["targets"] == ["f0"]
        assert r["time_step"] == 12 and r["horizon"] == 6
        assert r["interval_ms"] == art.config.interval_ms
        assert r["data"] == "synth.csv"
        assert r["test_rmse"] == overall["model"]  # not the table's 3 digits
        assert r["seasonal_naive_rmse"] == overall["seasonal_naive"]
        assert r["persistence_rmse"] == overall["persistence"]
        assert r["trained"] == (folder / name / "model.safetensors").stat().st_mtime
    assert "\x1b" not in got.out


def test_models_json_lists_an_unreadable_artifact_with_its_error_and_exits_2(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(tiny_model, tmp_path / "a")
    shutil.copytree(tiny_model, tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{not json")
    assert main(["models", "--json", str(tmp_path)]) == 2
    got = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in map(json.loads, got.out.splitlines())}
    assert rows["a"]["version"] == load_artifact(tiny_model).version
    assert set(rows["b"]) == {"path", "error"} and rows["b"]["error"].startswith("unreadable")
    assert got.err.startswith("error: 1 of 2 artifacts could not be read:")


def test_models_json_with_no_artifacts_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--json", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


# -- evaluate ----------------------------------------------------------------------------------


def test_evaluate_json_is_the_written_document_and_holds_what_the_tables_show(
    tiny_model: Path, synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "e.json"
    argv = ["evaluate", "--model", str(model), "--data", str(synth_csv), "--split", "all"]
    assert main([*argv, "--out", str(out), "--plots", str(tmp_path / "plots"), "--json"]) == 0
    got = capsys.readouterr()
    doc = json.loads(got.out)  # one document, nothing else on stdout
    assert got.out.count("\n") == 1
    written = json.loads(out.read_text())
    assert doc == written | {"out": str(out), "plots": doc["plots"]}
    assert doc["plots"] and all(Path(p).is_file() for p in doc["plots"])
    assert doc["model"] == load_artifact(tiny_model).version
    assert doc["data"] == str(synth_csv) and doc["split"] == "all"
    assert doc["targets"] == ["f0"] and doc["horizon"] == 6 and doc["origins"] > 0
    assert set(doc["scores"]) == {"model", "linear", "seasonal_naive", "persistence"}
    for scores in doc["scores"].values():
        assert set(scores) == {"original", "standardised"}
        assert len(scores["original"]["per_h"]["mae"]) == 6
        assert set(scores["original"]["per_target"]) == {"f0"}

    # the tables show the same numbers, rounded
    assert main([*argv, "--out", str(tmp_path / "e2.json")]) == 0
    table = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in table.splitlines()]
    for method in ("model", "persistence"):
        o = doc["scores"][method]["original"]["overall"]
        z = doc["scores"][method]["standardised"]["overall"]
        overall, by_h = [r for r in rows if r[0] == method]  # the first table, then the second
        assert overall == [method, f"{o['mae']:.4g}", f"{o['rmse']:.4g}", f"{o['smape']:.2f}",
                           f"{z['mae']:.4f}", f"{z['rmse']:.4f}"]  # fmt: skip
        assert by_h[1] == f"{doc['scores'][method]['original']['per_h']['mae'][0]:.4g}"


def test_evaluate_json_failure_keeps_the_exit_code_and_stdout_empty(
    tiny_model: Path, synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", str(tiny_model), "--data", str(synth_csv), "--json"]
    assert main([*argv, "--out", str(tmp_path)]) == 2  # a directory: refused before any work
    got = capsys.readouterr()
    assert got.out == "" and "it is a directory" in got.err


# -- stack status ------------------------------------------------------------------------------


def test_stack_status_json_on_a_stopped_stack_parses_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--dir", str(tmp_path), "--kafka-port", str(free_port()),
             "--controller-port", str(free_port()), "--redis-port", str(free_port())]  # fmt: skip
    assert main(["stack", "status", "--json", *flags]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["root"] == str(tmp_path) and doc["ready"] is False
    assert [p["name"] for p in doc["parts"]] == ["kafka", "redis"]
    for p in doc["parts"]:
        assert p["state"] == "stopped" and p["ready"] is False
        assert p["pid"] is None and p["rss_bytes"] is None and p["role"] is None
    assert doc["parts"][0]["part"].startswith("kafka ")


def test_stack_status_json_gives_a_cluster_node_its_role_and_slots(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path, kafka_port=free_port(), redis_port=free_port())
    parts = [
        ComponentStatus("kafka", "127.0.0.1:9092", 11, 300 * 2**20, True, "kafka 4 (KRaft)"),
        ComponentStatus("redis-cluster", "127.0.0.1:7000", 12, 2**20, True,
                        "redis-cluster master (5461 slots)", "master", 5461, None, True),
        ComponentStatus("redis-cluster", "127.0.0.1:7003", 13, 2**20, True,
                        "redis-cluster replica of 127.0.0.1:7000", "replica", 0,
                        "127.0.0.1:7000", True),
        ComponentStatus("redis-cluster", "127.0.0.1:7001", None, None, False,
                        "redis-cluster node down (5462 slots not taken over)", "down", 5462),
    ]  # fmt: skip
    doc = orjson.loads(orjson.dumps(status_json(stack, parts)))
    assert doc["ready"] is False
    kafka, master, replica, down = doc["parts"]
    assert kafka == {
        "name": "kafka", "part": "kafka 4 (KRaft)", "address": "127.0.0.1:9092",
        "state": "ready", "ready": True, "pid": 11, "rss_bytes": 300 * 2**20, "role": None,
        "slots": None, "master_of": None, "cluster_ok": None,
    }  # fmt: skip
    assert (master["role"], master["slots"], master["cluster_ok"]) == ("master", 5461, True)
    assert (replica["role"], replica["master_of"]) == ("replica", "127.0.0.1:7000")
    assert (down["role"], down["slots"], down["state"]) == ("down", 5462, "stopped")


# -- tail (a stand-in consumer; the real broker: tests/integration/test_tools_cli.py) ----------


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._o)  # TIMESTAMP_CREATE_TIME


class FakeConsumer:
    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = messages
        self.closed = False

    def assign(self, partitions: list[Any]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        batch, self.messages = self.messages[:num_messages], self.messages[num_messages:]
        return batch

    def close(self) -> None:
        self.closed = True


def forecast(key: str, ts: int, *, quantiles: bool = False) -> bytes:
    return encode_forecast(
        ForecastOut(
            key=key,
            ts=ts,
            model="ab12cd34ef56",
            interval="1h",
            interval_ms=3_600_000,
            forecast={"f0": [1.23456789012, 2.5, -3.0e-7], "f1": [4.0, 5.0, 6.0]},
            partition=3,
            offset=ts,
            quantiles={"f0": {"0.1": [0.5, 1.5, -1.0], "0.9": [2.0, 3.0, 1.0]}}
            if quantiles
            else None,
        )
    )


@pytest.fixture
def fake_topic(monkeypatch: pytest.MonkeyPatch) -> FakeConsumer:
    """`tail` reads the messages of a FakeConsumer from topic "fc" (2 partitions)."""
    consumer = FakeConsumer(
        [
            FakeMessage("fc", 0, 0, forecast("k1", 1000)),
            FakeMessage("fc", 1, 7, b"not json"),
            FakeMessage("fc", 1, 8, forecast("k2", 2000, quantiles=True)),
            FakeMessage("fc", 0, 1, forecast("k1", 3000)),
        ]
    )
    monkeypatch.setattr(kafka_client, "check_topics", lambda *a, **k: {"fc": 2})
    monkeypatch.setattr(kafka_client, "make_consumer", lambda *a, **k: consumer)
    return consumer


def test_tail_json_is_one_line_per_forecast_message_with_where_it_was_read(
    fake_topic: FakeConsumer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--topic", "fc", "--json", "--max", "4", "--steps", "1"]) == 0
    got = capsys.readouterr()
    rows = [json.loads(line) for line in got.out.splitlines()]
    assert len(rows) == 3, got.out  # one per forecast message, not per target
    first, second, third = rows
    assert first == {
        "key": "k1", "ts": 1000, "model": "ab12cd34ef56", "interval": "1h",
        "interval_ms": 3_600_000,
        "forecast": {"f0": [1.23456789012, 2.5, -3.0e-7], "f1": [4.0, 5.0, 6.0]},
        "partition": 3, "offset": 1000,
        "kafka": {"topic": "fc", "partition": 0, "offset": 0, "timestamp": 1_700_000_000_000},
    }  # fmt: skip
    assert "quantiles" not in first
    assert second["key"] == "k2" and second["quantiles"]["f0"]["0.9"] == [2.0, 3.0, 1.0]
    assert second["kafka"] == {"topic": "fc", "partition": 1, "offset": 8,
                               "timestamp": 1_700_000_000_008}  # fmt: skip
    assert third["ts"] == 3000 and third["kafka"]["offset"] == 1
    err = " ".join(got.err.split())
    assert "not a forecast at partition/offset 1/7" in err
    assert "1 of 4 messages read were not forecasts" in err
    assert fake_topic.closed


def test_tail_without_json_prints_its_lines_as_before(
    fake_topic: FakeConsumer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--topic", "fc", "--max", "1", "--steps", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "1970-01-01 00:00 k1 f0 [ab12cd34ef56] +1..+3 1h: 1.235 2.5 …",
        "1970-01-01 00:00 k1 f1 [ab12cd34ef56] +1..+3 1h: 4 5 …",
    ]


class ClosedPipe:
    """stdout after the reader went away (`stream-lstm tail --json | head -1`)."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise ValueError("no file descriptor")


def test_tail_json_stops_quietly_when_the_reader_goes_away(
    fake_topic: FakeConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["tail", "--topic", "fc", "--json", "--max", "4"]) == 0
    assert fake_topic.closed


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "--help"],
        ["evaluate", "--help"],
        ["stack", "status", "--help"],
        ["tail", "--help"],
    ],
)
def test_help_documents_the_json_shape(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--json" in text and "--json:" in text
