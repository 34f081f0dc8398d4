"""Every command that talks to Kafka reads the connection like the worker: flag > environment
(STREAM_LSTM_BOOTSTRAP, STREAM_LSTM_KAFKA_OPTIONS) > the [worker] table of --config > default.

No network: the options always include ``socket.timeout.ms=abc``, which librdkafka refuses when a
client is made, before any connection; the error then shows the settings the command used (with
secrets masked).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.cli import build_parser, main
from stream_lstm.config import KafkaSettings, TopicSettings, build_settings

BROKEN = "socket.timeout.ms=abc"

COMMANDS: dict[str, list[str]] = {
    "topics create": ["topics", "create", "t1:2"],
    "topics list": ["topics", "list"],
    "tail": ["tail", "--topic", "t1", "--max", "1"],
    "dashboard": ["dashboard", "--port", "0"],
    "replay": ["replay", "--data", "{csv}", "--time-col", "ts", "--key-col", "key",
               "--features", "f0,f1", "--targets", "f0", "--topic", "t1", "--no-progress"],
    "worker": ["worker", "--model", "{model}", "--redis", "redis://127.0.0.1:1/0",
               "--metrics-port", "-1"],
}  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("BOOTSTRAP", "KAFKA_OPTIONS", "INPUT_TOPIC", "OUTPUT_TOPIC", "MODEL", "REDIS"):
        monkeypatch.delenv(f"STREAM_LSTM_{var}", raising=False)
    return monkeypatch


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_reads_the_connection_from_toml_env_and_flags(
    command: str,
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    synth_csv: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.replace("{csv}", str(synth_csv)).replace("{model}", str(tiny_model))
            for a in COMMANDS[command]]  # fmt: skip
    toml = tmp_path / "stream-lstm.toml"
    toml.write_text(
        "[worker]\n"
        'bootstrap = "from-toml:1"\n'
        'input_topic = "events-x"\n'  # a worker setting: the tools ignore what they do not use
        "max_batch = 64\n"
        "[worker.kafka_options]\n"
        '"socket.timeout.ms" = "abc"\n'
        '"sasl.password" = "toml-secret"\n'
    )

    # the TOML file given with --config
    err = run_error([*argv, "--config", str(toml)], capsys)
    assert "'bootstrap.servers': 'from-toml:1'" in err
    assert "'sasl.password': '***'" in err and "toml-secret" not in err

    # the environment beats the TOML file, and serves alone (no --config, no --bootstrap)
    clean_env.setenv("STREAM_LSTM_BOOTSTRAP", "from-env:2")
    clean_env.setenv("STREAM_LSTM_KAFKA_OPTIONS", f"{BROKEN},sasl.password=env-secret")
    for extra in (["--config", str(toml)], []):
        err = run_error([*argv, *extra], capsys)
        assert "'bootstrap.servers': 'from-env:2'" in err
        assert "from-toml" not in err and "env-secret" not in err

    # a flag beats both; option maps merge key by key (the secret from the environment stays)
    err = run_error(
        [*argv, "--config", str(toml), "--bootstrap", "from-flag:3", "--kafka-option",
         "socket.timeout.ms=xyz"], capsys,
    )  # fmt: skip
    assert "'bootstrap.servers': 'from-flag:3'" in err
    assert "'socket.timeout.ms': 'xyz'" in err and "'socket.timeout.ms': 'abc'" not in err
    assert "'sasl.password': '***'" in err and "secret" not in err


def test_without_any_source_the_default_broker_is_used(clean_env: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["topics", "list"])
    assert (args.bootstrap, args.kafka_options, args.config) == (None, None, None)
    s = build_settings(KafkaSettings, None, bootstrap=None, kafka_options=None)
    assert (s.bootstrap, s.kafka_options) == ("127.0.0.1:9092", {})


def test_the_dashboard_reads_the_worker_topics_too(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[worker]\ninput_topic = "in-toml"\noutput_topic = "out-toml"\n')
    s = build_settings(TopicSettings, toml)
    assert (s.input_topic, s.output_topic) == ("in-toml", "out-toml")
    clean_env.setenv("STREAM_LSTM_OUTPUT_TOPIC", "out-env")
    s = build_settings(TopicSettings, toml, input_topic="in-flag")
    assert (s.input_topic, s.output_topic) == ("in-flag", "out-env")


def test_bad_values_name_the_flag_and_the_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("STREAM_LSTM_KAFKA_OPTIONS", "nonsense")
    err = run_error(["topics", "list"], capsys)
    assert "--kafka-option / STREAM_LSTM_KAFKA_OPTIONS: Value error, item 1 of 1 is not key=" in err


@pytest.mark.parametrize(
    "argv",
    [["topics", "create"], ["topics", "list"], ["tail"], ["replay"], ["dashboard"], ["worker"]],
)
def test_help_says_where_values_come_from(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "STREAM_LSTM_BOOTSTRAP" in out and "STREAM_LSTM_KAFKA_OPTIONS" in out
    assert "[worker] table of the --config file" in out
    assert "its flag, else the environment" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["topics", "create", "t:0"], "bad topic spec 't:0'; use NAME or NAME:PARTITIONS"),
        (["topics", "create", "t:x"], "bad topic spec 't:x'"),
        (["topics", "create", "t:1_0"], "bad topic spec 't:1_0'"),  # int() would read 10
        (["topics", "create", "t:+3"], "bad topic spec 't:+3'"),
        (
            ["replay", "--dataset", "pedestrian", "--topic", "t", "--limit", "-1"],
            "--limit must be at least 1",
        ),
        (
            ["replay", "--dataset", "pedestrian", "--topic", "t", "--limit", "0"],
            "--limit must be at least 1",
        ),  # it replayed the whole file
        (
            ["replay", "--dataset", "pedestrian", "--topic", "t", "--rate", "-5"],
            "--rate must be 0 (as fast as possible) or more",
        ),
        (["tail", "--topic", "t", "--max", "0"], "--max must be at least 1"),
        (["tail", "--topic", "t", "--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_tool_flags_exit_2_before_any_connection(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--bootstrap", "127.0.0.1:1"]) == 2
    assert message in capsys.readouterr().err
