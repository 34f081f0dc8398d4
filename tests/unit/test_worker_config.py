"""Bad worker configuration fails at start with a message that says what to fix (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stream_lstm.cli import main
from stream_lstm.config import WorkerSettings, build_settings


def worker(*flags: str) -> list[str]:
    # an unreachable broker: these must fail before any network call
    return ["worker", "--bootstrap", "127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0", *flags]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "--model / STREAM_LSTM_MODEL: Field required"),
        (["--model", "{tmp}/nope"], "model directory {tmp}/nope does not exist"),
        (["--model", "{model}", "--max-batch", "0"], "--max-batch / STREAM_LSTM_MAX_BATCH"),
        (
            ["--model", "{model}", "--features", "f0,f9"],
            "--features f0,f9 does not match the model's features f0,f1",
        ),
        (["--model", "{model}", "--device", "cuda:7"], "no CUDA device is available"),
        (
            ["--model", "{model}", "--kafka-option", "nonsense"],
            "expected key=value, got 'nonsense'",
        ),
        # options that would commit offsets past outputs never acknowledged
        (
            ["--model", "{model}", "--consumer-option", "enable.auto.commit=true"],
            "option enable.auto.commit=true (from --kafka-option or --consumer-option",
        ),
        (
            ["--model", "{model}", "--kafka-option", "enable.auto.offset.store=True"],
            "option enable.auto.offset.store=True (from --kafka-option",
        ),
        (
            ["--model", "{model}", "--producer-option", "acks=0"],
            "option acks=0 (from --kafka-option or --producer-option",
        ),
        # once an abort (SIGABRT in librdkafka) or a loop without end
        (["--model", "{model}", "--group", ""], "--group / STREAM_LSTM_GROUP"),
        (["--model", "{model}", "--input-topic", ""], "--input-topic / STREAM_LSTM_INPUT_TOPIC"),
        (
            ["--model", "{model}", "--input-topic", "t", "--dlq-topic", "t"],
            "--dlq-topic cannot be the input topic 't'",
        ),
        (
            ["--model", "{model}", "--output-topic", "events", "--dlq-topic", "events"],
            "--output-topic and --dlq-topic cannot be the input topic 'events'",
        ),
    ],
)
def test_bad_worker_configuration(
    flags: list[str],
    message: str,
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = worker(
        *[f.replace("{tmp}", str(tmp_path)).replace("{model}", str(tiny_model)) for f in flags]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err


def test_artifact_of_a_wrong_format(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "old-format"
    shutil.copytree(tiny_model, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["format"] = "stream-lstm/0"
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(worker("--model", str(bad))) == 2
    assert "not a valid stream-lstm config: format" in capsys.readouterr().err


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "w.toml"
    toml.write_text(
        '[worker]\nmodel = "m"\nmax_batch = 100\ninput_topic = "from-toml"\n'
        '[worker.kafka_options]\n"security.protocol" = "SASL_SSL"\n"sasl.password" = "hunter2"\n'
    )
    monkeypatch.setenv("STREAM_LSTM_MAX_BATCH", "200")
    monkeypatch.setenv("STREAM_LSTM_CONSUMER_OPTIONS", "session.timeout.ms=7000")
    s = build_settings(WorkerSettings, toml)
    assert s.input_topic == "from-toml" and s.max_batch == 200  # env beats TOML
    assert s.consumer_config() == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "hunter2",
        "session.timeout.ms": "7000",
    }
    assert "sasl.password" not in s.producer_options
    assert s.kafka_shown()["sasl.password"] == "***"
    assert "hunter2" not in repr(s) or "SecretStr" in repr(s.redis)
    assert s.state_namespace == "slstm:stream-lstm"
    assert "hunter2" not in str(s.redis)
