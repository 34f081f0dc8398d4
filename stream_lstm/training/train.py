"""Training: data preparation, the TBPTT loop for ``lstm``, the window loop for ``cnn-lstm-attn``.

The stateful ``lstm`` trains with truncated back-propagation through time over long contiguous
per-key sequences: each training segment is cut into pieces of ``tbptt_chunks × time_step``
rows, a batch of pieces runs chunk by chunk (``time_step`` rows each) with the state carried
from chunk to chunk and detached, and the loss covers the forecast after every row. A piece
starts from ``h_0, c_0`` as a key's first event does in the stream, so the state the worker
carries is the state the model was trained with.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from stream_lstm.data import calendar
from stream_lstm.data.anomalies import RepairRule, repair_frame
from stream_lstm.data.loading import LoadReport, Source, load_frame, regularize
from stream_lstm.data.names import KEY, SEGMENT, TS, SeriesSpec
from stream_lstm.data.splits import SplitPoints, split_points
from stream_lstm.data.windows import horizon_targets
from stream_lstm.errors import ConfigError, DataError
from stream_lstm.model.artifact import (
    Artifact,
    build_module,
    check_output_dir,
    save_artifact,
    write_file,
)
from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.device import pick_device
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.runtime import Forecaster
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import NORMS, ModelConfig

log = logging.getLogger(__name__)
LOSSES = ("mse", "mae", "pinball")
# the rows anomaly repair changed: key, ts, column, old, new, filled (a row the gap fill added)
REPAIRS_FILE = "repairs.csv"


@dataclass(frozen=True)
class TrainOptions:
    kind: str = "lstm"
    time_step: int = 48
    horizon: int = 24
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    learned_init: bool = False
    quantiles: tuple[float, ...] = ()
    conv_channels: int = 32
    conv_kernel: int = 3
    attention_size: int = 32
    calendar: tuple[str, ...] | None = None  # None: chosen from the interval
    timezone: str = "UTC"
    scaling: str = "global"
    norm: str = "auto"  # auto: offset (lstm) or revin (windowed), or none: the better on validation
    log1p: tuple[str, ...] = ()
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: str = "mse"
    clip: float = 1.0
    patience: int = 5
    seed: int = 0
    tbptt_chunks: int = 8
    max_windows: int = 32768  # windows drawn per epoch for cnn-lstm-attn
    device: str = "auto"
    fill: str = "interpolate"
    max_gap: int = 24
    repair: RepairRule = field(default_factory=RepairRule)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_dates: tuple[str, str] | None = None
    progress: bool = True
    search: bool = False  # try SEARCH candidates, keep the best on the validation span
    search_budget: float = 1800.0  # seconds: no candidate starts after this

    def check(self) -> None:
        if self.search_budget <= 0:
            raise ConfigError("--search-budget must be > 0 seconds")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        if self.quantiles and self.loss != "pinball":
            raise ConfigError("--quantiles needs --loss pinball (the quantile loss)")
        if self.loss == "pinball" and not self.quantiles:
            raise ConfigError("--loss pinball needs --quantiles, e.g. 0.1,0.5,0.9")
        for name in ("epochs", "batch_size", "time_step", "horizon", "tbptt_chunks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        norm = self.resolved_norm
        if norm not in NORMS:
            raise ConfigError(f"--norm must be auto or one of {NORMS}, got {self.norm!r}")
        if norm == "revin" and self.kind == "lstm":
            raise ConfigError(
                "--norm revin is for windowed models; the stateful lstm uses offset or diff"
            )
        if norm in ("diff", "offset") and self.kind != "lstm":
            raise ConfigError(f"--norm {norm} is for the stateful lstm; windowed models use revin")

    @property
    def resolved_norm(self) -> str:
        if self.norm != "auto":
            return self.norm
        return "offset" if self.kind == "lstm" else "revin"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@dataclass
class Segment:
    """One contiguous piece of one key's regular series, encoded for the network."""

    x: np.ndarray  # [n, I] inputs
    y: np.ndarray  # [n, n_t] standardised targets
    split: np.ndarray  # [n] 'train' | 'val' | 'test'


