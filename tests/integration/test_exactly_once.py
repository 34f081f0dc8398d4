"""Exactly-once processing on the real broker and Redis (``--processing-guarantee exactly-once``).

Each test ends with ``three_checks(..., exactly_once=True)``: read as a read_committed consumer
reads, every good event has exactly one forecast, equal to an uninterrupted run's; every bad
event exactly one dead letter; every key's final state in Redis equals the uninterrupted run's.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_lstm.stack import Stack
from tests.integration.conftest import Services, unique
from tests.integration.faults import FaultReport, PacedProducer, WorkerProc, three_checks
from tests.integration.helpers import Topics, make_topics
from tests.integration.test_faults import _caught_up, _topics, _wait_split, keyed_events

pytestmark = pytest.mark.chaos

EOS = ("--processing-guarantee", "exactly-once")
BAD = (b'{"ts": 1704067200000, "oops"', b'{"ts": "2024-01-01T00:00:00Z"}', b"\xff\xfe")


def with_bad_events(events: list[tuple[bytes, bytes]], every: int) -> list[tuple[bytes, bytes]]:
    """``events`` with a bad one (malformed JSON, a missing feature, not UTF-8) after every
    ``every``-th, on the key of the event before it (so on the same partition)."""
    out = []
    for i, (k, v) in enumerate(events):
        out.append((k, v))
        if i % every == every // 2:
            out.append((k, BAD[(i // every) % len(BAD)]))
    return out


def eos_worker(
    model: Path,
    bootstrap: str,
    redis_url: str,
    topics: Topics,
    group: str,
    log_dir: Path,
    tid: str,
    env: dict[str, str] | None = None,
    *extra: str,
) -> WorkerProc:
    return WorkerProc(
        model, bootstrap, redis_url, topics, group, log_dir,
        *EOS, "--transactional-id", tid, *extra, env=env,
    )  # fmt: skip


def finish(
    workers: list[WorkerProc], producer: PacedProducer, n: int, timeout: float = 240
) -> None:
    """Let the producer finish and the live workers consume everything (a worker that finds
    everything committed has nothing to do), then stop them gracefully."""
    producer.join(timeout)
    assert producer.error is None and producer.sent == n, producer.error
    deadline = time.monotonic() + timeout
    while not _caught_up(workers):
        assert time.monotonic() < deadline, "the workers did not catch up"
        time.sleep(0.5)
    for w in workers:
        assert w.stop() == 0, f"graceful stop failed; see {w.log}"


def kill_plan(
    start: Callable[[str | None], WorkerProc],
    plan: list[str | None],
    report: FaultReport,
    rng: random.Random,
) -> list[WorkerProc]:
    """SIGKILL a worker once per plan entry (a fail point inside the exactly-once cycle, or
    ``None``: after a random time up), restarting it with the same transactional id each
    time; returns every worker started, the final (live) one last. Fail points come first in a
    plan (they need input)."""
    started = []
    for point in plan:
        w = start(point)
        started.append(w)
        if point:
            try:
                w.proc.wait(120)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                m = w.metrics() or {}
                raise AssertionError(
                    f"fail point {point} not reached in 120 s: "
                    + str(
                        {k: v for k, v in m.items() if "lag" in k or ("_total" in k and "in" in k)}
                    )
                    + "\n"
                    + w.log_text()[-3000:]
                ) from None
            assert w.proc.returncode == -signal.SIGKILL, w.log_text()[-2000:]  # type: ignore[union-attr]
            assert f"fail point {point.split('@')[0]} reached" in w.log_text()
        else:
            w.wait_up()
            time.sleep(rng.uniform(0.5, 3.0))
            w.kill()
        report.kills += 1
    final = start(None)
    started.append(final)
    return started


def recoveries(workers: list[WorkerProc]) -> int:
    """How many times a worker replayed committed events for state only (a crash had come
    between a transaction's commit and its state write)."""
    return sum(w.log_text().count("exactly-once recovery") for w in workers)


def test_exactly_once_kill_9_at_random_moments_and_inside_every_step(
    services: Services, topic_factory: Callable[..., str], synth_model: Path, tmp_path: Path
) -> None:
    """≥ 100,000 events over 1,000 keys, 4 partitions, 100 bad events mixed in; SIGKILL the
    worker 12 times: inside each step of the exactly-once cycle (transaction open, committed
    before any state write, states written before the applied offsets) and at random."""
    rng = random.Random(11)
    events = with_bad_events(keyed_events(keys=1000, rows=100, seed=31), every=1000)
    n = len(events)
    topics = make_topics(topic_factory, partitions=4)
    group = unique("g")
    report = FaultReport("exactly-once, kill -9", events=n, keys=1000, partitions=4)
    producer = PacedProducer(services.bootstrap, topics.input, events, rate=700)  # ~144 s
    plan: list[str | None] = [
        "before_commit@3", "after_commit@2", "after_states@2", "after_commit@5",
        "before_commit@6", "after_states@4", None, None, None, None, None, None,
    ]  # fmt: skip

    def start(point: str | None) -> WorkerProc:
        env = {"STREAM_LSTM_FAILPOINT": point} if point else None
        w = eos_worker(synth_model, services.bootstrap, services.redis_url, topics, group,
                       tmp_path, "w0", env).start()  # fmt: skip
        if not producer.is_alive() and producer.sent == 0:
            w.wait_up()
            producer.start()
        return w

    workers = kill_plan(start, plan, report, rng)
    finish(workers[-1:], producer, n)
    report.notes["recoveries"] = recoveries(workers)
    three_checks(
        report, synth_model, services.bootstrap, services.redis_url, f"slstm:{group}", topics, n,
        exactly_once=True,
    )  # fmt: skip
    assert report.kills >= 10
    report.write()


def test_exactly_once_zombie_is_fenced(
    services: Services, topic_factory: Callable[..., str], synth_model: Path, tmp_path: Path
) -> None:
    """SIGSTOP a worker past its session timeout (its transaction open); its partitions move
    to the other; SIGCONT. Nothing the zombie produced after it was fenced is seen by a
    read_committed consumer, and none of its states overwrite the new owner's."""
    events = with_bad_events(keyed_events(keys=400, rows=60, seed=33), every=500)
    n = len(events)
    topics = make_topics(topic_factory, partitions=4)
    group = unique("g")
    report = FaultReport("exactly-once, zombie", events=n, keys=400, partitions=4)
    url = services.redis_url
    a = eos_worker(synth_model, services.bootstrap, url, topics, group, tmp_path, "a").start()
    b = eos_worker(synth_model, services.bootstrap, url, topics, group, tmp_path, "b").start()
    _wait_split(a, b)
    producer = PacedProducer(services.bootstrap, topics.input, events, rate=1500)
    a.wait_up()
    b.wait_up()
    producer.start()
    a.wait_first_forecast()
    b.wait_first_forecast()
    time.sleep(2)
    a.signal(signal.SIGSTOP)
    t_stop = time.monotonic()
    while b.metric("stream_lstm_assigned_partitions") < 4:
        assert time.monotonic() - t_stop < 60, "the partitions did not move to the live worker"
        time.sleep(0.5)
    report.recovery_s.append(time.monotonic() - t_stop)
    time.sleep(4)
    a.signal(signal.SIGCONT)
    time.sleep(5)
    finish([a, b], producer, n)
    aborted = a.metric("stream_lstm_transactions_total{outcome=aborted}")
    report.notes["zombie_aborted_transactions"] = aborted
    log = a.log_text()
    assert "aborting" in log or "lost" in log, "the zombie noticed it was fenced"
    three_checks(
        report, synth_model, services.bootstrap, url, f"slstm:{group}", topics, n,
        exactly_once=True,
    )  # fmt: skip
    report.write()


def test_exactly_once_broker_and_redis_restart(
    synth_model: Path, tmp_path: Path, private_stack: Stack
) -> None:
    """The broker restarts, then Redis restarts, mid-stream: the same counts hold."""
    stack = private_stack
    events = with_bad_events(keyed_events(keys=300, rows=100, seed=34), every=500)
    n = len(events)
    topics = _topics(stack.bootstrap)
    group = unique("g")
    report = FaultReport("exactly-once, broker and Redis restart", events=n, keys=300,
                         partitions=4)  # fmt: skip
    w = eos_worker(synth_model, stack.bootstrap, stack.redis_url, topics, group, tmp_path, "w")
    w.start()
    producer = PacedProducer(stack.bootstrap, topics.input, events, rate=300)  # ~100 s
    w.wait_up()
    producer.start()
    w.wait_first_forecast()
    time.sleep(2)
    stack.kafka.stop()
    time.sleep(3)
    stack.kafka.start(fresh=False)
    t_up = time.monotonic()
    base = w.metric("stream_lstm_forecasts_out_total")
    while w.metric("stream_lstm_forecasts_out_total") <= base:
        assert time.monotonic() - t_up < 90, f"the worker did not resume; see {w.log}"
        time.sleep(0.2)
    report.recovery_s.append(time.monotonic() - t_up)
    time.sleep(2)
    stack.redis.stop()
    time.sleep(4)
    stack.redis.start(fresh=False)
    t_up = time.monotonic()
    base = w.metric("stream_lstm_transactions_total{outcome=committed}")
    while w.metric("stream_lstm_transactions_total{outcome=committed}") <= base and not (
        not producer.is_alive() and _caught_up([w])
    ):
        assert time.monotonic() - t_up < 90, f"the worker did not resume; see {w.log}"
        time.sleep(0.2)
    report.recovery_s.append(time.monotonic() - t_up)
    finish([w], producer, n)
    three_checks(
        report, synth_model, stack.bootstrap, stack.redis_url, f"slstm:{group}", topics, n,
        exactly_once=True,
    )  # fmt: skip
    report.write()


def test_exactly_once_on_a_redis_cluster(
    request: pytest.FixtureRequest,
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
) -> None:
    """The same protocol with the state on the local Redis Cluster: kill -9 inside the cycle's
    steps and at random."""
    url = request.getfixturevalue("redis_cluster").spec.url
    rng = random.Random(12)
    events = with_bad_events(keyed_events(keys=300, rows=80, seed=35), every=500)
    n = len(events)
    topics = make_topics(topic_factory, partitions=4)
    group = unique("g")
    report = FaultReport("exactly-once, kill -9, Redis Cluster", events=n, keys=300, partitions=4)
    producer = PacedProducer(services.bootstrap, topics.input, events, rate=1000)

    def start(point: str | None) -> WorkerProc:
        env = {"STREAM_LSTM_FAILPOINT": point} if point else None
        w = eos_worker(synth_model, services.bootstrap, url, topics, group, tmp_path, "c0", env)
        w.start()
        if not producer.is_alive() and producer.sent == 0:
            w.wait_up()
            producer.start()
        return w

    plan: list[str | None] = ["after_commit@2", "after_states@2", None]
    workers = kill_plan(start, plan, report, rng)
    finish(workers[-1:], producer, n)
    report.notes["recoveries"] = recoveries(workers)
    three_checks(
        report, synth_model, services.bootstrap, url, f"slstm:{group}", topics, n,
        exactly_once=True,
    )  # fmt: skip
    report.write()
