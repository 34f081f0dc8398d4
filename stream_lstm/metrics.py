"""Worker metrics, built against an injected registry (no module-level globals), and the HTTP
server for ``/metrics``, ``/healthz`` and ``/readyz``.

Bucket choices:
- tick size: powers of 4 from 1 to 65,536 events, the range ``--max-batch`` spans.
- stage and tick durations: 100 µs to 10 s, roughly ×2.5 per bucket: a tick's model call is
  sub-millisecond at small sizes, a commit cycle can take seconds when Redis is slow.
- end-to-end latency: 1 ms to 60 s: the objective is tens of milliseconds, but a replay of
  old data or a restart after an outage produces minutes-old events that must still land in a
  bucket rather than only in +Inf.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

TICK_SIZE_BUCKETS = tuple(float(4**i) for i in range(9))  # 1 … 65,536
STAGE_BUCKETS = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
STAGES = (
    "decode", "state_load", "model", "score", "publish", "commit", "flush", "snapshot",
    "snapshot_rows",
)  # fmt: skip


class BatchHistogram(Collector):
    """A histogram fed a whole array per call (``observe_many``): one ``searchsorted`` per tick
    instead of one Python call per event. Exposed like any Prometheus histogram."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cum = np.cumsum(self._counts)
            total = self._sum
        buckets = [(repr(float(b)), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", float(cum[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class WorkerMetrics:
    """Every metric the worker exports. Names carry units; see docs/metrics in the README."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.events_in = Counter(
            "stream_lstm_events_in_total", "Input messages consumed", registry=r
        )
        self.events_applied = Counter(
            "stream_lstm_events_applied_total", "Events applied to a key's state", registry=r
        )
        self.forecasts_out = Counter(
            "stream_lstm_forecasts_out_total", "Forecast messages produced", registry=r
        )
        self.dead_letters = Counter(
            "stream_lstm_dead_letters_total",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.late_events = Counter(
            "stream_lstm_late_events_total",
            "Events older than their key's last applied time",
            registry=r,
        )
        self.replayed = Counter(
            "stream_lstm_replayed_skipped_total",
            "Events at or below their key's stored offset, skipped (already applied)",
            registry=r,
        )
        self.catch_up_events = Counter(
            "stream_lstm_catch_up_events_total",
            "Exactly-once recovery: events of committed transactions applied to state again "
            "(their stored states trailed the committed offset), without output",
            registry=r,
        )
        self.transactions = Counter(
            "stream_lstm_transactions_total",
            "Exactly-once: Kafka transactions committed or aborted",
            ["outcome"],
            registry=r,
        )
        self.tick_size = Histogram(
            "stream_lstm_tick_size_events",
            "Messages per tick",
            buckets=TICK_SIZE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "stream_lstm_tick_stage_seconds",
            "Seconds per tick stage (decode, state_load, model, score, publish) and in the hot "
            "loop per commit cycle (commit = flush + snapshot of the dirty states; the Redis "
            "write runs in the background)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.latency = BatchHistogram(
            "stream_lstm_end_to_end_latency_seconds",
            "Input message timestamp to the forecast being handed to the producer",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.lag = Gauge(
            "stream_lstm_consumer_lag_messages",
            "High watermark minus position",
            ["partition"],
            registry=r,
        )
        self.cached_keys = Gauge(
            "stream_lstm_cached_keys", "Keys whose state is cached", registry=r
        )
        self.redis_rtt = Histogram(
            "stream_lstm_redis_round_trip_seconds",
            "Redis round trips",
            ["op"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.state_loaded = Counter(
            "stream_lstm_state_loads_total",
            "Keys loaded from Redis, by outcome",
            ["outcome"],
            registry=r,
        )
        self.state_written = Counter(
            "stream_lstm_state_writes_total", "Key states written to Redis", registry=r
        )
        self.state_refused = Counter(
            "stream_lstm_state_writes_refused_total",
            "State writes refused because Redis held a newer offset (another worker owns the key)",
            registry=r,
        )
        self.commits = Counter(
            "stream_lstm_commit_cycles_total", "Commit cycles", ["outcome"], registry=r
        )
        self.redis_retries = Counter(
            "stream_lstm_redis_retries_total",
            "Redis operations retried after a failure",
            registry=r,
        )
        self.registry_retries = Counter(
            "stream_lstm_schema_registry_retries_total",
            "Schema Registry calls retried because the registry could not be reached",
            registry=r,
        )
        self.model = Info("stream_lstm_model", "The model artifact in use", registry=r)
        self.model_switches = Counter(
            "stream_lstm_model_switches_total", "Model versions switched to at run time", registry=r
        )
        self.model_reload_failures = Counter(
            "stream_lstm_model_reload_failures_total",
            "New artifacts at the model path that could not be switched to (see the log)",
            registry=r,
        )
        self.assigned = Gauge("stream_lstm_assigned_partitions", "Partitions assigned", registry=r)
        # what the offset guard, the output path and the store can meet besides the usual
        self.keys_moved = Counter(
            "stream_lstm_keys_moved_total",
            "Keys whose events now come from another partition or another incarnation of the "
            "input topic than their stored state's (the offset guard is reset, time orders them)",
            registry=r,
        )
        self.input_resets = Counter(
            "stream_lstm_input_offset_resets_total",
            "Input partitions whose offsets went back without the worker seeking (outcome "
            "recreated: the topic was deleted and re-created; same_topic: e.g. a truncated log)",
            ["outcome"],
            registry=r,
        )
        self.state_wipes = Counter(
            "stream_lstm_state_wipes_total",
            "Times the state store was found wiped (its epoch marker gone or changed)",
            registry=r,
        )
        self.publish_failures = Counter(
            "stream_lstm_publish_failures_total",
            "Forecasts, dead letters or alerts not acknowledged (each time, the worker rewinds "
            "to the last committed offsets instead of committing past them)",
            registry=r,
        )
        self.missing_filled = Counter(
            "stream_lstm_missing_values_filled_total",
            "Feature values an event did not send, carried forward from the key's last event "
            "(--missing ffill)",
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "stream_lstm_dead_letters_truncated_total",
            "Dead letters whose original value was too large to publish and was truncated",
            registry=r,
        )
        # live forecast scoring: summed per target and horizon step, never per key
        # (MAE = abs_error / scored, RMSE = sqrt(squared_error / scored), coverage = hits / scored)
        by_step = ["target", "step"]
        self.forecast_scored = Counter(
            "stream_lstm_forecast_scored_total",
            "Forecasts scored against the actual that arrived for their time",
            by_step,
            registry=r,
        )
        self.forecast_abs_error = Counter(
            "stream_lstm_forecast_abs_error_total",
            "Sum of |actual - forecast| of the scored forecasts (target units)",
            by_step,
            registry=r,
        )
        self.forecast_sq_error = Counter(
            "stream_lstm_forecast_squared_error_total",
            "Sum of (actual - forecast)^2 of the scored forecasts (target units squared)",
            by_step,
            registry=r,
        )
        self.forecast_interval_hits = Counter(
            "stream_lstm_forecast_interval_hits_total",
            "Scored forecasts whose interval (lowest to highest quantile) held the actual",
            by_step,
            registry=r,
        )
        self.alerts = Counter(
            "stream_lstm_alerts_total",
            "Excursion alerts: open (a key's actuals left the expected band), close (back in it)",
            ["state"],
            registry=r,
        )
        for state in ("open", "close"):
            self.alerts.labels(state=state)
        for reason in ("late", "duplicate"):
            self.dead_letters.labels(reason=reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)


# a query endpoint: the query string's parameters → (HTTP status, body, content type)
Query = Callable[[dict[str, list[str]]], tuple[int, bytes, str]]


class HealthServer:
    """``/metrics`` (Prometheus text), ``/healthz`` (the loop is alive), ``/readyz`` (serving),
    and query endpoints (``/latest``: a key's latest forecast, from the state store)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        addr: str,
        port: int,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        queries: dict[str, Query] | None = None,
    ) -> None:
        routes = dict(queries or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path in routes:
                    try:
                        code, body, ctype = routes[path](parse_qs(query))
                    except Exception as e:  # a query must never take the server down
                        log.warning("%s failed: %s: %s", path, type(e).__name__, e)
                        code, ctype = 503, "application/json"
                        body = orjson.dumps({"error": f"{type(e).__name__}: {e}"})
                elif path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/readyz"):
                    ok, why = (healthy if path == "/healthz" else ready)()
                    body, ctype, code = (why + "\n").encode(), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the prober gave up waiting (a slow Redis ping): nothing to say

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: scrapes every few seconds would flood the log

        self.httpd = ThreadingHTTPServer((addr, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