@dataclass
class Prepared:
    frame: pd.DataFrame  # the loaded rows (not regularised), as the stream would see them
    report: LoadReport
    points: SplitPoints
    scaler: Scaler
    config: ModelConfig
    segments: list[Segment]
    repairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # see REPAIRS_FILE


def prepare(path: Source, spec: SeriesSpec, opts: TrainOptions) -> Prepared:
    """Load, validate, regularise, repair, split, fit the scaler and encode the segments."""
    opts.check()
    df, report = load_frame(path, spec)
    points = split_points(df, fractions=opts.split, dates=opts.split_dates)
    cols = spec.value_cols
    reg = regularize(
        df, report.interval_ms, cols, fill=opts.fill, max_gap=opts.max_gap, report=report
    )
    reg, report.anomalies_repaired, repairs = repair_frame(
        reg, cols, opts.repair, SEGMENT, interval_ms=report.interval_ms, ts_col=TS, key_col=KEY
    )
    # a repaired row the grid added (a gap filled by --fill) was not in the file: say so
    given = pd.MultiIndex.from_arrays([df[KEY].astype(str), df[TS].astype(np.int64)])
    at = pd.MultiIndex.from_arrays([repairs["key"].astype(str), repairs["ts"].astype(np.int64)])
    repairs["filled"] = ~at.isin(given)
    labels = points.label(reg[TS].to_numpy())
    unknown = [c for c in opts.log1p if c not in cols]
    if unknown:
        raise ConfigError(f"--log1p columns {unknown} are not among the features or targets {cols}")
    fit_on = reg[labels == "train"].copy()
    for c in opts.log1p:
        low = float(np.nanmin(df[c].to_numpy(dtype=np.float64), initial=0.0))
        if low < 0:
            raise DataError(
                f"--log1p {c}: the column has negative values (min {low:g}); log(1 + x) is for "
                "counts and volumes (negative values would all become 0)"
            )
        fit_on[c] = np.log1p(np.maximum(fit_on[c].to_numpy(), 0))
    scaler = Scaler.fit(fit_on, cols, opts.scaling, KEY)
    encodings = (
        opts.calendar
        if opts.calendar is not None
        else calendar.default_encodings(report.interval_ms)
    )
    calendar.validate(tuple(encodings), opts.timezone)
    config = ModelConfig(
        kind=opts.kind,  # type: ignore[arg-type]
        features=list(spec.features),
        targets=list(spec.targets),
        calendar=list(encodings),
        timezone=opts.timezone,
        time_step=opts.time_step,
        horizon=opts.horizon,
        interval_ms=report.interval_ms,
        hidden_size=opts.hidden_size,
        num_layers=opts.num_layers,
        dropout=opts.dropout,
        learned_init=opts.learned_init,
        quantiles=list(opts.quantiles),
        conv_channels=opts.conv_channels,
        conv_kernel=opts.conv_kernel,
        attention_size=opts.attention_size,
        scaling=opts.scaling,  # type: ignore[arg-type]
        norm=opts.resolved_norm,  # type: ignore[arg-type]
        log1p=list(opts.log1p),
        training={k: v for k, v in asdict(opts).items() if k != "progress"},
        data={
            "path": None if isinstance(path, pd.DataFrame) else str(path),
            "key_col": spec.key_col,
            "time_col": spec.time_col,
            "split": {"val_start_ms": points.val_start, "test_start_ms": points.test_start},
        },
    )
    enc = Forecaster(Artifact(config, scaler, build_module(config), "untrained"))
    segments = []
    feats = list(spec.features)
    # each row's key's previous row (across segment breaks, as the stream sees it)
    prev_all = reg.groupby(KEY, sort=False)[feats].shift(1).to_numpy(dtype=np.float64)
    for _, idx in reg.groupby(SEGMENT, sort=True).indices.items():
        rows = reg.iloc[idx]
        keys = rows[KEY].tolist()
        x = enc.inputs(rows[feats].to_numpy(), rows[TS].to_numpy(), keys, prev_all[idx])
        y = enc.to_standard(rows[list(spec.targets)].to_numpy(), keys).astype(np.float32)
        segments.append(Segment(x, y, labels[idx]))
    return Prepared(df, report, points, scaler, config, segments, repairs)


