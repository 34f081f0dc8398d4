"""Settings layering (flags > env > TOML > defaults) and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.config import StackSettings, build_settings
from stream_lstm.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STREAM_LSTM_STACK_KAFKA_PORT", "STREAM_LSTM_STACK_REDIS_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = build_settings(StackSettings)
    assert (s.kafka_port, s.controller_port, s.redis_port) == (9092, 9093, 6379)


def test_flags_beat_env_beat_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[stack]\nkafka-port = 19092\nredis_port = 16379\nkafka_heap = "256m"\n')
    monkeypatch.setenv("STREAM_LSTM_STACK_REDIS_PORT", "26379")
    s = build_settings(StackSettings, toml, kafka_port=None)
    assert s.kafka_port == 19092  # from TOML (a dash in the TOML name is fine)
    assert s.redis_port == 26379  # env beats TOML
    assert s.kafka_heap == "256m"
    s = build_settings(StackSettings, toml, redis_port=36379)
    assert s.redis_port == 36379  # a given flag beats env


def test_bad_value_names_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_LSTM_STACK_KAFKA_PORT", "70000")
    with pytest.raises(ConfigError) as e:
        build_settings(StackSettings)
    assert "--kafka-port / STREAM_LSTM_STACK_KAFKA_PORT" in str(e.value)
    assert e.value.exit_code == 2


def test_ports_must_differ() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        build_settings(StackSettings, kafka_port=7000, controller_port=7000)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[stack]\nkafak_port = 1\n")
    with pytest.raises(ConfigError, match="kafak_port"):
        build_settings(StackSettings, toml)


def test_missing_or_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_settings(StackSettings, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[stack\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_settings(StackSettings, bad)
