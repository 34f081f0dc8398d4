"""The score tables that ``evaluate`` and ``train`` print."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # keeps `stream-lstm --help` free of torch
    from stream_lstm.training.evaluate import EvalResult


def print_scores(console: Console, result: EvalResult) -> None:
    """Overall metrics per method, MAE at a few horizon steps, metrics per target when there is
    more than one, then how the linear baseline was fitted and the flags (in yellow)."""
    from stream_lstm.training.evaluate import METHODS

    methods = [m for m in METHODS if m in result.scores]  # an older result may lack one
    t = Table(
        title=f"{result.split} span: {result.origins} forecast origins, horizon {result.horizon}, "
        f"season {result.season}"
    )
    t.add_column("method")
    for m in ("MAE", "RMSE", "sMAPE %", "MAE (std.)", "RMSE (std.)"):
        t.add_column(m, justify="right")
    for name in methods:
        o = result.scores[name]["original"]["overall"]
        z = result.scores[name]["standardised"]["overall"]
        t.add_row(
            _label(name),
            f"{o['mae']:.4g}",
            f"{o['rmse']:.4g}",
            f"{o['smape']:.2f}",
            f"{z['mae']:.4f}",
            f"{z['rmse']:.4f}",
        )
    console.print(t)
    H = result.horizon
    steps = sorted({1, max(1, H // 4), max(1, H // 2), H})
    t2 = Table(title="MAE by horizon step (original units)")
    t2.add_column("method")
    for h in steps:
        t2.add_column(f"h={h}", justify="right")
    for name in methods:
        mae = result.scores[name]["original"]["per_h"]["mae"]
        t2.add_row(
            _label(name), *("n/a" if mae[h - 1] is None else f"{mae[h - 1]:.4g}" for h in steps)
        )
    console.print(t2)
    per_target = all("per_target" in result.scores[m]["original"] for m in methods)
    if len(result.targets) > 1 and per_target:
        t3 = Table(title="per target")
        t3.add_column("target")
        t3.add_column("method")
        for m in ("MSE (std.)", "MAE", "sMAPE %"):
            t3.add_column(m, justify="right")
        for target in result.targets:
            for i, name in enumerate(methods):
                o = result.scores[name]["original"]["per_target"][target]
                z = result.scores[name]["standardised"]["per_target"][target]
                t3.add_row(
                    target if i == 0 else "",
                    _label(name),
                    f"{z['mse']:.4f}",
                    f"{o['mae']:.4g}",
                    f"{o['smape']:.2f}",
                    end_section=i == len(methods) - 1,
                )
        console.print(t3)
    if result.coverage:
        console.print(f"interval coverage: {result.coverage}")
    fit = result.linear_fit
    if fit:
        span = f" ({fit['span']})" if fit.get("span") else ""
        console.print(
            f"linear baseline fitted {fit['fit']} on {fit['origins']} origins{span}, "
            f"{fit['samples']} of {fit['candidates']} (origin, target) pairs",
            style="dim",
            markup=False,
        )
    for flag in result.flags:
        console.print(flag, style="yellow", markup=False, highlight=False)


def _label(method: str) -> str:
    return "linear (NLinear)" if method == "linear" else method.replace("_", " ")