# -- losses -----------------------------------------------------------------------------------
def forecast_loss(pred: Tensor, target: Tensor, kind: str, quantiles: Tensor | None) -> Tensor:
    """pred ``[..., H, n_t, n_q]``, target ``[..., H, n_t]`` (NaN = no target) → mean loss."""
    valid = ~torch.isnan(target)
    t = torch.nan_to_num(target)
    if kind == "pinball":
        assert quantiles is not None
        diff = t[..., None] - pred  # [..., H, n_t, n_q]
        per = torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean(-1)
    elif kind == "mae":
        per = (pred[..., 0] - t).abs()
    else:
        per = (pred[..., 0] - t) ** 2
    n = valid.sum()
    return (per * valid).sum() / n.clamp(min=1)


def _targets_within(seg: Segment, split: str, horizon: int) -> np.ndarray:
    """Horizon targets ``[n, H, n_t]`` that never reach outside ``split`` (NaN there)."""
    y = np.where((seg.split == split)[:, None], seg.y, np.nan).astype(np.float32)
    return horizon_targets(y, horizon)


# -- the loops --------------------------------------------------------------------------------
@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False


def _tbptt_batches(
    segs: list[Segment], opts: TrainOptions, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pieces of training rows, shuffled and batched.

    Each batch: ``x [B, L, I]``, ``y [B, L, H, n_t]`` (NaN = no target), ``mask [B, L]``.
    """
    L = opts.time_step * opts.tbptt_chunks
    pieces = []
    for seg in segs:
        tr = np.flatnonzero(seg.split == "train")
        if tr.size < 2:
            continue
        x, y = seg.x[tr], _targets_within(seg, "train", opts.horizon)[tr]
        start = int(rng.integers(0, min(L, tr.size)))  # vary the chunk borders between epochs
        cuts = [0, *range(start if start else L, tr.size, L), tr.size]
        pieces += [(x[a:b], y[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    order = rng.permutation(len(pieces))
    batches = []
    for s in range(0, len(order), opts.batch_size):
        chosen = [pieces[i] for i in order[s : s + opts.batch_size]]
        n = max(len(p[0]) for p in chosen)
        xb = np.zeros((len(chosen), n, chosen[0][0].shape[1]), np.float32)
        yb = np.full((len(chosen), n, *chosen[0][1].shape[1:]), np.nan, np.float32)
        mb = np.zeros((len(chosen), n), bool)
        for i, (px, py) in enumerate(chosen):
            xb[i, : len(px)], yb[i, : len(px)], mb[i, : len(px)] = px, py, True
        batches.append((xb, np.where(mb[..., None, None], yb, np.nan), mb))
    return batches


def _lstm_val_loss(
    m: LSTMForecaster, segs: list[Segment], opts: TrainOptions, dev: torch.device, q: Tensor | None
) -> float:
    """Run each segment from h_0 over a warm-up before validation, score the validation rows."""
    warm = max(20 * opts.time_step, 1000)
    total, count = 0.0, 0
    with torch.no_grad():
        for seg in segs:
            val = np.flatnonzero(seg.split == "val")
            if val.size == 0:
                continue
            a, b = max(0, int(val[0]) - warm), int(val[-1]) + 1
            x = torch.from_numpy(seg.x[a:b])[None].to(dev)
            y = torch.from_numpy(_targets_within(seg, "val", opts.horizon)[a:b])[None].to(dev)
            pred, _ = m(x)
            valid = int((~torch.isnan(y)).sum())
            total += float(forecast_loss(pred, y, opts.loss, q)) * valid
            count += valid
    return total / max(count, 1)


def _window_index(segs: list[Segment], split: str, T: int) -> np.ndarray:
    """(segment, row) of every window of ``T`` rows that ends on a row of ``split``."""
    out = []
    for si, seg in enumerate(segs):
        rows = np.flatnonzero(seg.split == split)
        rows = rows[rows >= T - 1]
        out.append(np.stack([np.full(rows.size, si), rows], 1))
    return np.concatenate(out) if out else np.empty((0, 2), int)


def _gather_windows(
    segs: list[Segment], idx: np.ndarray, T: int, ys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[B, T, I]`` and their targets ``[B, H, n_t]`` for (segment, end row) pairs."""
    xs, tg = [], []
    back = np.arange(-T + 1, 1)
    for si in np.unique(idx[:, 0]):
        ends = idx[idx[:, 0] == si, 1]
        xs.append(segs[si].x[ends[:, None] + back])  # [b, T, I]
        tg.append(ys[si][ends])  # [b, H, n_t]
    return np.concatenate(xs), np.concatenate(tg)


class TBPTTTraining:
    """The stateful ``lstm``: truncated back-propagation through time over long pieces of each
    series, carrying ``(h, c)`` across chunks of ``time_step`` rows; validation runs each
    segment from ``h_0`` over a warm-up."""

    def __init__(
        self, prep: Prepared, opts: TrainOptions, dev: torch.device, q: Tensor | None
    ) -> None:
        self.segs, self.opts, self.dev, self.q = prep.segments, opts, dev, q
        self.T = prep.config.time_step

    def losses(self, model: nn.Module, rng: np.random.Generator) -> Iterator[Tensor]:
        """One epoch: the loss of each chunk, to be optimised before the next is computed."""
        assert isinstance(model, LSTMForecaster)
        T, dev, opts = self.T, self.dev, self.opts
        for xb, yb, _ in _tbptt_batches(self.segs, opts, rng):
            x, y = torch.from_numpy(xb).to(dev), torch.from_numpy(yb).to(dev)
            state = model.init_state(x.shape[0], dev)
            for s in range(0, x.shape[1], T):
                pred, state = model(x[:, s : s + T], state)
                state = (state[0].detach(), state[1].detach())  # truncate BPTT here
                loss = forecast_loss(pred, y[:, s : s + T], opts.loss, self.q)
                if torch.isnan(y[:, s : s + T]).all():
                    continue
                yield loss

    def val_loss(self, model: nn.Module) -> float:
        assert isinstance(model, LSTMForecaster)
        return _lstm_val_loss(model, self.segs, self.opts, self.dev, self.q)


class WindowTraining:
    """Windowed models (``cnn-lstm-attn``): shuffled windows of ``time_step`` rows (at most
    ``max_windows`` an epoch), each with its horizon of targets."""

    def __init__(
        self, prep: Prepared, opts: TrainOptions, dev: torch.device, q: Tensor | None
    ) -> None:
        self.segs, self.opts, self.dev, self.q = prep.segments, opts, dev, q
        cfg = prep.config
        self.T = cfg.time_step
        self.train_idx = _window_index(self.segs, "train", cfg.time_step)
        self.val_idx = _window_index(self.segs, "val", cfg.time_step)
        if len(self.train_idx) == 0 or len(self.val_idx) == 0:
            raise DataError(f"too few rows for windows of time_step={cfg.time_step}")
        self.ys_train = [_targets_within(s, "train", cfg.horizon) for s in self.segs]
        self.ys_val = [_targets_within(s, "val", cfg.horizon) for s in self.segs]

    def losses(self, model: nn.Module, rng: np.random.Generator) -> Iterator[Tensor]:
        opts, dev = self.opts, self.dev
        take = rng.permutation(len(self.train_idx))[: opts.max_windows]
        bs = max(opts.batch_size, 128)
        for s in range(0, len(take), bs):
            idx = self.train_idx[take[s : s + bs]]
            xb, yb = _gather_windows(self.segs, idx, self.T, self.ys_train)
            pred = model(torch.from_numpy(xb).to(dev))
            yield forecast_loss(pred, torch.from_numpy(yb).to(dev), opts.loss, self.q)

    def val_loss(self, model: nn.Module) -> float:
        assert isinstance(model, CNNLSTMAttention)
        return _window_val_loss(
            model, self.segs, self.val_idx, self.ys_val, self.opts, self.dev, self.q
        )


def fit(prep: Prepared, opts: TrainOptions) -> tuple[nn.Module, History]:
    """Train with Adam, gradient clipping, LR on plateau, early stopping; restore the best.
    The epochs themselves are the model kind's (:class:`TBPTTTraining`, :class:`WindowTraining`)."""
    seed_everything(opts.seed)
    rng = np.random.default_rng(opts.seed)
    dev = pick_device(opts.device)
    cfg = prep.config
    model = build_module(cfg).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optim, factor=0.5, patience=max(1, opts.patience // 2)
    )
    q = torch.tensor(cfg.quantiles, device=dev) if cfg.quantiles else None
    kind = (TBPTTTraining if cfg.stateful else WindowTraining)(prep, opts, dev, q)
    hist = History()
    best = copy.deepcopy(model.state_dict())
    wait = 0
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not opts.progress, transient=False) as bar:
        task = bar.add_task("training", total=opts.epochs, info="")
        for epoch in range(1, opts.epochs + 1):
            model.train()
            losses = []
            for loss in kind.losses(model, rng):
                optim.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
                optim.step()
                losses.append(float(loss.detach()))
                bar.update(task, info=f"epoch {epoch} loss {np.mean(losses[-50:]):.4f}")
            model.eval()
            val_loss = kind.val_loss(model)
            sched.step(val_loss)
            lr = optim.param_groups[0]["lr"]
            train_loss = float(np.mean(losses)) if losses else float("nan")
            hist.epochs.append(
                {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr}
            )
            improved = val_loss < hist.best_val_loss - 1e-6
            if improved:
                hist.best_val_loss, hist.best_epoch, wait = val_loss, epoch, 0
                best = copy.deepcopy(model.state_dict())
            else:
                wait += 1
            bar.update(
                task,
                advance=1,
                info=f"epoch {epoch} train {train_loss:.4f} val {val_loss:.4f} "
                f"best {hist.best_val_loss:.4f}",
            )
            log.info(
                "epoch %d: train %.4f val %.4f lr %.2g%s",
                epoch,
                train_loss,
                val_loss,
                lr,
                " *" if improved else "",
            )
            if wait >= opts.patience:
                hist.stopped_early = True
                break
    model.load_state_dict(best)
    return model.cpu().eval(), hist


