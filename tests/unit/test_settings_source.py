"""One source for the worker's settings: each flag, its help, its environment variable and the
README's table come from the settings model (stream_lstm/config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from stream_lstm.cli import build_parser
from stream_lstm.commands._settings import (
    TABLE_END,
    TABLE_START,
    described,
    replace_table,
    settings_table,
)
from stream_lstm.commands.worker import worker_settings
from stream_lstm.config import ConfigError, WorkerSettings, flag_of, unknown_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def worker_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["worker", *argv])


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text
    assert replace_table(text, settings_table(WorkerSettings)) == text, "run `make docs`"


def test_every_worker_setting_has_a_flag_that_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(WorkerSettings.model_fields):
        monkeypatch.delenv(f"STREAM_LSTM_{name.upper()}", raising=False)
    names = described(WorkerSettings)
    assert set(names) == set(WorkerSettings.model_fields), "a setting without a description"
    values = {
        "max_batch": ("7", 7), "commit_interval_ms": ("250", 250), "residual_alpha": ("0.5", 0.5),
        "late_policy": ("drop", "drop"), "redis_connect_timeout_s": ("3", 3.0),
        "flush_timeout_s": ("9", 9.0), "threads": ("2", 2), "alerts_topic": ("al", "al"),
    }  # fmt: skip
    argv = ["--model", "m"]
    for name, (text, _) in values.items():
        argv += [flag_of(WorkerSettings, name), text]
    argv += ["--no-alert-interval", "--allow-unknown-features", "--producer-option", "linger.ms=5"]
    s = worker_settings(worker_args(*argv))
    for name, (_, want) in values.items():
        assert getattr(s, name) == want, name
    assert s.alert_interval is False and s.allow_unknown_features is True
    assert s.producer_options == {"linger.ms": "5"}
    assert s.model == Path("m")


def test_flags_not_given_leave_the_environment_in_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_LSTM_MAX_BATCH", "33")
    monkeypatch.setenv("STREAM_LSTM_ALERT_INTERVAL", "false")
    s = worker_settings(worker_args("--model", "m"))
    assert s.max_batch == 33 and s.alert_interval is False


def test_a_bad_value_names_the_flag_the_user_can_type() -> None:
    with pytest.raises(ConfigError) as e:
        worker_settings(worker_args("--model", "m", "--redis-outage-limit", "-1"))
    assert "--redis-outage-limit / STREAM_LSTM_REDIS_OUTAGE_LIMIT_S" in str(e.value)


def test_worker_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    help_text = capsys.readouterr().out
    for name in described(WorkerSettings):
        assert flag_of(WorkerSettings, name) in help_text, name
    assert "(default 1)" in help_text  # --threads: the default that runs, not torch's


# -- how the sources combine, and what a bad source says ------------------------------------


def test_option_maps_merge_key_by_key_across_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README keeps the password in the environment and the rest in TOML: both apply.
    Once, the environment's map replaced the TOML's, and the security settings were lost."""
    toml = tmp_path / "w.toml"
    toml.write_text(
        '[worker]\nmodel = "m"\n[worker.kafka_options]\n"security.protocol" = "SASL_SSL"\n'
        '"sasl.username" = "u"\n"client.id" = "from-toml"\n'
    )
    monkeypatch.setenv("STREAM_LSTM_KAFKA_OPTIONS", "sasl.password=pw,client.id=from-env")
    s = worker_settings(worker_args("--config", str(toml), "--kafka-option", "linger.ms=5"))
    assert s.kafka_options == {
        "security.protocol": "SASL_SSL", "sasl.username": "u", "client.id": "from-env",
        "sasl.password": "pw", "linger.ms": "5",
    }  # fmt: skip
    s = worker_settings(worker_args("--config", str(toml), "--kafka-option", "client.id=flag"))
    assert s.kafka_options["client.id"] == "flag" and s.kafka_options["sasl.password"] == "pw"


