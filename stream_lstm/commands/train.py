"""``stream-lstm train``: fit a model on a data file and write an artifact directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from stream_lstm.commands._data import add_data_flags, data_flags, resolve_series
from stream_lstm.config import TrainSettings, build_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an lstm or cnn-lstm-attn model and write an artifact",
        description=(
            "Load a long-form CSV/Parquet file, validate it (duplicates, gaps, non-numeric "
            "values), "
            "repair anomalies by the mean of their neighbours, standardise on the training span, "
            "split chronologically, train with Adam (TBPTT for the stateful lstm), stop early on "
            "the validation loss, then evaluate on the test span against persistence and seasonal "
            "naive baselines. Writes config.json, model.safetensors, scaler.json, metrics.json, "
            "VERSION and plots/ to --out (checked for writing first, before any data is read; "
            "files get mode 0666 minus the umask). Settings also come from STREAM_LSTM_TRAIN_* "
            "variables or a [train] table in --config."
        ),
        epilog="example: stream-lstm train --dataset vic_elec --out models/vic_elec",
    )
    add_data_flags(p)
    p.add_argument("--config", type=Path, help="TOML file with a [train] table")
    p.add_argument("--out", type=Path, help="artifact directory to write (required)")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=["lstm", "cnn-lstm-attn"], help="model kind (default lstm)")
    m.add_argument("--time-step", type=int, help="window length T; TBPTT chunk length (default 48)")
    m.add_argument("--horizon", type=int, help="steps to forecast H (default 24)")
    m.add_argument("--hidden-size", type=int, help="LSTM hidden size (default 64)")
    m.add_argument("--layers", type=int, help="stacked LSTM layers (default 2)")
    m.add_argument("--dropout", type=float, help="dropout between layers and before the head (0.1)")
    m.add_argument(
        "--learned-init", action="store_true", default=None, help="learn h_0, c_0 (default zeros)"
    )
    m.add_argument(
        "--quantiles", help="e.g. 0.1,0.5,0.9 for interval forecasts (needs --loss pinball)"
    )
    m.add_argument("--conv-channels", type=int, help="cnn-lstm-attn: Conv1d channels (32)")
    m.add_argument("--conv-kernel", type=int, help="cnn-lstm-attn: Conv1d kernel size (3)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    t.add_argument("--loss", choices=["mse", "mae", "pinball"], help="training loss (default mse)")
    t.add_argument(
        "--batch-size", type=int, help="sequences (lstm) or windows/4 (cnn) per batch (32)"
    )
    t.add_argument("--lr", type=float, help="Adam learning rate (2e-3), halved on plateaus")
    t.add_argument("--clip", type=float, help="gradient norm clipping (1.0)")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs (5)")
    t.add_argument("--seed", type=int, help="random seed (0)")
    t.add_argument("--tbptt-chunks", type=int, help="lstm: chunks of T per carried-state piece (8)")
    t.add_argument("--device", help="auto (CUDA if available), cpu, cuda or cuda:N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("preparation")
    d.add_argument(
        "--scaling", choices=["global", "per-key"], help="standardisation statistics (global)"
    )
    d.add_argument("--log1p", help="columns modelled as log(1+x), e.g. counts")
    d.add_argument(
        "--calendar", help="calendar encodings: day,week,year or none (default by interval)"
    )
    d.add_argument("--timezone", help="IANA zone for calendar encodings (default UTC)")
    d.add_argument("--split", help="train,val,test fractions of the time span (0.7,0.15,0.15)")
    d.add_argument("--split-dates", help="VAL_START,TEST_START dates instead of fractions")
    d.add_argument("--fill", choices=["interpolate", "ffill", "zero"], help="gap fill policy")
    d.add_argument(
        "--max-gap", type=int, help="longest gap (steps) to fill; longer ones split the series (24)"
    )
    d.add_argument(
        "--no-repair", dest="repair", action="store_false", default=None, help="no anomaly repair"
    )
    d.add_argument("--repair-window", type=int, help="rolling median window for anomalies (25)")
    d.add_argument("--repair-k", type=float, help="flag |x - median| > k * 1.4826 * MAD (6)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.data.anomalies import RepairRule
    from stream_lstm.training.train import TrainOptions, train

    s = build_settings(
        TrainSettings,
        args.config,
        **data_flags(args),
        out=args.out,
        model=args.model,
        time_step=args.time_step,
        horizon=args.horizon,
        hidden_size=args.hidden_size,
        layers=args.layers,
        dropout=args.dropout,
        learned_init=args.learned_init,
        quantiles=args.quantiles,
        conv_channels=args.conv_channels,
        conv_kernel=args.conv_kernel,
        loss=args.loss,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip=args.clip,
        patience=args.patience,
        seed=args.seed,
        tbptt_chunks=args.tbptt_chunks,
        device=args.device,
        scaling=args.scaling,
        log1p=args.log1p,
        calendar=args.calendar,
        timezone=args.timezone,
        split=args.split,
        split_dates=args.split_dates,
        fill=args.fill,
        max_gap=args.max_gap,
        repair=args.repair,
        repair_window=args.repair_window,
        repair_k=args.repair_k,
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
    )
    console = Console()
    console.print(f"training {opts.kind} on {path} → {s.out}")
    artifact, metrics = train(path, spec, opts, s.out)
    from stream_lstm.commands._scores import print_scores
    from stream_lstm.training.evaluate import EvalResult

    print_scores(console, EvalResult(**metrics["evaluation"]))
    best = metrics["training"]["best_epoch"]
    console.print(f"artifact {s.out} version {artifact.version} (best epoch {best})")
    return 0
