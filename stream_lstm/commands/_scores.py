"""The score tables that ``evaluate`` and ``train`` print."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # keeps `stream-lstm --help` free of torch
    from stream_lstm.training.evaluate import EvalResult


def print_scores(console: Console, result: EvalResult) -> None:
    """Overall metrics per method, then MAE at a few horizon steps."""
    from stream_lstm.training.evaluate import METHODS

    t = Table(
        title=f"{result.split} span: {result.origins} forecast origins, horizon {result.horizon}, "
        f"season {result.season}"
    )
    t.add_column("method")
    for m in ("MAE", "RMSE", "sMAPE %", "MAE (std.)", "RMSE (std.)"):
        t.add_column(m, justify="right")
    for name in METHODS:
        o = result.scores[name]["original"]["overall"]
        z = result.scores[name]["standardised"]["overall"]
        t.add_row(
            name.replace("_", " "),
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
    for name in METHODS:
        mae = result.scores[name]["original"]["per_h"]["mae"]
        t2.add_row(name.replace("_", " "), *(f"{mae[h - 1]:.4g}" for h in steps))
    console.print(t2)
    if result.coverage:
        console.print(f"interval coverage: {result.coverage}")
