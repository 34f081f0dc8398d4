"""The benchmark workload: a model of the stated size, synthetic keyed events, topics."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream_lstm.model.artifact import build_module, save_artifact
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import ModelConfig
from stream_lstm.runtime.events import encode_event

T0 = 1_704_067_200_000


@dataclass(frozen=True)
class Workload:
    keys: int = 10_000
    features: int = 8
    hidden: int = 64
    layers: int = 2
    horizon: int = 24
    time_step: int = 48
    partitions: int = 8
    interval_ms: int = 60_000

    @property
    def feature_names(self) -> list[str]:
        return [f"f{i}" for i in range(self.features)]


def make_model(w: Workload, out: Path, seed: int = 0) -> Path:
    """An ``lstm`` artifact of the workload's size (weights initialised, not trained: the cost
    of inference does not depend on the values)."""
    if (out / "VERSION").exists():
        return out
    cfg = ModelConfig(
        features=w.feature_names,
        targets=["f0"],
        calendar=["day", "week"],
        time_step=w.time_step,
        horizon=w.horizon,
        interval_ms=w.interval_ms,
        hidden_size=w.hidden,
        num_layers=w.layers,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    n = w.features
    scaler = Scaler(columns=w.feature_names, mean=np.zeros(n), std=np.ones(n))
    save_artifact(out, cfg, build_module(cfg).eval(), scaler)
    return out


def make_events(
    w: Workload, n: int, seed: int = 0, first: int = 0, every_key_once: bool = False
) -> list[tuple[bytes, bytes]]:
    """``n`` events over ``w.keys`` keys in random key order (or each key once, in order).

    Event ``i`` has time ``T0 + (first + i)`` ms, so every key's times increase across calls
    with increasing ``first``.
    """
    rng = np.random.default_rng(seed)
    keys = np.arange(n) % w.keys if every_key_once else rng.integers(0, w.keys, n)
    vals = rng.normal(size=(n, w.features)).round(4)
    names = w.feature_names
    out = []
    for i, (k, row) in enumerate(zip(keys.tolist(), vals.tolist(), strict=True)):
        key = f"key-{k}"
        ts = T0 + first + i
        out.append((key.encode(), encode_event(key, ts, dict(zip(names, row, strict=True)))))
    return out


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(t, partitions, 1) for t in names], operation_timeout=30)
    for f in fs.values():
        f.result(30)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort clean-up
            f.result(30)


def prefill(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    """Produce every event as fast as possible; returns seconds taken."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 2_000_000})  # fmt: skip
    t = time.perf_counter()
    for i, (k, v) in enumerate(events):
        while True:
            try:
                p.produce(topic, v, k)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return time.perf_counter() - t
