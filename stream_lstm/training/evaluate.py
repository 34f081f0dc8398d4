"""Evaluation as the stream sees it, next to three baselines on exactly the same (origin, h) pairs.

Forecasts are the ones the worker would publish: each key runs from its first row through the
rows as they are (no gap filling, no anomaly repair). A forecast made at time t for step h is
scored against the actual at t + h·interval when that row exists. Baselines on the same pairs:

* ``linear``: NLinear (Zeng et al., AAAI 2023, "Are Transformers Effective for Time Series
  Forecasting?"). From an origin, steps 1..H are ``last + W·(window − last) + b``, where
  ``window`` is the target's last T values of that key up to and including the origin (a key's
  first rows pad with its first value) and ``last`` the origin's value. ``W [H, T]`` and
  ``b [H]`` are shared by all keys and targets (channel-independent) and fitted in closed form
  (ridge least squares) on the standardised scale, on origins outside the evaluated split whose
  inputs and H future actuals are outside it too (for the test split: train + val). With no such
  origin it is fitted on the split itself, and ``linear_fit["fit"]`` says ``"in-sample"``.
* ``seasonal_naive``: the value one season before the target time.
* ``persistence``: the last value.

Metrics: MSE, MAE, RMSE, sMAPE per horizon step, per target and overall, in original units and
on the standardised scale the model is trained on. ``flags`` lists each target (and, with more
than one target, the pooled score) on which the model's standardised MSE is not below a
baseline's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from stream_lstm.data.calendar import MS_PER_DAY
from stream_lstm.data.names import KEY, TS
from stream_lstm.data.splits import SPLITS, SplitPoints
from stream_lstm.errors import DataError
from stream_lstm.model.artifact import write_file
from stream_lstm.model.runtime import Forecaster

METHODS = ("model", "linear", "seasonal_naive", "persistence")  # the model, then the baselines
METRICS = ("mse", "mae", "rmse", "smape")
BASELINE_NAMES = {
    "linear": "the linear baseline",
    "seasonal_naive": "seasonal naive",
    "persistence": "persistence",
}
LINEAR_MAX_SAMPLES = 50_000  # (origin, target) pairs the linear baseline is fitted on, at most
LINEAR_RIDGE = 1e-3  # ridge penalty, relative to the mean diagonal of the Gram matrix
LINEAR_SEED = 0  # for the subsample when there are more candidate pairs


def stream_rows(frame: pd.DataFrame, features: list[str], missing: str = "dlq") -> pd.DataFrame:
    """The rows the worker would apply (``frame`` sorted by key, time). ``missing="dlq"``: rows
    with every feature present (the worker dead-letters the others); ``"ffill"``: a missing
    feature takes the key's previous value first, as ``worker --missing ffill`` does; a key's
    rows before its first complete one have nothing to carry forward and are dropped)."""
    ok = frame[features].notna().all(axis=1)
    if missing == "ffill":
        started = ok.groupby(frame[KEY], sort=False).cummax()
        frame = frame[started].copy()
        frame[features] = frame.groupby(KEY, sort=False)[features].ffill()
        return frame.reset_index(drop=True)
    return frame[ok].reset_index(drop=True)


def _observed(
    frame: pd.DataFrame, features: list[str], targets: list[str], missing: str
) -> np.ndarray:
    """``[N, n_t]`` over :func:`stream_rows`' rows (the same selection, in the same order):
    whether the file holds each target value (not carried forward by ``--missing ffill``)."""
    ok = frame[features].notna().all(axis=1)
    if missing == "ffill":
        ok = ok.groupby(frame[KEY], sort=False).cummax()
    return np.asarray(frame.loc[ok, targets].notna().to_numpy())


def lookup(frame: pd.DataFrame, targets: list[str], when: np.ndarray) -> np.ndarray:
    """Values of ``targets`` at times ``when [N, H]`` of each row's key: ``[N, H, n_t]``.

    NaN where the key has no row at that time.
    """
    out = np.full((*when.shape, len(targets)), np.nan)
    for _, idx in frame.groupby(KEY, sort=False).indices.items():
        ts = frame[TS].to_numpy()[idx]
        vals = frame[targets].to_numpy(dtype=np.float64)[idx]
        w = when[idx]
        pos = np.clip(np.searchsorted(ts, w), 0, len(ts) - 1)
        hit = ts[pos] == w
        out[idx] = np.where(hit[..., None], vals[pos], np.nan)
    return out


def infer_season(frame: pd.DataFrame, target: str, interval_ms: int) -> int:
    """Daily or weekly season in steps, whichever autocorrelates more on the data given."""
    candidates = [
        c
        for c in (MS_PER_DAY // interval_ms, 7 * MS_PER_DAY // interval_ms)
        if c >= 2 and (c * interval_ms) % MS_PER_DAY == 0
    ]
    if not candidates:
        return 1
    best, best_r = candidates[0], -np.inf
    for c in candidates:
        lagged = lookup(frame, [target], frame[TS].to_numpy()[:, None] - c * interval_ms)[:, 0, 0]
        y = frame[target].to_numpy(dtype=np.float64)
        ok = np.isfinite(lagged) & np.isfinite(y)
        if ok.sum() > 10:
            r = float(np.corrcoef(y[ok], lagged[ok])[0, 1])
            if r > best_r:
                best, best_r = c, r
    return int(best)


def _metrics(
    pred: np.ndarray, actual: np.ndarray, mask: np.ndarray, targets: list[str]
) -> dict[str, Any]:
    """pred, actual ``[N, H, n_t]``, mask ``[N, H]`` → per-h lists, per-target and overall
    values (per target: also its count of scored values; overall pools all targets)."""
    m = mask[..., None] & np.isfinite(actual) & np.isfinite(pred)
    err = np.where(m, pred - actual, 0.0)
    denom = np.abs(actual) + np.abs(pred)
    sm = np.where(m & (denom > 0), 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)
    n_h = m.sum(axis=(0, 2))  # [H]
    n = int(m.sum())

    def per(x: np.ndarray) -> list[float | None]:
        """Per horizon step; None (null in JSON) for a step with nothing scored."""
        v = x.sum(axis=(0, 2)) / np.maximum(n_h, 1)
        return [float(a) if c else None for a, c in zip(v, n_h, strict=True)]

    mse_h, mae_h, smape_h = per(err**2), per(np.abs(err)), per(sm * 100)
    mse = float((err**2).sum() / max(n, 1))
    return {
        "count": n,
        "overall": {
            "mse": mse,
            "mae": float(np.abs(err).sum() / max(n, 1)),
            "rmse": math.sqrt(mse),
            "smape": float(sm.sum() * 100 / max(n, 1)),
        },
        "per_h": {
            "mse": mse_h,
            "mae": mae_h,
            "rmse": [None if v is None else math.sqrt(v) for v in mse_h],
            "smape": smape_h,
        },
        "per_target": {
            name: _pooled(err[..., j], sm[..., j], int(m[..., j].sum()))
            for j, name in enumerate(targets)
        },
    }


def _pooled(err: np.ndarray, sm: np.ndarray, n: int) -> dict[str, Any]:
    mse = float((err**2).sum() / max(n, 1))
    return {
        "mse": mse,
        "mae": float(np.abs(err).sum() / max(n, 1)),
        "rmse": math.sqrt(mse),
        "smape": float(sm.sum() * 100 / max(n, 1)),
        "count": n,
    }


@dataclass
class EvalResult:
    split: str
    season: int
    horizon: int
    targets: list[str]
    origins: int
    scores: dict[str, dict[str, dict[str, Any]]]  # method → scale → metrics
    coverage: dict[str, float] = field(default_factory=dict)
    # where the model's standardised MSE is not below a baseline's (see baseline_flags)
    flags: list[str] = field(default_factory=list)
    # how the linear baseline was fitted (see linear_baseline)
    linear_fit: dict[str, Any] = field(default_factory=dict)
    # for plots: a few keys' recent actuals and forecasts (original units)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def overall(self, method: str, scale: str = "original") -> dict[str, float]:
        return dict(self.scores[method][scale]["overall"])

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "season": self.season,
            "horizon": self.horizon,
            "targets": self.targets,
            "origins": self.origins,
            "scores": self.scores,
            "coverage": self.coverage,
            "flags": self.flags,
            "linear_fit": self.linear_fit,
        }


def evaluate(
    fc: Forecaster,
    frame: pd.DataFrame,
    points: SplitPoints | None,
    split: str = "test",
    season: int | None = None,
    missing: str = "dlq",
) -> EvalResult:
    cfg = fc.config
    targets, H, dt = list(cfg.targets), cfg.horizon, cfg.interval_ms
    rows = stream_rows(frame, list(cfg.features), missing)
    if rows.empty:
        raise DataError("no row has every feature the model needs")
    ts = rows[TS].to_numpy()
    in_split = points.mask(ts, split) if points is not None else np.ones(len(rows), bool)
    if not in_split.any():
        raise DataError(f"no rows in the {split} split")
    y_std = fc.forecast_frame(rows)  # [N, H, n_t, n_q]
    keys = rows[KEY].tolist()
    y_orig = fc.to_original(y_std, keys)
    point = y_orig[..., cfg.point_index]  # [N, H, n_t]
    steps = np.arange(1, H + 1)
    when = ts[:, None] + steps[None, :] * dt  # [N, H] target times
    # the truth is what the file holds: a value --missing ffill carried forward is no actual
    truth = rows.copy()
    truth[targets] = rows[targets].where(_observed(frame, list(cfg.features), targets, missing))
    actual = lookup(truth, targets, when)  # [N, H, n_t]
    actual_std = fc.to_standard(actual, keys)
    if season is not None and season < 1:
        raise DataError(f"--season must be >= 1 step, got {season}")
    if season is None:  # from the rows outside the scored span, else (--split all) from all
        season = infer_season(rows[~in_split] if (~in_split).any() else rows, targets[0], dt)
    back = season * np.ceil(steps / season).astype(np.int64)  # steps back from the target
    seasonal = lookup(rows, targets, ts[:, None] + (steps - back)[None, :] * dt)
    persistence = np.repeat(rows[targets].to_numpy(dtype=np.float64)[:, None, :], H, axis=1)
    future_in_split = points.mask(when, split) if points is not None else np.ones(when.shape, bool)
    linear, linear_fit = linear_baseline(fc, rows, in_split, future_in_split, actual_std)
    if points is not None and split in SPLITS:
        linear_fit["span"] = "+".join(s for s in SPLITS if s != split)
    preds = {
        "model": point,
        "linear": linear,
        "seasonal_naive": seasonal,
        "persistence": persistence,
    }
    assert tuple(preds) == METHODS
    mask = in_split[:, None] & np.isfinite(actual).all(-1)
    for name in METHODS[1:]:
        mask &= np.isfinite(preds[name]).all(-1)
    if not mask.any():
        raise DataError(
            f"nothing to score in the {split} split: no forecast origin has an actual at any of "
            f"its {H} steps with every baseline available (season {season} steps; the series "
            "may be shorter than the horizon or the season)"
        )
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for name, p in preds.items():
        scores[name] = {
            "original": _metrics(p, actual, mask, targets),
            "standardised": _metrics(fc.to_standard(p, keys), actual_std, mask, targets),
        }
    coverage: dict[str, float] = {}
    if len(cfg.quantiles) >= 2:
        lo, hi = y_orig[..., 0], y_orig[..., -1]
        inside = (actual >= lo) & (actual <= hi) & mask[..., None]
        coverage = {
            f"p{round(cfg.quantiles[0] * 100)}-p{round(cfg.quantiles[-1] * 100)}": float(
                inside.sum() / max(int(mask.sum()) * len(targets), 1)
            )
        }
    result = EvalResult(
        split,
        int(season),
        H,
        targets,
        int(mask.any(1).sum()),
        scores,
        coverage,
        flags=baseline_flags(scores, targets),
        linear_fit=linear_fit,
    )
    result.samples = _samples(rows, in_split, point, y_orig, targets, cfg.quantiles)
    return result


def key_windows(values: np.ndarray, rows: pd.DataFrame, T: int) -> np.ndarray:
    """``values [N, C]`` (one per row of ``rows``, sorted by key, time) → ``[N, C, T]``: each
    row's last ``T`` values of its key, oldest first, up to and including the row itself. A key's
    first rows, with fewer than ``T - 1`` predecessors, pad by repeating the key's first value."""
    out = np.empty((len(values), values.shape[1], T), dtype=values.dtype)
    for idx in rows.groupby(KEY, sort=False).indices.values():
        v = values[idx]
        padded = np.concatenate([np.repeat(v[:1], T - 1, axis=0), v], axis=0)
        out[idx] = sliding_window_view(padded, T, axis=0)  # [n, C, T]
    return out


