"""``stream-lstm evaluate``: score a model against a linear (NLinear), a seasonal naive and a
persistence baseline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

from stream_lstm.commands._data import (
    add_data_flags,
    add_missing_flag,
    data_flags,
    resolve_series,
)
from stream_lstm.commands._output import JSON_HELP, check_output_file, write_json
from stream_lstm.commands._scores import print_scores
from stream_lstm.config import DataSettings, build_settings
from stream_lstm.errors import ConfigError

if TYPE_CHECKING:  # keeps `stream-lstm --help` free of torch
    pass


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a data file next to linear, seasonal naive and persistence",
        description=(
            "Run the model over the file exactly as the stream worker would (each key from its "
            "first row) and score the forecasts made in the chosen split against the actuals "
            "that follow: MSE, MAE, RMSE and sMAPE per horizon step, per target and overall, in "
            "original units and standardised, next to three baselines on the "
            "same (origin, step) pairs: linear (NLinear: last value plus a ridge fit of the "
            "next steps on the last time_step values, relative to the last one, shared by all "
            "keys and targets and fitted outside the scored split, e.g. on train+val for "
            "--split test), seasonal naive and persistence. Flags each target on which the "
            "model's standardised MSE is not below a baseline's. Prints tables and writes JSON."
        ),
        epilog=(
            "--json: one JSON document on stdout instead of the tables, the one written to "
            "--out plus where it went: {model (version), data (file), split, season, horizon, "
            "targets, origins, scores: {METHOD: {original|standardised: {count, overall: "
            "{mse, mae, rmse, smape}, per_h: {mse|mae|rmse|smape: [one per step, null where "
            "nothing was scored]}, per_target: {TARGET: {mse, mae, rmse, smape, count}}}}}, "
            "coverage, flags, linear_fit, out, plots: [PNG paths]}; METHOD: model, linear, "
            "seasonal_naive, persistence; numbers at full precision (the tables round). "
            "example: stream-lstm evaluate --model models/vic_elec --dataset vic_elec"
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="artifact directory")
    add_data_flags(p, columns=False)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="which span to score, with the model's training cut dates (default test)",
    )
    p.add_argument("--season", type=int, help="seasonal naive period in steps (default: inferred)")
    add_missing_flag(p)
    p.add_argument("--out", type=Path, help="JSON file to write (default <model>/evaluation.json)")
    p.add_argument("--plots", type=Path, help="directory for PNG plots (default: none)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.data.loading import load_frame
    from stream_lstm.data.splits import SplitPoints
    from stream_lstm.model.artifact import load_artifact
    from stream_lstm.model.runtime import Forecaster
    from stream_lstm.training.evaluate import evaluate, plot_all

    artifact = load_artifact(args.model)
    out = args.out or args.model / "evaluation.json"
    check_output_file(out, "--out" if args.out else "the evaluation (default --out)")
    if args.plots:
        check_output_file(args.plots / "x.png", "--plots")
    cfg = artifact.config
    s = build_settings(DataSettings, None, **data_flags(args))
    path, spec, _ = resolve_series(s, cfg.data, (list(cfg.features), list(cfg.targets)))
    frame, _ = load_frame(path, spec)
    cut = cfg.data.get("split") or {}
    points = None
    if args.split != "all":
        if not cut:
            raise ConfigError("the model records no split dates; use --split all")
        points = SplitPoints(int(cut["val_start_ms"]), int(cut["test_start_ms"]))
    result = evaluate(Forecaster(artifact), frame, points, args.split, args.season, args.missing)
    doc = {"model": artifact.version, "data": str(path), **result.to_json()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if args.json:
        plots = plot_all(args.plots, None, result) if args.plots else []
        write_json(doc | {"out": str(out), "plots": [str(p) for p in plots]})
        return 0
    console = Console()
    print_scores(console, result)
    if args.plots:
        for png in plot_all(args.plots, None, result):
            console.print(f"plot: {png}")
    console.print(f"written: {out}")
    return 0
