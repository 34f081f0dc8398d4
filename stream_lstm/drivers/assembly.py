"""What every runtime builds from :class:`WorkerSettings`: the model, the Redis state store, the
Kafka sink and the engine over them, the metrics server, and the Redis retry policy; and what
both do around the engine: start-up, the start-up log, the /healthz and /readyz probes (the
hot model reload is ``reload.py``).

The confluent-kafka worker (``confluent.py``) and the Faust agent (``faust.py``) both call
:func:`build_engine`, so the two runtimes run the same logic on the same state records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from stream_lstm.config import WorkerSettings
from stream_lstm.drivers.kafka_client import (
    KafkaSink,
    TransactionalSink,
    check_topics,
    make_admin,
    max_message_bytes,
    topic_id,
)
from stream_lstm.drivers.queries import LatestQuery
from stream_lstm.drivers.reload import ModelReloader, check_model
from stream_lstm.errors import ConfigError, StateError, StreamLSTMError
from stream_lstm.metrics import HealthServer, Query, WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.device import pick_device
from stream_lstm.model.runtime import Forecaster
from stream_lstm.redact import redact_url
from stream_lstm.runtime.commit import Offsets
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import DecoderConfig
from stream_lstm.stores.redis import RedisStateStore

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
        self.failing: str | None = None  # why the operation being retried failed (/readyz)

    def __call__(self, fn: Callable[[], T]) -> T:
        delay, start = 0.1, time.monotonic()
        while True:
            try:
                out = fn()
                self.failing = None
                return out
            except StateError as e:
                self.failing = str(e)
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
    """The engine and what it stands on, plus what both runtimes do around it: start-up
    (Redis, topics, metrics server), the start-up log, and the /healthz and /readyz probes."""

    device: torch.device
    store: RedisStateStore
    sink: KafkaSink
    engine: Engine
    health: HealthServer | None = None
    ready: bool = False
    last_beat: float = field(default_factory=time.monotonic)
    retry: RedisRetry | None = None  # the engine's Redis retries (a failing store: unready)
    # Avro/Protobuf/JSON Schema (drivers/formats.py): the registry retries and the output's
    # serializer (None: JSON)
    registry_retry: Any = None
    serializer: Any = None
    _admin: Any = None  # reads the input topic's id (a re-created topic has a new one)
    _input_topic: str = ""

    def __post_init__(self) -> None:
        self.reloader = ModelReloader(self.engine, self.device)

    @property
    def forecaster(self) -> Forecaster:
        """The model the engine runs (a hot switch replaces it)."""
        return self.engine.forecaster

    def beat(self) -> None:
        """The driver's loop is alive (read by /healthz)."""
        self.last_beat = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_beat
        return age < 60, f"loop heartbeat {age:.1f} s ago"

    def readyz(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting"
        if self.retry is not None and self.retry.failing:
            return False, f"retrying Redis: {self.retry.failing}"
        if self.registry_retry is not None and self.registry_retry.failing:
            return False, f"retrying the Schema Registry: {self.registry_retry.failing}"
        if self.store.replicas_short:
            return False, "fewer Redis replicas than --redis-min-replicas: nothing can commit"
        if not self.store.ping():
            return False, "Redis unreachable"
        return True, "ready"

    @property
    def metrics_port(self) -> int | None:
        return self.health.port if self.health else None

    def maybe_reload(
        self, s: WorkerSettings, metrics: WorkerMetrics, commit: Callable[[Offsets], None]
    ) -> bool:
        """A hot model switch when ``--model`` holds a new version (:class:`ModelReloader`)."""
        return self.reloader.maybe_reload(s, metrics, commit)

    def start(self, s: WorkerSettings, metrics: WorkerMetrics) -> int:
        """Connect Redis, start the state writer, check the topics (and that a forecast fits
        in them), serve metrics; returns the input topic's partition count."""
        self.store.connect(retry_s=s.redis_connect_timeout_s)
        self.engine.start_writer()
        outputs = [s.output_topic, s.dlq_topic] + ([s.alerts_topic] if s.alerts_topic else [])
        partitions = check_topics(s.bootstrap, s.kafka_options, [s.input_topic, *outputs])
        self._admin = make_admin(s.bootstrap, s.kafka_options)
        self._input_topic = s.input_topic
        self.engine.set_topic_id(topic_id(self._admin, s.input_topic))
        if isinstance(self.sink, TransactionalSink):
            self.sink.start()  # aborts what a crashed instance with this id left open
        self.engine.topic_id_now = lambda topic: topic_id(self._admin, topic)
        limits = max_message_bytes(self._admin, outputs)
        limit = min(self.sink.max_message_bytes, *limits.values())
        self.engine.cfg = replace(self.engine.cfg, max_output_bytes=limit)
        largest = self.engine.largest_forecast_bytes(s.max_key_bytes)
        if largest > limit:
            raise ConfigError(
                f"a forecast of model {self.forecaster.version} can take {largest} bytes, more "
                f"than the output topics and producer accept ({limit} bytes: max.message.bytes "
                f"of {', '.join(f'{t}={n}' for t, n in limits.items())}, producer "
                f"message.max.bytes={self.sink.max_message_bytes}); raise those limits or lower "
                "--max-key-bytes"
            )
        if self.registry_retry is not None:
            self._check_registry(s)
        queries: dict[str, Query] = {"/latest": LatestQuery(s, self.engine)}
        self.health = serve_metrics(s, metrics, self.healthy, self.readyz, queries)
        return partitions[s.input_topic]

    def _check_registry(self, s: WorkerSettings) -> None:
        """The registry answers (a wrong URL would refuse every event as an unknown schema),
        and the output's schema is registered (an incompatible one is refused now)."""
        from stream_lstm.drivers.formats import RegistryUnavailableError, is_unavailable

        retry = self.registry_retry
        try:
            retry.limit_s = max(s.redis_connect_timeout_s, 1e-3)  # (0: fail at once)
            retry(retry.client.get_subjects)
            if self.serializer is not None:
                retry(self.serializer.register)
        except RegistryUnavailableError as e:
            raise ConfigError(f"{e} (at start; --redis-connect-timeout waits longer)") from None
        except Exception as e:
            if is_unavailable(e):
                raise
            raise ConfigError(
                f"Schema Registry {s.registry_shown()['url']}: {type(e).__name__}: {e} (is the "
                "URL the registry's Confluent-compatible API? Apicurio: …/apis/ccompat/v7)"
            ) from None
        finally:
            retry.limit_s = s.registry_outage_limit_s
        log.info(
            "formats: input %s, output %s; Schema Registry %s",
            s.input_format, s.output_format, s.registry_shown(),
        )  # fmt: skip

    def check_input_topic(self) -> None:
        """Every few seconds: a new topic id means the input topic was re-created even if the
        consumer's offsets did not go back (the engine resets its offset guard)."""
        if self._admin is None:
            return
        try:
            now = topic_id(self._admin, self._input_topic, timeout_s=2.0)
        except StreamLSTMError as e:
            log.debug("input topic id: %s", e)
            return
        if now != self.engine.topic_id and now != bytes(16):
            self.engine.input_topic_recreated(self._input_topic, now, "found by the periodic check")

    def log_started(self, s: WorkerSettings, runtime: str, partitions: int) -> None:
        cfg = self.forecaster.config
        url = f"http://{s.metrics_addr}:{self.health.port}/metrics" if self.health else "off"
        log.info(
            "%s up: model %s (%s, %s → %s, H=%d) on %s",
            runtime, self.forecaster.version, cfg.kind, ",".join(cfg.features),
            ",".join(cfg.targets), cfg.horizon, self.device,
        )  # fmt: skip
        log.info(
            "%s (%d partitions) → %s, dead letters → %s; group %s; metrics %s",
            s.input_topic, partitions, s.output_topic, s.dlq_topic, s.group, url,
        )  # fmt: skip
        if isinstance(self.sink, TransactionalSink):
            log.info(
                "exactly-once: one Kafka transaction per commit cycle as %r; downstream "
                "consumers must read with isolation.level=read_committed",
                self.sink.transactional_id,
            )
        log.info(
            "state in Redis %s under %s (previous model version: %s)",
            redact_url(s.redis.get_secret_value()), s.state_namespace, self.store.previous_version,
        )  # fmt: skip


def build_engine(
    s: WorkerSettings, metrics: WorkerMetrics, stopping: Callable[[], bool]
) -> EngineParts:
    """Load the model, check it against the settings, and wire the engine to Redis and Kafka,
    retrying Redis outages (``stopping()``: a stop was requested; give up sooner).

    Nothing connects yet: :meth:`EngineParts.start` does.
    """
    retry = RedisRetry(s, metrics, stopping)
    # one intra-op thread by default: a tick's model call is small, and OpenMP threads that
    # spin-wait on a 2-core machine shared with the broker stall the loop (measured)
    torch.set_num_threads(s.threads or 1)
    device = pick_device(s.device)
    forecaster = Forecaster(load_artifact(s.model), device)
    check_model(s, forecaster)
    cfg = forecaster.config
    store = RedisStateStore(
        s.redis.get_secret_value(),
        s.state_namespace,
        layout_for(forecaster, s.scoring()),
        ttl_ms=s.state_ttl_s * 1000,
        min_replicas=s.redis_min_replicas,
        wait_timeout_s=s.redis_wait_timeout_s,
        on_rtt=lambda op, sec: metrics.redis_rtt.labels(op=op).observe(sec),
    )
    sink = (
        TransactionalSink(
            s.bootstrap,
            {"transaction.timeout.ms": str(s.transaction_timeout_ms()), **s.producer_config()},
            s.flush_timeout_s,
            s.transactional_id_or_default(),
        )
        if s.exactly_once
        else KafkaSink(s.bootstrap, s.producer_config(), s.flush_timeout_s)
    )
    registry_retry, serializer, translate = None, None, None
    engine_sink: Any = sink
    if s.input_format != "json" or s.output_format != "json":
        from stream_lstm.drivers.formats import (
            EventTranslator,
            ForecastSerializer,
            RegistryRetry,
            SerializingSink,
            registry_client,
        )

        client = registry_client(s.registry_conf())
        registry_retry = RegistryRetry(
            s.registry_outage_limit_s,
            stopping,
            on_retry=metrics.registry_retries.inc,
            url=s.registry_shown()["url"],
            client=client,
        )
        if s.input_format != "json":
            translate = EventTranslator(s.input_format, client, s.input_topic, registry_retry)
        if s.output_format != "json":
            serializer = ForecastSerializer(s.output_format, client, s.output_topic)
            engine_sink = SerializingSink(sink, serializer, registry_retry)
    engine = Engine(
        forecaster,
        store,
        engine_sink,
        metrics,
        EngineConfig(
            s.output_topic, s.dlq_topic, s.late_policy, s.scoring(), s.alerts_topic or None
        ),
        DecoderConfig(
            features=tuple(cfg.features),
            allowed_extra=tuple(cfg.targets),
            allow_unknown=s.allow_unknown_features,
            max_message_bytes=s.max_message_bytes,
            max_key_bytes=s.max_key_bytes,
            max_future_ms=s.max_future_ms,
            missing=s.missing,
            translate=translate,
        ),
        retry=retry,
    )
    parts = EngineParts(
        device, store, sink, engine, retry=retry, registry_retry=registry_retry,
        serializer=serializer,
    )  # fmt: skip
    retry.beat = parts.beat  # a loop waiting for Redis is alive, not hung
    if registry_retry is not None:
        registry_retry.beat = parts.beat
    return parts


def serve_metrics(
    s: WorkerSettings,
    metrics: WorkerMetrics,
    healthy: Callable[[], tuple[bool, str]],
    ready: Callable[[], tuple[bool, str]],
    queries: dict[str, Query] | None = None,
) -> HealthServer | None:
    """Start /metrics, /healthz, /readyz and the ``queries`` on ``metrics_addr:metrics_port``
    (-1: none)."""
    if s.metrics_port < 0:
        return None
    try:
        server = HealthServer(
            metrics.registry, s.metrics_addr, s.metrics_port, healthy, ready, queries
        )
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