def _window_val_loss(
    model: CNNLSTMAttention,
    segs: list[Segment],
    idx: np.ndarray,
    ys: list[np.ndarray],
    opts: TrainOptions,
    dev: torch.device,
    q: Tensor | None,
) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(idx), 1024):
            xb, yb = _gather_windows(segs, idx[s : s + 1024], opts.time_step, ys)
            y = torch.from_numpy(yb).to(dev)
            valid = int((~torch.isnan(y)).sum())
            total += (
                float(forecast_loss(model(torch.from_numpy(xb).to(dev)), y, opts.loss, q)) * valid
            )
            count += valid
    return total / max(count, 1)


# -- model selection --------------------------------------------------------------------------
def candidates(opts: TrainOptions) -> list[tuple[str, TrainOptions]]:
    """The configurations ``train`` tries, in this order; one means no selection.

    ``--norm auto`` (the default) tries the normalisation that follows drift (``offset`` for the
    stateful lstm, ``revin`` for windowed kinds) and ``none``: data whose level holds still can
    do better without it, data whose level moves much better with it. ``--search`` adds, on the
    first candidate's normalisation, a doubled hidden size, the other point loss (MAE for MSE,
    MSE for MAE) and a doubled window (``time_step``). Candidates are compared by the
    standardised MSE of their forecasts on the validation span, scored as the stream sees it
    (:func:`stream_lstm.training.evaluate.evaluate` with ``split="val"``)."""
    norms = [opts.resolved_norm, "none"] if opts.norm == "auto" else [opts.norm]
    out = [(f"norm {n}", replace(opts, norm=n)) for n in norms]
    if opts.search:
        base = out[0][1]
        out.append(
            (f"hidden {2 * opts.hidden_size}", replace(base, hidden_size=2 * opts.hidden_size))
        )
        if opts.loss in ("mse", "mae"):
            loss = "mae" if opts.loss == "mse" else "mse"
            out.append((f"loss {loss}", replace(base, loss=loss)))
        out.append((f"time_step {2 * opts.time_step}", replace(base, time_step=2 * opts.time_step)))
    return out


