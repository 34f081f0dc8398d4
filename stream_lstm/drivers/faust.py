"""The stream worker's engine as a Faust agent (faust-streaming).

For teams that run Faust apps: mount the forecaster in your own app, or run it alone with
``stream-lstm worker --runtime faust``. Either way it is the SAME engine as the confluent-kafka
worker (``runtime/engine.py``): same Redis records, one batched model call per tick, the same
forecasts, dead letters and metrics. Only the driver differs::

    import faust
    from stream_lstm.config import WorkerSettings
    from stream_lstm.drivers.faust import FaustForecaster

    app = faust.App("forecasts", broker="kafka://127.0.0.1:9092", web_enabled=False)
    forecaster = FaustForecaster(app, WorkerSettings(
        model="models/pedestrian", input_topic="events", output_topic="forecasts",
        dlq_topic="events-dlq", redis="redis://127.0.0.1:6379/0", group="forecasts"))

    if __name__ == "__main__":
        app.main()   # python myapp.py worker

How offsets stay safe: the agent consumes with ``stream.noack_take(max_batch, within)``, so Faust
does not acknowledge anything by itself (``stream.take`` would acknowledge each tick as soon as
the loop body returns, before its forecasts are flushed and its states written). An event is
acknowledged only after a commit cycle (producer flush → Redis write) covered its offset; Faust
then commits the highest contiguous acknowledged offset per partition. On a rebalance or at
shutdown Faust waits for every delivered event to be acknowledged (``stream_wait_empty``), and a
commit task here runs the cycle at once while it waits. Events of partitions that were revoked
meanwhile are neither applied nor acknowledged: their new owner processes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faust
from faust.types import TP, EventT, StreamT

from stream_lstm.config import WorkerSettings
from stream_lstm.drivers.assembly import build_engine, counts
from stream_lstm.errors import ConfigError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.runtime.commit import Offsets
from stream_lstm.runtime.events import MessageBatch

log = logging.getLogger(__name__)

# librdkafka settings of the worker that Faust's own (aiokafka) consumer understands
_CONSUMER_MAP: dict[str, tuple[str, Callable[[str], Any]]] = {
    "session.timeout.ms": ("broker_session_timeout", lambda v: int(v) / 1000),
    "heartbeat.interval.ms": ("broker_heartbeat_interval", lambda v: int(v) / 1000),
    "max.poll.interval.ms": ("broker_max_poll_interval", lambda v: int(v) / 1000),
    "auto.offset.reset": ("consumer_auto_offset_reset", str),
    "client.id": ("broker_client_id", str),
}
_SECURITY_KEYS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
}


def faust_options(s: WorkerSettings) -> dict[str, Any]:
    """Faust settings from the worker's librdkafka options; unknown ones are refused clearly."""
    conf: dict[str, Any] = {"consumer_auto_offset_reset": "earliest"}
    for k, v in s.consumer_options.items():
        if k not in _CONSUMER_MAP:
            raise ConfigError(
                f"consumer option {k!r} is not supported by --runtime faust "
                f"(supported: {', '.join(sorted(_CONSUMER_MAP))}); drop it or use the default "
                "runtime"
            )
        name, conv = _CONSUMER_MAP[k]
        conf[name] = conv(v)
    unknown = sorted(set(s.kafka_options) - _SECURITY_KEYS)
    if unknown:
        raise ConfigError(
            f"Kafka option(s) {', '.join(unknown)} are not supported by --runtime faust "
            f"(supported: {', '.join(sorted(_SECURITY_KEYS))})"
        )
    creds = _credentials(s.kafka_options)
    if creds is not None:
        conf["broker_credentials"] = creds
    return conf


def _credentials(o: dict[str, str]) -> Any:
    protocol = o.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=o.get("ssl.ca.location"))
        if "ssl.certificate.location" in o:
            context.load_cert_chain(
                o["ssl.certificate.location"], o.get("ssl.key.location"), o.get("ssl.key.password")
            )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism = o.get("sasl.mechanism") or o.get("sasl.mechanisms") or "PLAIN"
        if "sasl.username" not in o or "sasl.password" not in o:
            raise ConfigError(f"security.protocol={protocol} needs sasl.username and sasl.password")
        return faust.SASLCredentials(
            username=o["sasl.username"],
            password=o["sasl.password"],
            mechanism=mechanism.upper(),
            ssl_context=context,
        )
    raise ConfigError(
        f"security.protocol={protocol} is not supported by --runtime faust "
        "(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
    )


def batch_of(events: Sequence[EventT], topic: str) -> MessageBatch:
    """A tick's Faust events as the engine's columns (Faust's timestamps are seconds)."""
    msgs = [e.message for e in events]
    return MessageBatch.columns(
        topic,
        len(msgs),
        (m.key for m in msgs),
        (m.value for m in msgs),
        (m.partition for m in msgs),
        (m.offset for m in msgs),
        (round((m.timestamp or 0.0) * 1000) for m in msgs),
    )