def linear_baseline(
    fc: Forecaster,
    rows: pd.DataFrame,
    in_split: np.ndarray,
    future_in_split: np.ndarray,
    actual_std: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """NLinear (Zeng et al., AAAI 2023): ``last + W·(window − last) + b`` for steps 1..H, with
    ``W [H, T]`` and ``b [H]`` shared by keys and targets, fitted by ridge least squares on the
    standardised scale. Returns the forecasts in original units ``[N, H, n_t]`` (NaN where the
    window holds a missing value) and how they were fitted.

    Fitting pairs (origin, target): the origin, the rows of its window and its H target times
    all lie outside the evaluated split (``in_split``, ``future_in_split [N, H]``), and its H
    future actuals ``actual_std [N, H, n_t]`` exist. With none, the pairs of the split itself
    (``"fit": "in-sample"``). More than :data:`LINEAR_MAX_SAMPLES` pairs: a seeded subsample.
    """
    cfg = fc.config
    T, H, targets = cfg.time_step, cfg.horizon, list(cfg.targets)
    keys = rows[KEY].tolist()
    z = fc.to_standard(rows[targets].to_numpy(dtype=np.float64), keys)  # [N, n_t]
    win = key_windows(z, rows, T) - z[..., None]  # [N, n_t, T], relative to the last value
    window_ok = np.isfinite(win).all(-1)  # [N, n_t]
    future_ok = np.isfinite(actual_std).all(1)  # [N, n_t]
    touches = key_windows(in_split[:, None], rows, T)[:, 0].any(-1)  # [N]
    outside = ~in_split & ~touches & ~future_in_split.any(1)  # [N]
    fit = "out-of-sample"
    ok = window_ok & future_ok & outside[:, None]
    if not ok.any():
        fit = "in-sample"
        ok = window_ok & future_ok
    i, j = np.nonzero(ok)
    candidates = len(i)
    if candidates > LINEAR_MAX_SAMPLES:
        pick = np.random.default_rng(LINEAR_SEED).choice(candidates, LINEAR_MAX_SAMPLES, False)
        pick.sort()
        i, j = i[pick], j[pick]
    W, b, ridge = np.zeros((H, T)), np.zeros(H), 0.0
    if len(i):
        X = np.concatenate([win[i, j], np.ones((len(i), 1))], axis=1)  # [M, T + 1]
        Y = actual_std[i, :, j] - z[i, j][:, None]  # [M, H]
        gram = X.T @ X
        scale = float(np.trace(gram[:T, :T])) / T  # the mean squared input
        ridge = LINEAR_RIDGE * (scale if scale > 0 else 1.0)
        gram[np.arange(T), np.arange(T)] += ridge  # the bias is not penalised
        beta = np.linalg.solve(gram, X.T @ Y)  # [T + 1, H]
        W, b = beta[:T].T, beta[T]
    else:
        fit = "none"  # no origin has a full window and H actuals: the forecast is persistence
    pred_std = z[:, None, :] + (win @ W.T).transpose(0, 2, 1) + b[None, :, None]  # [N, H, n_t]
    pred = fc.to_original(pred_std[..., None], keys)[..., 0]  # [N, H, n_t]
    ts = rows[TS].to_numpy()
    info: dict[str, Any] = {
        "fit": fit,
        "origins": int(np.unique(i).size),
        "samples": len(i),
        "candidates": candidates,
        "first_origin_ms": int(ts[i].min()) if len(i) else None,
        "last_origin_ms": int(ts[i].max()) if len(i) else None,
        "window": T,
        "ridge": ridge,
    }
    return pred, info


def baseline_flags(scores: dict[str, dict[str, dict[str, Any]]], targets: list[str]) -> list[str]:
    """One line for each baseline and target where the model's standardised MSE is not below
    the baseline's, and one for the pooled score when there is more than one target."""
    flags = []
    model = scores["model"]["standardised"]
    for base in METHODS[1:]:
        if base not in scores:  # an older result
            continue
        other = scores[base]["standardised"]
        checks = [(f"on {t}", model["per_target"][t], other["per_target"][t]) for t in targets]
        if len(targets) > 1:
            pooled = {**model["overall"], "count": model["count"]}
            checks.insert(0, ("overall", pooled, other["overall"]))
        for where, mine, theirs in checks:
            if mine["count"] and not mine["mse"] < theirs["mse"]:
                flags.append(
                    f"model does not beat {BASELINE_NAMES[base]} {where} "
                    f"(standardised MSE {mine['mse']:.4g} vs {theirs['mse']:.4g})"
                )
    return flags


def _samples(
    rows: pd.DataFrame,
    in_split: np.ndarray,
    point: np.ndarray,
    full: np.ndarray,
    targets: list[str],
    quantiles: list[float],
    keys: int = 3,
    span: int = 24 * 14,
) -> list[dict[str, Any]]:
    out = []
    groups = cast(dict[str, np.ndarray], rows.groupby(KEY, sort=True).indices)
    for key, all_idx in list(groups.items())[:keys]:
        idx = all_idx[in_split[all_idx]][-span:]
        if idx.size == 0:
            continue
        origin = idx[len(idx) // 2]
        out.append(
            {
                "key": key,
                "ts": rows[TS].to_numpy()[idx],
                "actual": rows[targets[0]].to_numpy(dtype=np.float64)[idx],
                "h1": point[idx, 0, 0],
                "origin_ts": int(rows[TS].to_numpy()[origin]),
                "origin_path": point[origin, :, 0],
                "origin_band": (full[origin, :, 0, 0], full[origin, :, 0, -1])
                if len(quantiles) >= 2
                else None,
            }
        )
    return out


def write_report(directory: Path, metrics: dict[str, Any]) -> None:
    data = json.dumps(metrics, indent=1, default=_json_default).encode()
    write_file(directory / "metrics.json", data)


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def plot_all(directory: Path, history: Any, result: EvalResult) -> list[Path]:
    """Loss curves, forecast vs actual for a few keys, error by horizon (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    if history is not None and history.epochs:
        fig, ax = plt.subplots(figsize=(7, 4))
        ep = [e["epoch"] for e in history.epochs]
        ax.plot(ep, [e["train_loss"] for e in history.epochs], label="train")
        ax.plot(ep, [e["val_loss"] for e in history.epochs], label="validation")
        ax.axvline(
            history.best_epoch, color="grey", ls=":", label=f"best (epoch {history.best_epoch})"
        )
        ax.set(xlabel="epoch", ylabel="loss (standardised)", title="Loss curves")
        ax.legend()
        paths.append(_save(fig, directory / "loss_curves.png"))
    if result.samples:
        fig, axes = plt.subplots(
            len(result.samples), 1, figsize=(10, 3 * len(result.samples)), squeeze=False
        )
        for ax, s in zip(axes[:, 0], result.samples, strict=True):
            t = pd.to_datetime(s["ts"], unit="ms", utc=True)
            ax.plot(t, s["actual"], color="black", lw=1, label="actual")
            ax.plot(t, s["h1"], color="tab:blue", lw=1, alpha=0.8, label="forecast h=1")
            step = t[1] - t[0] if len(t) > 1 else pd.Timedelta(0)
            path_t = pd.to_datetime(s["origin_ts"], unit="ms", utc=True) + step * np.arange(
                1, len(s["origin_path"]) + 1
            )
            ax.plot(
                path_t,
                s["origin_path"],
                color="tab:red",
                lw=1.5,
                label=f"forecast h=1..{result.horizon}",
            )
            if s["origin_band"] is not None:
                ax.fill_between(
                    path_t, *s["origin_band"], color="tab:red", alpha=0.2, label="interval"
                )
            ax.set_title(f"{s['key']}: {result.targets[0]} ({result.split} span)")
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, directory / "forecast_vs_actual.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in METHODS:
        mae = [np.nan if v is None else v for v in result.scores[name]["original"]["per_h"]["mae"]]
        ax.plot(range(1, len(mae) + 1), mae, marker=".", label=name.replace("_", " "))
    ax.set(
        xlabel="horizon step h",
        ylabel=f"MAE ({result.targets[0]})",
        title=f"Error by horizon ({result.split})",
    )
    ax.legend()
    paths.append(_save(fig, directory / "error_by_horizon.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
