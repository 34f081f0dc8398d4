"""The Faust runtime (``stream-lstm worker --runtime faust``) on the real broker and Redis: the
main worker's parity and graceful-restart tests through Faust, state continued across the two
runtimes in both directions, and Faust's web server binding no port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from stream_lstm.data.datasets import preset
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import SeriesSpec
from stream_lstm.training.evaluate import stream_rows
from tests.integration.conftest import Services
from tests.integration.faults import WorkerProc
from tests.integration.helpers import (
    Topics,
    forecasts_frame,
    make_topics,
    produce,
    read_all,
    wait_for,
)
from tests.integration.test_worker import (
    SYNTH,
    assert_each_event_forecast_once,
    assert_parity,
    events_of,
)

FORECASTS = "stream_lstm_forecasts_out_total"


@contextmanager
def worker(
    runtime: str,
    model: Path,
    services: Services,
    topics: Topics,
    group: str,
    log_dir: Path,
    *extra: str,
) -> Iterator[WorkerProc]:
    """A worker process of either runtime; it must stop on SIGTERM with exit code 0."""
    w = WorkerProc(
        model,
        services.bootstrap,
        services.redis_url,
        topics,
        group,
        log_dir,
        "--runtime",
        runtime,
        *extra,
    ).start()
    try:
        yield w
    except BaseException:
        w.kill()
        raise
    code = w.stop(90)
    assert code == 0, f"{runtime} worker exited {code} on SIGTERM:\n{w.log_text()[-3000:]}"


def wait_forecasts(w: WorkerProc, n: int, timeout: float, what: str) -> None:
    def done() -> bool:
        assert w.alive(), f"worker exited ({w.proc and w.proc.returncode}):\n{w.log_text()[-3000:]}"
        return w.metric(FORECASTS) >= n

    wait_for(done, timeout, what)


def listening_ports(pid: int) -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def test_faust_parity_with_predict_on_real_data_and_no_web_port(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    ped_model: Path,
    tmp_path: Path,
) -> None:
    p = preset("pedestrian")
    spec = SeriesSpec(p.time_col, p.features, p.targets, p.key_col)
    frame, _ = load_frame(p.path, spec)
    topics = make_topics(topic_factory, partitions=4)
    produce(services.bootstrap, topics.input, events_of(frame, spec))
    n = len(stream_rows(frame, list(p.features)))
    with worker("faust", ped_model, services, topics, group_id, tmp_path) as w:
        wait_forecasts(w, n, 240, "all forecasts through Faust")
        # Faust's web server is off by default: the only port bound is our metrics port
        assert listening_ports(w.pid) == {w.port}
        assert w.metric("stream_lstm_state_loads_total{outcome=new}") == 4
    got = forecasts_frame(read_all(services.bootstrap, topics.output, n), "Count")
    assert len(got) == n * 24, "exactly one forecast per event"
    assert_parity(ped_model, frame, got)


def test_faust_web_port_when_asked(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    tmp_path: Path,
) -> None:
    from stream_lstm.stack.procs import free_port

    topics = make_topics(topic_factory, partitions=1)
    web = free_port()
    with worker(
        "faust", synth_model, services, topics, group_id, tmp_path, "--faust-web-port", str(web)
    ) as w:
        wait_for(lambda: listening_ports(w.pid) == {w.port, web}, 90, "Faust's web server")
        wait_for(lambda: w.metric("stream_lstm_assigned_partitions") == 1, 90, "assignment")


def test_faust_graceful_restart_continues_each_key_exactly(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=4)
    # compressed batches, as producers commonly send them (aiokafka needs cramjam for these)
    produce(services.bootstrap, topics.input, events[:500], compression_type="lz4")
    with worker(
        "faust", synth_model, services, topics, group_id, tmp_path, "--max-batch", "64"
    ) as w1:
        wait_forecasts(w1, 500, 120, "first half")
    produce(services.bootstrap, topics.input, events[500:], compression_type="zstd")
    with worker(
        "faust", synth_model, services, topics, group_id, tmp_path, "--max-batch", "64"
    ) as w2:
        wait_forecasts(w2, len(events) - 500, 120, "second half")
        assert w2.metric("stream_lstm_replayed_skipped_total") == 0, "nothing applied twice"
        assert w2.metric("stream_lstm_state_loads_total{outcome=restored}") == 3
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    assert_each_event_forecast_once(got, len(events))
    assert_parity(synth_model, frame, got)


def test_state_continues_across_runtimes_both_ways(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    """confluent → faust → confluent on one group: the same Redis records and committed
    offsets carry each key's state on; every forecast equals `predict` over the whole series."""
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=4)
    cuts = [0, len(events) // 3, 2 * len(events) // 3, len(events)]
    for i, runtime in enumerate(["confluent", "faust", "confluent"]):
        produce(services.bootstrap, topics.input, events[cuts[i] : cuts[i + 1]])
        with worker(runtime, synth_model, services, topics, group_id, tmp_path) as w:
            wait_forecasts(w, cuts[i + 1] - cuts[i], 120, f"part {i + 1} via {runtime}")
            assert w.metric("stream_lstm_replayed_skipped_total") == 0
            if i:
                assert w.metric("stream_lstm_state_loads_total{outcome=restored}") == 3
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    assert_each_event_forecast_once(got, len(events))
    assert_parity(synth_model, frame, got)
