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
from stream_lstm.config import ConfigError, WorkerSettings, flag_of

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