class FaustForecaster:
    """Mounts the engine on a Faust app: an agent on the input topic, a commit task, and
    handlers for rebalances and shutdown. Build it before the app starts."""

    def __init__(
        self, app: faust.App, s: WorkerSettings, metrics: WorkerMetrics | None = None
    ) -> None:
        self.app, self.s = app, s
        self.metrics = metrics or WorkerMetrics()
        self.crashed: BaseException | None = None
        self._stopping = threading.Event()
        self.parts = parts = build_engine(s, self.metrics, self._stopping.is_set)
        self.store, self.sink, self.engine = parts.store, parts.sink, parts.engine
        self.device = parts.device
        self._started: asyncio.Future[None] | None = None
        self._closed = threading.Event()  # set at shutdown: no engine calls after it
        self._lock = asyncio.Lock()  # one engine call at a time (agent, commit task, rebalance)
        self._stream: StreamT | None = None
        self._held: dict[tuple[str, int], deque[EventT]] = defaultdict(deque)
        self._done: Offsets = {}  # offsets whose commit cycle finished (next offset to read)
        self._seen: dict[tuple[str, int], int] = {}  # last offset handed to the engine
        self._last_cycle = time.monotonic()
        self.topic = app.topic(
            s.input_topic,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.agent = app.agent(self.topic, name=f"stream-lstm.{s.input_topic}")(self._agent)
        app.task(self._commit_task)
        # mode's stubs type receivers too narrowly for bound async methods
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]

    # -- start-up ----------------------------------------------------------------------------
    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await asyncio.to_thread(self._start)
                self._started.set_result(None)
            except BaseException as e:
                self._started.set_exception(e)
                self.crashed = e
                await self.app.crash(e)
                raise
        await asyncio.shield(self._started)

    def _start(self) -> None:
        partitions = self.parts.start(self.s, self.metrics)
        self.parts.log_started(self.s, f"Faust app {self.app.conf.id}", partitions)
        self.parts.ready = True

    @property
    def metrics_port(self) -> int | None:
        return self.parts.metrics_port

    # -- the agent: one tick per take() ------------------------------------------------------
    async def _agent(self, stream: StreamT) -> None:
        await self._ensure_started()
        self._stream = stream
        within = max(self.s.max_wait_ms, 1) / 1000.0
        take: Any = stream  # the stubs lack noack_take (faust-streaming ≥ 0.10)
        async for events in take.noack_take(self.s.max_batch, within=within):
            await self._tick(events)

    async def _tick(self, events: Sequence[EventT]) -> None:
        self.parts.beat()
        assigned = self.app.consumer.assignment()
        # events of partitions revoked since they were fetched belong to their new owner
        events = [e for e in events if e.message.tp in assigned]
        for e in events:
            tp = (e.message.topic, e.message.partition)
            self._held[tp].append(e)
            self._seen[tp] = e.message.offset
        batch = batch_of(events, self.s.input_topic)
        async with self._lock:
            if self._closed.is_set():
                return
            try:
                await asyncio.to_thread(self._process, batch)
            except Exception as e:
                await self._crash(e)
                raise
        await self._acknowledge()

    async def _crash(self, e: BaseException) -> None:
        """A crash path (undelivered outputs included: this runtime cannot seek back): nothing
        more is acknowledged or committed; the app stops and the process exits 1. Whoever takes
        the partitions over consumes again from the last commit."""
        self.engine.halt(f"{type(e).__name__}: {e}")
        self.crashed = e
        log.error("stopping the Faust runtime, nothing more is committed: %s", e)
        await self.app.crash(e)

    def _process(self, batch: MessageBatch) -> None:
        if len(batch):
            self.engine.process(batch)
        self.sink.poll()
        self._cycle(urgent=False)

    def _cycle(self, urgent: bool) -> None:
        """Finish background writes; start a commit cycle when due (at once and waiting for
        the write when ``urgent``: a rebalance or shutdown waits for our acknowledgements)."""
        self.engine.poll_commits(self._record)
        now = time.monotonic()
        if urgent or now - self._last_cycle >= self.s.commit_interval_ms / 1000.0:
            self.engine.commit_cycle(self._record, wait=urgent)
            self._last_cycle = now
        if not urgent:
            self.parts.maybe_reload(self.s, self.metrics, self._record)

    def _record(self, offsets: Offsets) -> None:
        """The engine's commit callback: these offsets are flushed and their states written."""
        for tp, o in offsets.items():
            self._done[tp] = max(o, self._done.get(tp, 0))

    async def _acknowledge(self) -> None:
        """Acknowledge, on the event loop, every held event a finished commit cycle covers."""
        stream = self._stream
        if stream is None:
            return
        for tp, upto in list(self._done.items()):
            held = self._held.get(tp)
            while held and held[0].message.offset < upto:
                await stream.ack(held.popleft())

    # -- commits, rebalances, shutdown ----------------------------------------------------------
    async def _commit_task(self) -> None:
        await self._ensure_started()
        last_lag = time.monotonic()
        while not self._closed.is_set():
            urgent = bool(self.app.should_stop or self.app.rebalancing)
            interval = self.s.commit_interval_ms / 1000.0
            await asyncio.sleep(0.02 if urgent else min(max(interval, 0.02), 0.25))
            async with self._lock:
                if self._closed.is_set():
                    return
                try:
                    await asyncio.to_thread(self._cycle, urgent)
                except Exception as e:
                    await self._crash(e)
                    return
            await self._acknowledge()
            if time.monotonic() - last_lag >= 5.0:
                self._update_lag()
                await asyncio.to_thread(self.parts.check_input_topic)
                last_lag = time.monotonic()

    async def _on_revoked(self, sender: Any, *args: Any, **_: Any) -> None:
        revoked: set[TP] = args[0]
        tps = [(tp.topic, tp.partition) for tp in revoked if tp.topic == self.s.input_topic]
        async with self._lock:
            if not self._closed.is_set():
                # Faust waited for every delivered event to be acknowledged: only a cycle of
                # what was applied but not yet covered can remain; run it, then forget the keys
                try:
                    await asyncio.to_thread(self.engine.commit_cycle, self._record, tps)
                except Exception as e:
                    await self._crash(e)
            await self._acknowledge()
            n = self.engine.drop_partitions(tps)
        for tp in tps:
            self._held.pop(tp, None)
            self._done.pop(tp, None)
            self._seen.pop(tp, None)
        self.metrics.assigned.set(0)
        log.info("revoked %s (%d cached keys dropped)", sorted(p for _, p in tps), n)

    async def _on_assigned(self, sender: Any, *args: Any, **_: Any) -> None:
        assigned: set[TP] = args[0]
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.s.input_topic)
        if self._started is not None and self._started.done():
            await asyncio.to_thread(self.parts.check_input_topic)
        self.metrics.assigned.set(len(mine))
        log.info("assigned %s", mine)

    async def _on_shutdown(self, sender: Any, *args: Any, **_: Any) -> None:
        """After Faust stopped the consumer (and committed what was acknowledged)."""
        async with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self.parts.ready = False
            try:
                if self._started is not None and self._started.done():
                    await asyncio.to_thread(self._final_cycle)
            finally:
                if self.parts.health:
                    self.parts.health.stop()
                self.store.close()
        log.info("faust agent stopped: %s", counts(self.metrics, self.engine.cached_keys))

    def _final_cycle(self) -> None:
        self._stopping.set()
        try:
            self.engine.poll_commits(self._record, block=True)
            self.engine.commit_cycle(self._record)
        finally:
            self.engine.stop_writer()
            self.sink.flush()

    def _update_lag(self) -> None:
        for (topic, p), last in list(self._seen.items()):
            try:
                high = self.app.consumer.highwater(TP(topic, p))
            except Exception as e:  # not assigned any more, or not fetched yet
                log.debug("lag: %s", e)
                continue
            if high is not None and high >= 0:
                self.metrics.lag.labels(partition=str(p)).set(max(0, high - last - 1))


