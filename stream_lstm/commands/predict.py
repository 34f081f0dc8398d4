"""``stream-lstm predict``: the forecast the worker would publish after every row of a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from stream_lstm.commands._data import (
    add_data_flags,
    add_missing_flag,
    data_flags,
    resolve_series,
)
from stream_lstm.commands._output import check_output_file
from stream_lstm.config import DataSettings, build_settings
from stream_lstm.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="forecasts for every row of a file, as the stream worker would publish them",
        description=(
            "For every input row, the forecast the stream worker publishes after consuming that "
            "row, with each key's state carried from its first row in the file. Output in long "
            "form: key, ts, target, h (1..H), value (and quantile when the model has them), in "
            "original units. Deterministic; the streaming parity test compares with it."
        ),
        epilog=(
            "example: stream-lstm predict --model models/vic_elec --dataset vic_elec "
            "--out p.parquet"
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="artifact directory")
    add_data_flags(p, columns=False)
    p.add_argument("--out", type=Path, required=True, help="output file, .csv or .parquet")
    add_missing_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stream_lstm.model.artifact import load_artifact
    from stream_lstm.model.runtime import Forecaster
    from stream_lstm.training.predict import predict_file

    if args.out.suffix.lower() not in {".csv", ".parquet", ".pq"}:
        raise ConfigError(f"--out must end in .csv or .parquet, got {args.out.name}")
    artifact = load_artifact(args.model)
    check_output_file(args.out, "--out")  # before the data is read and the model run
    cfg = artifact.config
    s = build_settings(DataSettings, None, **data_flags(args))
    path, spec, _ = resolve_series(s, cfg.data, (list(cfg.features), list(cfg.targets)))
    result = predict_file(Forecaster(artifact), path, spec, args.out, args.missing)
    rows = len(result) // max(1, cfg.horizon * cfg.n_targets * cfg.n_quantiles)
    Console().print(
        f"{rows} rows forecast ({len(result)} values) with model {artifact.version} → {args.out}"
    )
    return 0
