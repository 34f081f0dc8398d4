"""Every Kafka reader the project ships consumes with ``isolation.level=read_committed``, so the
forecasts, dead letters and alerts of an aborted transaction are never shown: the consumer
settings each reader builds, checked without a broker (librdkafka's Consumer is replaced)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError

from stream_lstm.cli import main
from stream_lstm.dashboard.feed import KafkaFeed
from stream_lstm.dashboard.store import SeriesStore
from stream_lstm.drivers import kafka_client
from stream_lstm.kafka_readers import READER_DEFAULTS, reader_options

COMMITTED = "read_committed"


class FakeConsumer:
    """A Consumer that records its settings and reads nothing: each assigned partition at its end."""

    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        FakeConsumer.built.append(dict(conf))
        self._eof: list[Any] = []

    def assign(self, partitions: list[Any]) -> None:
        eof = KafkaError(KafkaError._PARTITION_EOF)
        self._eof = [
            SimpleNamespace(error=lambda: eof, partition=lambda p=tp.partition: p)
            for tp in partitions
        ]

    def subscribe(self, topics: list[str]) -> None:
        pass

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        out, self._eof = self._eof, []
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions={0: None, 1: None})})

    def get_watermark_offsets(self, tp: Any, timeout: float = -1) -> tuple[int, int]:
        return 0, 7

    def close(self) -> None:
        pass


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The settings of every Consumer made through ``make_consumer`` (or the fake directly)."""
    FakeConsumer.built = []
    monkeypatch.setattr(kafka_client, "Consumer", FakeConsumer)
    for var in ("BOOTSTRAP", "KAFKA_OPTIONS"):
        monkeypatch.delenv(f"STREAM_LSTM_{var}", raising=False)
    return FakeConsumer.built


def test_reader_defaults_ask_for_committed_reads_and_user_options_win() -> None:
    assert READER_DEFAULTS["isolation.level"] == COMMITTED
    assert reader_options()["isolation.level"] == COMMITTED
    assert reader_options({"security.protocol": "SSL"})["isolation.level"] == COMMITTED
    mine = reader_options({"isolation.level": "read_uncommitted"})
    assert mine["isolation.level"] == "read_uncommitted", "a pass-through option overrides"


def tail(monkeypatch: pytest.MonkeyPatch, *more: str) -> int:
    monkeypatch.setattr(kafka_client, "check_topics", lambda *a, **k: {"fc": 2})
    args = ["tail", "--topic", "fc", "--bootstrap", "127.0.0.1:1", "--timeout", "0.01", *more]
    return main(args)


def test_tail_reads_committed(monkeypatch: pytest.MonkeyPatch, built: list[dict[str, Any]]) -> None:
    assert tail(monkeypatch, "--kafka-option", "client.id=me") == 0
    [conf] = built
    assert conf["isolation.level"] == COMMITTED
    assert conf["client.id"] == "me" and conf["group.id"].startswith("stream-lstm-tail-")


def test_tail_kafka_option_still_overrides(
    monkeypatch: pytest.MonkeyPatch, built: list[dict[str, Any]]
) -> None:
    assert tail(monkeypatch, "--kafka-option", "isolation.level=read_uncommitted") == 0
    assert built[0]["isolation.level"] == "read_uncommitted"


@pytest.mark.parametrize(
    ("options", "level"),
    [({}, COMMITTED), ({"isolation.level": "read_uncommitted"}, "read_uncommitted")],
)
def test_dashboard_feed_reads_committed(
    built: list[dict[str, Any]], options: dict[str, str], level: str
) -> None:
    feed = KafkaFeed(SeriesStore(), "127.0.0.1:1", "in", "out", {"in": 1, "out": 1}, False, options)
    feed.start()
    feed.stop()
    [conf] = built
    assert conf["isolation.level"] == level
    assert conf["enable.auto.commit"] == "false"


def test_demo_view_reads_committed() -> None:
    from stream_lstm.demo import view_config

    conf = view_config("127.0.0.1:1", "demo-view-x")
    assert conf["isolation.level"] == COMMITTED
    assert conf["group.id"] == "demo-view-x" and conf["bootstrap.servers"] == "127.0.0.1:1"


def test_benchmark_readers_read_committed(
    monkeypatch: pytest.MonkeyPatch, built: list[dict[str, Any]]
) -> None:
    from stream_lstm.benchmark import run, systems

    assert systems.consume_all("127.0.0.1:1", "out") == []
    monkeypatch.setattr(run, "Consumer", FakeConsumer)
    assert run._watermarks("127.0.0.1:1", "in", 2) == {0: 7, 1: 7}
    assert [c["isolation.level"] for c in built] == [COMMITTED, COMMITTED]
    assert built[0]["enable.partition.eof"] == "true"