def create_app(s: WorkerSettings, metrics: WorkerMetrics | None = None) -> FaustForecaster:
    """A Faust app of its own (app id = the consumer group) with the forecaster mounted."""
    web = s.faust_web_port >= 0
    datadir = Path(tempfile.gettempdir()) / f"stream-lstm-faust-{s.group}"
    app = faust.App(
        s.group,
        broker=[f"kafka://{b.strip()}" for b in s.bootstrap.split(",") if b.strip()],
        web_enabled=web,
        web_port=max(s.faust_web_port, 0) or 6066,
        web_bind=s.metrics_addr,
        datadir=str(datadir),
        topic_disable_leader=True,  # no leader-election topic: this app has no tables
        broker_commit_interval=max(s.commit_interval_ms, 100) / 1000.0,
        **faust_options(s),
    )
    return FaustForecaster(app, s, metrics)


def run_faust(s: WorkerSettings, loglevel: str = "info") -> int:
    """``stream-lstm worker --runtime faust``: run a Faust worker until SIGTERM/SIGINT."""
    fc = create_app(s)
    worker = faust.Worker(fc.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if fc.crashed is not None:
        log.error("the Faust runtime stopped on an error: %s", fc.crashed)
        code = code or 1
    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if stuck:
        # Faust stopped (our final commit cycle ran in on_before_shutdown) but a consumer
        # thread it could not stop (e.g. SIGTERM during the first group join) would keep the
        # interpreter alive: exit without waiting for it
        log.warning("Faust left thread(s) %s running; exiting without them", ", ".join(stuck))
        logging.shutdown()
        os._exit(code)
    return code
