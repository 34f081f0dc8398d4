"""Live forecast scoring and excursion alerts, checked against a brute-force reference computed
from the published forecasts: per-step errors, interval coverage, the residual trackers and the
grouped alerts, across ticks of any size, restarts from the stored state and gaps in a series."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_lstm.data.loading import load_frame
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.model.spec import ModelConfig
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import InMessage, decode_forecast, encode_event
from stream_lstm.runtime.scoring import Alert, Scorer, ScoringConfig, decode_alert, resolve_steps
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import HEADER, HEADER_V2, MAGIC_V2, decode_any
from stream_lstm.testing import MemorySink, frame_events, ticks, to_messages
from stream_lstm.training.train import train

from .conftest import SPEC, tiny_options

STEPS = "1,2,6"
SCORING = ScoringConfig(steps=STEPS, alpha=0.2, sigma=1.5, interval=True, warmup=5)


@pytest.fixture(scope="module")
def quantile_model(tmp_path_factory: pytest.TempPathFactory, synth_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "q"
    train(synth_csv, SPEC, tiny_options(quantiles=(0.1, 0.5, 0.9), loss="pinball", epochs=10), out)
    return out


def engine(
    model: Path, store: MemoryStore | None = None, scoring: ScoringConfig = SCORING
) -> tuple[Engine, MemoryStore, MemorySink]:
    fc = Forecaster(load_artifact(model))
    store = store or MemoryStore(layout_for(fc, scoring))
    sink = MemorySink()
    cfg = EngineConfig("out", "dlq", scoring=scoring, alerts_topic="alerts")
    return Engine(fc, store, sink, WorkerMetrics(), cfg), store, sink


def events(synth_csv: Path, drop_every: int = 0) -> list[tuple[str, int, dict[str, float]]]:
    ev = frame_events(load_frame(synth_csv, SPEC)[0], ["f0", "f1"])
    if drop_every:  # gaps: some hours of some keys never arrive
        ev = [e for i, e in enumerate(ev) if i % drop_every != 3]
    return ev


def expected(
    evs: list[tuple[str, int, dict[str, float]]],
    sinks: list[MemorySink],
    steps: list[int],
    c: ScoringConfig = SCORING,
) -> tuple[dict[int, list[float]], list[dict[str, Any]]]:
    """Per step: [n, sum |e|, sum e², inside]; and the alerts a per-key loop raises."""
    fcs: dict[tuple[str, int], Any] = {}
    for sink in sinks:
        for p in sink.on("out"):
            f = decode_forecast(p.value or b"")
            fcs[(f.key, f.ts)] = f
    iv = next(iter(fcs.values())).interval_ms
    sums = {s: [0, 0.0, 0.0, 0] for s in steps}
    seen: dict[str, list[int]] = defaultdict(list)  # a key's event times so far
    track: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"m": 0.0, "v": 0.0, "n": 0, "since": None, "count": 0, "peak": 0.0}
    )
    alerts: list[dict[str, Any]] = []
    for key, ts, vals in evs:
        actual = vals["f0"]
        recent = seen[key][-6:]  # the ring keeps the key's last H = 6 events
        for s in steps:
            origin = ts - s * iv
            if origin in recent:
                f = fcs[(key, origin)]
                e = actual - f.forecast["f0"][s - 1]
                sums[s][0] += 1
                sums[s][1] += abs(e)
                sums[s][2] += e * e
                if f.quantiles:
                    q = f.quantiles["f0"]
                    sums[s][3] += int(q["0.1"][s - 1] <= actual <= q["0.9"][s - 1])
        if ts - iv in recent:
            f = fcs[(key, ts - iv)]
            point = f.forecast["f0"][0]
            out_int = False
            if f.quantiles and c.interval:
                # the interval rule: farther from the median than sigma standard deviations as
                # the 0.1 and 0.9 quantiles imply them (a normal's 0.9 quantile lies 1.2816 of
                # them above its median), and at least outside the interval
                reach = max(1.0, c.sigma / 1.2815516)
                below = point - f.quantiles["f0"]["0.1"][0]
                above = f.quantiles["f0"]["0.9"][0] - point
                out_int = (below > 0 and actual < point - reach * below) or (
                    above > 0 and actual > point + reach * above
                )
            t = track[key]
            r = actual - point
            d = r - t["m"]
            std = math.sqrt(t["v"])
            z = abs(d) / std if t["n"] >= c.warmup and std > 0 else 0.0
            out_sigma = c.sigma > 0 and z > c.sigma
            if z > 0 and c.sigma > 0:  # warm: the update sees the residual clipped there
                d = max(-c.sigma * std, min(c.sigma * std, d))
            w = max(c.alpha, 1.0 / (t["n"] + 1))
            t["m"], t["v"], t["n"] = t["m"] + w * d, (1 - w) * (t["v"] + w * d * d), t["n"] + 1
            if out_sigma or out_int:
                if t["since"] is None:
                    reason = ",".join(
                        x for x, hit in (("sigma", out_sigma), ("interval", out_int)) if hit
                    )
                    t["since"], t["count"], t["peak"] = ts, 1, z
                    alerts.append(
                        {"key": key, "state": "open", "ts": ts, "actual": actual,
                         "expected": point, "reason": reason, "count": 1}
                    )  # fmt: skip
                else:
                    t["count"] += 1
                    t["peak"] = max(t["peak"], z)
            elif t["since"] is not None:
                alerts.append(
                    {"key": key, "state": "close", "ts": ts, "since": t["since"],
                     "count": t["count"], "peak": t["peak"] or None}
                )  # fmt: skip
                t["since"] = None
        seen[key].append(ts)
    return sums, alerts


def got_sums(metrics: list[WorkerMetrics], steps: list[int]) -> dict[int, list[float]]:
    out = {}
    for s in steps:
        lbl = {"target": "f0", "step": str(s)}

        def val(name: str, lbl: dict[str, str] = lbl) -> float:
            return sum(m.registry.get_sample_value(name, lbl) or 0.0 for m in metrics)

        out[s] = [
            val("stream_lstm_forecast_scored_total"),
            val("stream_lstm_forecast_abs_error_total"),
            val("stream_lstm_forecast_squared_error_total"),
            val("stream_lstm_forecast_interval_hits_total"),
        ]
    return out


def alerts_of(sinks: list[MemorySink]) -> list[Alert]:
    return [decode_alert(p.value or b"") for s in sinks for p in s.on("alerts")]


def assert_alerts_match(got: list[Alert], want: list[dict[str, Any]]) -> None:
    # per key the order is the time order; across keys a tick orders by key
    def by_key(rows: list[Any]) -> dict[str, list[Any]]:
        d: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            d[r["key"] if isinstance(r, dict) else r.key].append(r)
        return d

    g, w = by_key(got), by_key(want)
    assert set(g) == set(w)
    for key in w:
        assert len(g[key]) == len(w[key]), key
        for a, b in zip(g[key], w[key], strict=True):
            assert (a.state, a.ts) == (b["state"], b["ts"])
            assert a.count == b["count"]
            if b["state"] == "open":
                assert a.reason == b["reason"]
                assert a.since == a.ts
                assert a.actual == pytest.approx(b["actual"], rel=1e-5)
                assert a.expected == pytest.approx(b["expected"], rel=1e-4, abs=1e-4)
            else:
                assert a.since == b["since"]
                assert (a.peak or 0.0) == pytest.approx(b["peak"] or 0.0, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("model_name", ["tiny_model", "quantile_model", "tiny_cnn_model"])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 64], [5000]])
def test_scores_and_alerts_equal_a_brute_force_reference(
    model_name: str, sizes: list[int], synth_csv: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_name)
    evs = events(synth_csv, drop_every=17)
    eng, _, sink = engine(model)
    for tick in ticks(to_messages(evs), sizes):
        eng.process(tick)
    steps = [1, 2, 6]
    want_sums, want_alerts = expected(evs, [sink], steps)
    got = got_sums([eng.metrics], steps)
    quantiles = model_name == "quantile_model"
    for s in steps:
        n, ae, se, inside = want_sums[s]
        assert n > 0
        assert got[s][0] == n, f"step {s}: scored {got[s][0]}, expected {n}"
        assert got[s][1] == pytest.approx(ae, rel=1e-4)
        assert got[s][2] == pytest.approx(se, rel=1e-4)
        assert got[s][3] == (inside if quantiles else 0)
    assert want_alerts, "the reference raises alerts on this data (sigma 1.5)"
    assert_alerts_match(alerts_of([sink]), want_alerts)
    opened = eng.metrics.registry.get_sample_value("stream_lstm_alerts_total", {"state": "open"})
    assert opened == sum(a["state"] == "open" for a in want_alerts)
    if quantiles:
        assert any("interval" in a["reason"] for a in want_alerts if a["state"] == "open")


@pytest.mark.parametrize(
    "cfg",
    [
        ScoringConfig(steps=STEPS, alpha=0.2, sigma=0.0, interval=True, warmup=5),
        ScoringConfig(steps=STEPS, alpha=0.2, sigma=2.5, interval=True, warmup=5),
        ScoringConfig(steps=STEPS, alpha=0.2, sigma=1.5, interval=False, warmup=5),
    ],
    ids=["interval-only", "sigma-2.5", "no-interval"],
)
def test_interval_rule_equals_a_brute_force_reference(
    cfg: ScoringConfig, quantile_model: Path, synth_csv: Path
) -> None:
    """The interval rule reaches ``sigma`` standard deviations as the quantiles imply them, at
    least the interval itself (sigma 0: the plain interval), and can be switched off."""
    evs = events(synth_csv, drop_every=17)
    eng, _, sink = engine(quantile_model, scoring=cfg)
    for tick in ticks(to_messages(evs), [7, 1, 64]):
        eng.process(tick)
    _, want = expected(evs, [sink], [1, 2, 6], cfg)
    assert want, "the reference raises alerts on this data"
    assert_alerts_match(alerts_of([sink]), want)
    reasons = {a["reason"] for a in want if a["state"] == "open"}
    if not cfg.interval:
        assert reasons == {"sigma"}
    elif cfg.sigma == 0:
        assert reasons == {"interval"}


def test_interval_reach_is_sigma_in_the_quantiles_implied_deviations() -> None:
    """Each side of the interval, in standard deviations of a normal with the same quantiles:
    the 0.05 quantile lies 1.645 below the median, the 0.8 quantile 0.842 above it."""
    mc = ModelConfig(
        features=["x"], targets=["x"], time_step=4, horizon=2, interval_ms=1000,
        quantiles=[0.05, 0.5, 0.8],
    )  # fmt: skip
    lo, hi = Scorer(ScoringConfig(sigma=5.0), mc, "v").interval_reach
    assert (lo, hi) == (pytest.approx(5 / 1.6448536), pytest.approx(5 / 0.8416212))
    # never inside the interval itself
    assert Scorer(ScoringConfig(sigma=1.0), mc, "v").interval_reach == (
        1.0,
        pytest.approx(1 / 0.8416212),
    )
    assert Scorer(ScoringConfig(sigma=0.0), mc, "v").interval_reach == (1.0, 1.0)
    # a one-sided interval: the side without a quantile has no width, so it never fires
    one_sided = mc.model_copy(update={"quantiles": [0.5, 0.9]})
    assert Scorer(ScoringConfig(sigma=5.0), one_sided, "v").interval_reach == (
        1.0,
        pytest.approx(5 / 1.2815516),
    )


def test_an_actual_just_outside_the_interval_is_not_an_alert(
    quantile_model: Path, synth_csv: Path
) -> None:
    """With sigma 4, an actual a little beyond the 0.9 quantile is inside; one beyond
    4 / 1.2816 interval half-widths from the median opens an excursion, and so below."""
    cfg = ScoringConfig(steps=STEPS, alpha=0.2, sigma=4.0, interval=True, warmup=10**6)
    key = events(synth_csv)[0][0]
    evs = [e for e in events(synth_csv) if e[0] == key]
    msgs = to_messages(evs[:104])
    eng, _, sink = engine(quantile_model, scoring=cfg)
    eng.process(msgs[:100])
    reach = 4.0 / 1.2815516
    for i, (where, want) in enumerate(
        [(1.1, None), (reach + 0.05, "open"), (0.0, "close"), (-(reach + 0.05), "open")]
    ):
        f = decode_forecast(sink.on("out")[-1].value or b"")
        q = f.quantiles["f0"] if f.quantiles else {}
        med = f.forecast["f0"][0]
        width = (q["0.9"][0] - med) if where >= 0 else (med - q["0.1"][0])
        _, ts, vals = evs[100 + i]
        assert ts == f.ts + f.interval_ms
        m = msgs[100 + i]
        value = encode_event(key, ts, {**vals, "f0": med + where * width})
        before = len(sink.on("alerts"))
        eng.process([InMessage(m.key, value, m.topic, m.partition, m.offset, m.timestamp_ms)])
        new = alerts_of([sink])[before:]
        assert [a.state for a in new] == ([want] if want else []), (where, new)
        if want == "open":
            assert new[0].reason == "interval"
            assert new[0].lower == pytest.approx(q["0.1"][0], rel=1e-5)
            assert new[0].upper == pytest.approx(q["0.9"][0], rel=1e-5)


def test_scoring_continues_across_restarts(tiny_model: Path, synth_csv: Path) -> None:
    """The forecasts kept for scoring and the trackers live in the stored state: a worker that
    stops after a commit cycle and a new one that loads the keys score as one run would."""
    evs = events(synth_csv)
    msgs = to_messages(evs)
    cut = len(msgs) // 2 + 5
    eng1, store, sink1 = engine(tiny_model)
    for tick in ticks(msgs[:cut], [37]):
        eng1.process(tick)
    eng1.commit_cycle(lambda offsets: None)
    eng2, _, sink2 = engine(tiny_model, store=store)
    for tick in ticks(msgs[cut:], [37]):
        eng2.process(tick)
    steps = [1, 2, 6]
    want_sums, want_alerts = expected(evs, [sink1, sink2], steps)
    got = got_sums([eng1.metrics, eng2.metrics], steps)
    for s in steps:
        assert got[s][0] == want_sums[s][0]
        assert got[s][1] == pytest.approx(want_sums[s][1], rel=1e-4)
    assert_alerts_match(alerts_of([sink1, sink2]), want_alerts)
    # the record carries the score block
    rec = store.record(evs[0][0])
    assert rec is not None and decode_any(rec) is not None
    assert len(rec) == store.layout.record_size


def test_one_excursion_gives_one_open_and_one_close(
    tiny_model_levels: Path, synth_csv: Path
) -> None:
    """Five actuals far outside in a row: one open alert, then one close counting all five.

    With a model whose forecasts stay in the training range (``--norm none``): an ``offset`` or
    ``diff`` model forecasts from the last value, so after an excursion's first step its
    forecasts follow it (README: alerts) and the alert closes and opens again at the return."""
    tiny_model = tiny_model_levels
    evs = events(synth_csv)
    key = evs[0][0]
    mine = [i for i, e in enumerate(evs) if e[0] == key]
    spike = set(mine[300:305])
    evs = [(k, t, {**v, "f0": v["f0"] + 1e4}) if i in spike else (k, t, v)
           for i, (k, t, v) in enumerate(evs)]  # fmt: skip
    eng, _, sink = engine(tiny_model)
    for tick in ticks(to_messages(evs), [64]):
        eng.process(tick)
    spike_ts = sorted(evs[i][1] for i in spike)
    mine_alerts = [a for a in alerts_of([sink]) if a.key == key]
    opened = [a for a in mine_alerts if a.state == "open" and a.ts == spike_ts[0]]
    assert len(opened) == 1 and opened[0].reason.startswith("sigma")
    assert opened[0].actual is not None and opened[0].actual > 1e3
    inside = [a for a in mine_alerts if spike_ts[0] < a.ts <= spike_ts[-1]]
    assert inside == [], "no new alert while the excursion goes on"
    closed = [a for a in mine_alerts if a.state == "close" and a.since == spike_ts[0]]
    assert len(closed) == 1 and closed[0].count >= 5


def test_scoring_off_keeps_the_old_record_size(tiny_model: Path) -> None:
    fc = Forecaster(load_artifact(tiny_model))
    off = layout_for(fc, ScoringConfig(steps="none"))
    on = layout_for(fc, SCORING)
    assert off.score_ring == 0 and on.score_ring == fc.config.horizon
    assert on.record_size - off.record_size == (
        4 * 2 + 4 + 4 + 8 + 4 + 8 * 6 + 4 * 6 * 3 * 1  # trackers, excursion, ring ts, ring
    )


def test_resolve_steps() -> None:
    assert resolve_steps("auto", 24) == (1, 2, 3, 6, 12, 24)
    assert resolve_steps("auto", 10) == (1, 2, 3, 6, 10)
    assert resolve_steps("all", 3) == (1, 2, 3)
    assert resolve_steps("none", 24) == ()
    assert resolve_steps("6, 24", 24) == (1, 6, 24)
    with pytest.raises(ValueError, match="outside the model's horizon"):
        resolve_steps("1,48", 24)
    with pytest.raises(ValueError, match="expected auto, all, none"):
        resolve_steps("first", 24)


def test_old_format_records_are_rebuilt(tiny_model: Path, synth_csv: Path) -> None:
    """A record written before scoring existed ("SLS2") is read and rebuilt from its window."""
    msgs = to_messages(events(synth_csv)[:210])
    fc = Forecaster(load_artifact(tiny_model))
    old_store = MemoryStore(layout_for(fc, ScoringConfig(steps="none")))
    eng0 = Engine(fc, old_store, MemorySink(), WorkerMetrics(), EngineConfig("out", "dlq"))
    for tick in ticks(msgs[:200], [50]):
        eng0.process(tick)
    eng0.commit_cycle(lambda o: None)
    # rewrite every record in the old format: header without the four score fields
    for k, rec in list(old_store.data.items()):
        extra = HEADER.itemsize - HEADER_V2.itemsize  # the header fields added since
        body = rec[: HEADER_V2.itemsize] + rec[HEADER_V2.itemsize + extra :]
        old_store.data[k] = MAGIC_V2 + body[4:]
        d = decode_any(old_store.data[k])
        assert d is not None and d.fill > 0
    store = MemoryStore(layout_for(fc, SCORING), data=old_store.data)
    eng, _, _ = engine(tiny_model, store=store)
    eng.process(msgs[200:201])
    assert eng.metrics.registry.get_sample_value(
        "stream_lstm_state_loads_total", {"outcome": "rebuilt"}
    )
    assert np.isfinite(eng.cache.h).all()


def test_score_steps_beyond_the_horizon_are_refused_at_start(tiny_model: Path) -> None:
    from stream_lstm.config import WorkerSettings, build_settings
    from stream_lstm.drivers.reload import check_model
    from stream_lstm.errors import ConfigError

    s = build_settings(WorkerSettings, None, model=tiny_model, score_steps="1,48")
    with pytest.raises(ConfigError, match=r"--score-steps: .*outside the model's horizon 1\.\.6"):
        check_model(s, Forecaster(load_artifact(tiny_model)))