def test_a_secret_with_a_comma_in_the_environment_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "STREAM_LSTM_KAFKA_OPTIONS", "security.protocol=SASL_SSL,sasl.password=ab,cdS3cretTail"
    )
    with pytest.raises(ConfigError) as e:
        worker_settings(worker_args("--model", "m"))
    assert "S3cret" not in str(e.value) and "cd" not in str(e.value).split("KAFKA_OPTIONS")[1]
    assert "item 3 of 3 is not key=value" in str(e.value) and "JSON object form" in str(e.value)
    monkeypatch.setenv("STREAM_LSTM_KAFKA_OPTIONS", '{"sasl.password": "ab,cdS3cretTail"}')
    assert worker_settings(worker_args("--model", "m")).kafka_options == {
        "sasl.password": "ab,cdS3cretTail"
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("worker = 5\n", "config file: worker must be a table"),
        ('worker = "x"\n', "config file: worker must be a table"),
        (b"[worker]\nmodel = '\xff'\n", "is not UTF-8 text"),
        (None, "is a directory: give a TOML file"),
    ],
)
def test_a_bad_config_file_is_a_config_error(
    content: str | bytes | None, message: str, tmp_path: Path
) -> None:
    path = tmp_path
    if content is not None:
        path = tmp_path / "c.toml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        worker_settings(worker_args("--config", str(path), "--model", "m"))


def test_empty_values_that_would_mean_something_else_are_refused() -> None:
    for argv, flag in [
        (["--metrics-addr", ""], "--metrics-addr"),  # it bound every interface
        (["--model", ""], "--model"),  # it meant the current directory
    ]:
        with pytest.raises(ConfigError, match=flag):
            worker_settings(worker_args("--model", "m", *argv))


def test_variables_no_setting_reads_are_listed() -> None:
    env = {
        "STREAM_LSTM_REDIS_CONNECT_TIMEOUT": "7",  # the flag's name; the setting's ends in _S
        "STREAM_LSTM_MAX_BATCH": "9",
        "STREAM_LSTM_STACK_KAFKA_PORT": "1",
        "STREAM_LSTM_TRAIN_EPOCHS": "3",
        "STREAM_LSTM_FAILPOINT": "x",
        "STREAM_LSTM_MAXBATCH": "9",
        "PATH": "/bin",
    }
    assert unknown_variables(env) == ["STREAM_LSTM_MAXBATCH", "STREAM_LSTM_REDIS_CONNECT_TIMEOUT"]


def test_help_names_the_variable_where_it_differs_from_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "env STREAM_LSTM_REDIS_CONNECT_TIMEOUT_S" in out
    assert "env STREAM_LSTM_KAFKA_OPTIONS" in out
    assert "env STREAM_LSTM_MAX_BATCH" not in out  # the same name as the flag: not repeated


def test_train_flags_come_from_the_train_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_lstm.commands._data import data_flags
    from stream_lstm.commands._settings import given
    from stream_lstm.config import DataSettings, TrainSettings, build_settings

    monkeypatch.setenv("STREAM_LSTM_TRAIN_EPOCHS", "7")
    own = [n for n in TrainSettings.model_fields if n not in DataSettings.model_fields]
    assert set(described(TrainSettings)) >= set(own), "a train setting without a description"
    args = build_parser().parse_args(
        ["train", "--out", "o", "--no-repair", "--learned-init", "--lr", "0.1",
         "--split", "0.6,0.2,0.2", "--model", "cnn-lstm-attn"]
    )  # fmt: skip
    s = build_settings(TrainSettings, None, **data_flags(args), **given(args, args.setting_names))
    assert (s.repair, s.learned_init, s.lr, s.split, s.model, s.epochs) == (
        False, True, 0.1, [0.6, 0.2, 0.2], "cnn-lstm-attn", 7,
    )  # fmt: skip
    assert str(s.out) == "o"