@dataclass
class Trained:
    prep: Prepared
    module: nn.Module
    hist: History
    val_mse: float  # standardised MSE of the forecasts on the validation span
    seconds: float


def _train_one(path: Source, spec: SeriesSpec, opts: TrainOptions) -> Trained:
    from stream_lstm.training import evaluate as ev

    t0 = time.perf_counter()
    prep = prepare(path, spec, opts)
    module, hist = fit(prep, opts)
    fc = Forecaster(Artifact(prep.config, prep.scaler, module, "candidate"))
    val = ev.evaluate(fc, prep.frame, prep.points, split="val")
    mse = float(val.scores["model"]["standardised"]["overall"]["mse"])
    return Trained(prep, module, hist, mse, time.perf_counter() - t0)


def search(
    path: Source, spec: SeriesSpec, opts: TrainOptions
) -> tuple[Trained, list[dict[str, Any]]]:
    """Train each of :func:`candidates` while the budget lasts; the best on validation wins.

    The first candidate always runs; a later one starts only while the time spent is below
    ``opts.search_budget``. Returns the winner and every candidate's record."""
    t0 = time.perf_counter()
    best: Trained | None = None
    records: list[dict[str, Any]] = []
    for name, c in candidates(opts):
        log.info("training candidate %s", name)
        spent = time.perf_counter() - t0
        rec: dict[str, Any] = {
            "name": name,
            "norm": c.resolved_norm,
            "hidden_size": c.hidden_size,
            "loss": c.loss,
            "time_step": c.time_step,
        }
        if best is not None and spent >= opts.search_budget:
            rec["skipped"] = f"budget of {opts.search_budget:.0f} s spent ({spent:.0f} s)"
            rec["chosen"] = False
            records.append(rec)
            log.info("search: %s skipped (%s)", name, rec["skipped"])
            continue
        try:
            c.check()
            t = _train_one(path, spec, c)
        except (ConfigError, DataError) as e:
            if best is None:
                raise  # the first candidate's error is the user's: settings or data to fix
            rec["skipped"] = str(e)
            rec["chosen"] = False
            records.append(rec)
            log.info("search: %s skipped (%s)", name, e)
            continue
        rec.update(val_mse=t.val_mse, seconds=round(t.seconds, 1), best_epoch=t.hist.best_epoch)
        records.append(rec)
        log.info("search: %s validation MSE %.4f (%.0f s)", name, t.val_mse, t.seconds)
        if best is None or t.val_mse < best.val_mse:
            best = t
            for r in records:
                r["chosen"] = r is rec
        else:
            rec["chosen"] = False
    assert best is not None
    return best, records


