"""``stream-lstm train``: fit a model on a data file and write an artifact directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from stream_lstm.commands._data import add_data_flags, data_flags, resolve_series
from stream_lstm.commands._settings import add_settings_flags, given
from stream_lstm.config import DataSettings, TrainSettings, build_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an lstm or cnn-lstm-attn model and write an artifact",
        description=(
            "Load a long-form CSV/Parquet file, validate it (duplicates, gaps, non-numeric "
            "values), "
            "repair anomalies judged against the seasonal pattern, standardise on the training "
            "span, normalise so that levels that move are followed (--norm), split "
            "chronologically, train with Adam (TBPTT for the stateful lstm), stop early on the "
            "validation loss (with --search: a few candidate settings, the best on validation "
            "kept), then evaluate on the test span against the linear (NLinear), seasonal naive "
            "and persistence baselines, flagging any the model does not beat. Writes "
            "config.json, model.safetensors, scaler.json, metrics.json, repairs.csv, VERSION "
            "and plots/ to --out (checked for writing first, before any data is read; "
            "files get mode 0666 minus the umask). Settings also come from STREAM_LSTM_TRAIN_* "
            "variables or a [train] table in --config."
        ),
        epilog="example: stream-lstm train --dataset vic_elec --out models/vic_elec",
    )
    add_data_flags(p)
    p.add_argument("--config", type=Path, help="TOML file with a [train] table")
    names = add_settings_flags(p, TrainSettings, skip=DataSettings.model_fields)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(setting_names=names)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.data.anomalies import RepairRule
    from stream_lstm.training.train import TrainOptions, train

    s = build_settings(
        TrainSettings, args.config, **data_flags(args), **given(args, args.setting_names)
    )
    from stream_lstm.model.artifact import check_output_dir

    check_output_dir(s.out)  # before any data is read: not after an hour of training
    path, spec, preset = resolve_series(s)
    base: dict[str, Any] = dict(preset.train_defaults) if preset else {}

    def pick(name: str, default: Any) -> Any:
        given = getattr(s, name)
        return given if given is not None else base.get(name, default)

    calendar = pick("calendar", None)
    if calendar is not None and [c.lower() for c in calendar] == ["none"]:
        calendar = []
    quantiles = tuple(s.quantiles or ())
    opts = TrainOptions(
        kind=s.model,
        time_step=pick("time_step", preset.time_step if preset else 48),
        horizon=pick("horizon", preset.horizon if preset else 24),
        hidden_size=pick("hidden_size", 64),
        num_layers=s.layers,
        dropout=s.dropout,
        learned_init=s.learned_init,
        quantiles=quantiles,
        conv_channels=s.conv_channels,
        conv_kernel=s.conv_kernel,
        calendar=tuple(calendar) if calendar is not None else None,
        timezone=pick("timezone", preset.timezone if preset else "UTC"),
        scaling=pick("scaling", "global"),
        norm=pick("norm", "auto"),
        log1p=tuple(pick("log1p", ())),
        epochs=pick("epochs", 30),
        batch_size=s.batch_size,
        lr=s.lr,
        loss=pick("loss", "pinball" if quantiles else "mse"),
        clip=s.clip,
        patience=pick("patience", 5),
        seed=s.seed,
        tbptt_chunks=s.tbptt_chunks,
        device=s.device,
        fill=s.fill,
        max_gap=s.max_gap,
        repair=RepairRule(window=s.repair_window, k=s.repair_k, enabled=s.repair),
        split=tuple(s.split),  # type: ignore[arg-type]
        split_dates=tuple(s.split_dates) if s.split_dates else None,  # type: ignore[arg-type]
        progress=not args.no_progress,
        search=s.search,
        search_budget=s.search_budget,
    )
    console = Console()
    console.print(f"training {opts.kind} on {path} → {s.out}")
    artifact, metrics = train(path, spec, opts, s.out)
    from stream_lstm.commands._scores import print_scores
    from stream_lstm.training.evaluate import EvalResult

    if "search" in metrics:
        for c in metrics["search"]["candidates"]:
            score = f"validation MSE {c['val_mse']:.4f}" if "val_mse" in c else c["skipped"]
            mark = " ← chosen" if c.get("chosen") else ""
            console.print(f"search: {c['name']:16s} {score}{mark}")
    print_scores(console, EvalResult(**metrics["evaluation"]))
    best = metrics["training"]["best_epoch"]
    console.print(f"artifact {s.out} version {artifact.version} (best epoch {best})")
    return 0
