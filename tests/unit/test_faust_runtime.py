"""The Faust runtime's pieces that need no broker: option mapping and event conversion."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faust
import numpy as np
import pytest

from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.drivers.faust import batch_of, faust_options
from stream_lstm.errors import ConfigError


def settings(**kw: object) -> WorkerSettings:
    return build_settings(WorkerSettings, None, model=Path("m"), **kw)


def test_consumer_options_map_to_faust_settings() -> None:
    conf = faust_options(
        settings(consumer_options={"session.timeout.ms": "6000", "auto.offset.reset": "latest"})
    )
    assert conf["broker_session_timeout"] == 6.0
    assert conf["consumer_auto_offset_reset"] == "latest"


def test_unsupported_options_are_refused_with_the_supported_list() -> None:
    with pytest.raises(ConfigError, match=r"fetch\.wait\.max\.ms.*supported: .*session\.timeout"):
        faust_options(settings(consumer_options={"fetch.wait.max.ms": "10"}))
    with pytest.raises(ConfigError, match=r"socket\.keepalive\.enable"):
        faust_options(settings(kafka_options={"socket.keepalive.enable": "true"}))


def test_sasl_options_become_faust_credentials_and_need_both_secrets() -> None:
    conf = faust_options(
        settings(
            kafka_options={
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": "u",
                "sasl.password": "p",
            }
        )
    )
    creds = conf["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "u" and creds.mechanism.value == "SCRAM-SHA-256"
    with pytest.raises(ConfigError, match=r"needs sasl\.username and sasl\.password"):
        faust_options(settings(kafka_options={"security.protocol": "SASL_SSL"}))


def test_events_become_engine_columns_with_millisecond_timestamps() -> None:
    def event(p: int, o: int, ts: float, key: bytes | None, value: bytes | None) -> object:
        msg = SimpleNamespace(partition=p, offset=o, timestamp=ts, key=key, value=value)
        return SimpleNamespace(message=msg)

    b = batch_of([event(1, 7, 1700000000.123, b"k", b"{}"), event(0, 3, 1.5, None, None)], "t")  # type: ignore[list-item]
    assert b.topic == "t" and len(b) == 2
    assert b.keys == [b"k", None] and b.values == [b"{}", None]
    np.testing.assert_array_equal(b.partitions, [1, 0])
    np.testing.assert_array_equal(b.offsets, [7, 3])
    np.testing.assert_array_equal(b.timestamps, [1700000000123, 1500])