def train(
    path: Source, spec: SeriesSpec, opts: TrainOptions, out: Path
) -> tuple[Artifact, dict[str, Any]]:
    """Prepare, fit (or search), save the artifact, evaluate on the test span, write metrics,
    the repaired rows and plots.

    ``out`` is checked first: a path that cannot be written fails before any data is read."""
    from stream_lstm.training import evaluate as ev

    check_output_dir(out)
    opts.check()
    records: list[dict[str, Any]] | None = None
    if len(candidates(opts)) > 1:
        won, records = search(path, spec, opts)
        prep, module, hist = won.prep, won.module, won.hist
    else:
        prep = prepare(path, spec, opts)
        module, hist = fit(prep, opts)
    for line in prep.report.lines():
        log.info("data: %s", line)
    version = save_artifact(out, prep.config, module, prep.scaler)
    artifact = Artifact(prep.config, prep.scaler, module, version, path=out)
    result = ev.evaluate(Forecaster(artifact), prep.frame, prep.points, split="test")
    for flag in result.flags:
        log.warning("%s", flag)
    write_file(out / REPAIRS_FILE, prep.repairs.to_csv(index=False).encode())
    cfg = prep.config
    metrics = {
        "version": version,
        "model": {
            "kind": cfg.kind,
            "norm": cfg.norm,
            "time_step": cfg.time_step,
            "hidden_size": cfg.hidden_size,
            "loss": cfg.training.get("loss"),
        },
        "data": {**asdict(prep.report), "repairs_file": REPAIRS_FILE},
        "training": asdict(hist),
        "evaluation": result.to_json(),
    }
    if records is not None:
        metrics["search"] = {
            "budget_s": opts.search_budget,
            "score": "standardised MSE on the validation span",
            "candidates": records,
        }
    ev.write_report(out, metrics)
    ev.plot_all(out / "plots", hist, result)
    artifact.metrics = metrics
    return artifact, metrics
