"""``stream-lstm models``: list model artifacts with version, data, and test metrics."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from stream_lstm.commands._output import JSON_HELP, write_json
from stream_lstm.errors import ConfigError, ModelError, read_error

HELP = "list model artifacts: version, kind, data, shape, test metrics against the baselines"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help=HELP,
        description=(
            "List the model artifacts in the given directories (an artifact directory itself, "
            "or a directory holding artifacts): version, kind, features → targets, time step, "
            "horizon, the data it was trained on, and its test RMSE next to the seasonal-naive "
            "baseline. Reads config.json and metrics.json only: nothing is loaded or unpickled. "
            "An artifact that cannot be read is listed with the reason, and the command then "
            "exits with code 2."
        ),
        epilog=(
            "--json: JSON Lines, one object per artifact: path, version, kind, features and "
            "targets (lists), time_step, horizon, interval_ms, data (file name), rows, "
            "test_rmse, seasonal_naive_rmse, persistence_rmse (original units, full precision; "
            "null when not recorded), trained (model.safetensors' mtime, epoch seconds); an "
            "artifact that cannot be read: {path, error}. No artifacts: no lines. "
            "example: stream-lstm models artifacts/  ·  "
            "stream-lstm models --json models | jq -r .version"
        ),
    )
    p.add_argument("paths", nargs="*", type=Path, default=[Path("artifacts")], metavar="DIR")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=run)


def _is_artifact(d: Path, strict: bool = False) -> bool:
    try:
        return (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    except PermissionError:
        if strict:
            raise
        return True  # in a folder, one that cannot be looked into is listed with the reason


def find_artifacts(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        try:
            if not p.is_dir():
                raise ConfigError(f"{p} is not a directory (give an artifact or a folder of them)")
            found += (
                [p]
                if _is_artifact(p, strict=True)
                else sorted(d for d in p.iterdir() if _is_artifact(d))
            )
        except OSError as e:
            raise read_error(p, e) from None
    return found


def describe(d: Path) -> dict[str, Any]:
    """One artifact's summary from its JSON files (a broken file is reported, not raised)."""
    row: dict[str, Any] = {"path": str(d)}
    try:
        os.stat(d / "config.json")
    except PermissionError as e:  # the directory itself cannot be searched
        return row | {"error": str(read_error(d, e))}
    except OSError:
        pass  # reported below
    try:
        cfg = json.loads((d / "config.json").read_text())
        version = (d / "VERSION").read_text().strip() if (d / "VERSION").is_file() else None
        metrics = (
            json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        )
        trained = (d / "model.safetensors").stat().st_mtime
    except OSError as e:
        return row | {"error": str(read_error(Path(e.filename) if e.filename else d, e))}
    except ValueError as e:
        return row | {"error": f"unreadable: {e}"}
    data = cfg.get("data") or {}
    scores = (metrics.get("evaluation") or {}).get("scores") or {}

    def rmse(name: str) -> float | None:
        v = ((scores.get(name) or {}).get("original") or {}).get("overall", {}).get("rmse")
        return float(v) if v is not None else None

    return row | {
        "version": version or metrics.get("version"),
        "kind": cfg.get("kind"),
        "features": cfg.get("features"),
        "targets": cfg.get("targets"),
        "time_step": cfg.get("time_step"),
        "horizon": cfg.get("horizon"),
        "interval_ms": cfg.get("interval_ms"),
        "data": Path(str(data.get("path") or "")).name or None,
        "rows": (metrics.get("data") or {}).get("rows"),
        "test_rmse": rmse("model"),
        "seasonal_naive_rmse": rmse("seasonal_naive"),
        "persistence_rmse": rmse("persistence"),
        "trained": trained,
    }


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = [describe(d) for d in find_artifacts(args.paths)]
    if args.json:
        for r in rows:
            write_json(r)
        return _exit_code(rows)
    console = Console()
    if not rows:
        console.print(
            f"no artifacts in {', '.join(map(str, args.paths))} (train one: stream-lstm train)"
        )
        return 0
    t = Table(title=f"model artifacts in {', '.join(map(str, args.paths))}")
    cols = ["model", "version", "kind", "features → targets", "T", "H", "data", "test RMSE",
            "seasonal naive", "trained"]  # fmt: skip
    for col in cols:
        right = col in ("T", "H", "test RMSE", "seasonal naive")
        t.add_column(col, justify="right" if right else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["path"], "[red]" + escape(r["error"]) + "[/red]", *[""] * 8)
            continue
        fmt = lambda v: "–" if v is None else f"{v:,.3g}"  # noqa: E731
        t.add_row(
            Path(r["path"]).name, r["version"] or "?", r["kind"] or "?",
            f"{','.join(r['features'] or [])} → {','.join(r['targets'] or [])}",
            str(r["time_step"]), str(r["horizon"]), r["data"] or "–",
            fmt(r["test_rmse"]), fmt(r["seasonal_naive_rmse"]),
            dt.datetime.fromtimestamp(r["trained"]).strftime("%Y-%m-%d"),
        )  # fmt: skip
    console.print(t)
    return _exit_code(rows)


def _exit_code(rows: list[dict[str, Any]]) -> int:
    """0, or an error (exit 2) naming the artifacts that could not be read, after the listing."""
    bad = [r for r in rows if "error" in r]
    if bad:
        raise ModelError(
            f"{len(bad)} of {len(rows)} artifacts could not be read: "
            + "; ".join(f"{r['path']}: {r['error']}" for r in bad)
        )
    return 0
