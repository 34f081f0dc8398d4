"""What every runtime builds from :class:`WorkerSettings`: the model, the Redis state store, the
Kafka sink and the engine over them, the metrics server, and the Redis retry policy.

The confluent-kafka worker (``worker.py``) and the Faust agent (``faust_app.py``) both call
:func:`build_engine`, so the two runtimes run the same logic on the same state records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from stream_lstm.config import WorkerSettings
from stream_lstm.engine import Engine, EngineConfig, layout_for
from stream_lstm.errors import ConfigError, StateError
from stream_lstm.events import DecoderConfig
from stream_lstm.kafka import KafkaSink
from stream_lstm.metrics import HealthServer, WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.state_redis import RedisStateStore
from stream_lstm.train import pick_device

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisRetry:
    """Retry a Redis operation with backoff while Redis is down (offsets are not committed
    meanwhile); give up after ``redis_outage_limit_s``, or 10 s once a stop is requested."""

    def __init__(
        self,
        s: WorkerSettings,
        metrics: WorkerMetrics,
        stopping: Callable[[], bool],
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.limit = s.redis_outage_limit_s
        self.metrics = metrics
        self.stopping = stopping
        self.beat = beat

    def __call__(self, fn: Callable[[], T]) -> T:
        delay, start = 0.1, time.monotonic()
        while True:
            try:
                return fn()
            except StateError as e:
                waited = time.monotonic() - start
                if (self.limit and waited > self.limit) or (self.stopping() and waited > 10):
                    raise StateError(f"Redis still failing after {waited:.0f} s: {e}") from None
                self.metrics.redis_retries.inc()
                log.warning("Redis: %s; retrying in %.1f s", e, delay)
                self.beat()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


@dataclass
class EngineParts:
    forecaster: Forecaster
    device: torch.device
    store: RedisStateStore
    sink: KafkaSink
    engine: Engine


def build_engine(
    s: WorkerSettings, metrics: WorkerMetrics, retry: Callable[[Callable[[], T]], T]
) -> EngineParts:
    """Load the model, check it against the settings, and wire the engine to Redis and Kafka.

    Nothing connects yet: the store connects in ``store.connect``, the sink's producer lazily.
    """
    # one intra-op thread by default: a tick's model call is small, and OpenMP threads that
    # spin-wait on a 2-core machine shared with the broker stall the loop (measured)
    torch.set_num_threads(s.threads or 1)
    device = pick_device(s.device)
    forecaster = Forecaster(load_artifact(s.model), device)
    cfg = forecaster.config
    if s.features is not None and list(s.features) != list(cfg.features):
        raise ConfigError(
            f"--features {','.join(s.features)} does not match the model's features "
            f"{','.join(cfg.features)} (model {forecaster.version} in {s.model}); "
            "deploy a model trained on these features, or fix the setting"
        )
    store = RedisStateStore(
        s.redis.get_secret_value(),
        s.state_namespace,
        layout_for(forecaster),
        ttl_ms=s.state_ttl_s * 1000,
        on_rtt=lambda op, sec: metrics.redis_rtt.labels(op=op).observe(sec),
    )
    sink = KafkaSink(s.bootstrap, s.producer_config(), s.flush_timeout_s)
    engine = Engine(
        forecaster,
        store,
        sink,
        metrics,
        EngineConfig(s.output_topic, s.dlq_topic, s.late_policy),
        DecoderConfig(
            features=tuple(cfg.features),
            allowed_extra=tuple(cfg.targets),
            allow_unknown=s.allow_unknown_features,
            max_message_bytes=s.max_message_bytes,
            max_key_bytes=s.max_key_bytes,
            max_future_ms=s.max_future_ms,
        ),
        retry=retry,
    )
    return EngineParts(forecaster, device, store, sink, engine)


def serve_metrics(
    s: WorkerSettings,
    metrics: WorkerMetrics,
    healthy: Callable[[], tuple[bool, str]],
    ready: Callable[[], tuple[bool, str]],
) -> HealthServer | None:
    """Start /metrics, /healthz and /readyz on ``metrics_addr:metrics_port`` (-1: none)."""
    if s.metrics_port < 0:
        return None
    try:
        server = HealthServer(metrics.registry, s.metrics_addr, s.metrics_port, healthy, ready)
    except OSError as e:
        raise ConfigError(
            f"cannot serve metrics on {s.metrics_addr}:{s.metrics_port}: {e}"
        ) from None
    server.start()
    return server


def counts(metrics: WorkerMetrics, cached_keys: int) -> str:
    """A one-line progress summary from the metrics."""
    get = metrics.registry.get_sample_value
    dead = sum(
        s.value
        for metric in metrics.dead_letters.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    )
    return (
        f"{get('stream_lstm_events_in_total') or 0:.0f} events in, "
        f"{get('stream_lstm_forecasts_out_total') or 0:.0f} forecasts out, "
        f"{dead:.0f} dead letters, {cached_keys} cached keys"
    )
