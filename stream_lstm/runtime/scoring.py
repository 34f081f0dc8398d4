"""Live forecast scoring: each arriving actual scores the forecasts made earlier for its time, and
a per-key residual tracker raises grouped alerts.

Per key, the state keeps the forecasts of its last ``H`` events (only the scored horizon steps:
the point, and the interval's lower and upper quantile when the model has quantiles) with their
event times, in a ring indexed by event number. An event at time ``ts`` scores, for every
scored step ``s``, the forecast made by the key's event at ``ts - s·interval`` if there was one
(gaps in a series simply leave fewer forecasts to score). Errors are summed per horizon step and
target into Prometheus counters, never per key.

The one-step residual ``r = actual - forecast(step 1)`` feeds an exponentially weighted mean and
variance per key and target (``alpha``; during the first ``1/alpha`` residuals, the plain running
mean and variance; once warm, a residual is clipped at the threshold before it is added). An
actual is *outside* when ``|r - mean| > sigma · std`` (after ``warmup`` residuals) or, for models
with quantiles, when it lies farther from the median than ``sigma`` standard deviations as the
forecast's interval implies them (the distance from the median to the highest quantile ``q`` is
``Φ⁻¹(q)`` of them; likewise below), and at least outside the interval (the plain interval
would flag ``1 - coverage`` of all actuals by design: a fifth for a 0.1-0.9 interval). A key's
*excursion* opens with its first outside actual — one ``open`` alert — and closes at the next
actual inside — one ``close`` alert with how many actuals were outside and the peak score — so
one ongoing excursion never floods the alerts topic. The alert decision uses the statistics from
before the residual is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import msgspec
import numpy as np

from stream_lstm.model.spec import ModelConfig
from stream_lstm.runtime.cache import StateCache
from stream_lstm.stores.record import NO_TS

AUTO_STEPS = (1, 2, 3, 6, 12, 24, 48, 96, 168, 336)


def resolve_steps(spec: str, horizon: int) -> tuple[int, ...]:
    """``auto`` (1, 2, 3, 6, 12, 24, … up to H, and H), ``all``, ``none``, or a list ``1,6,24``.

    Step 1 is always scored when anything is: the residual tracker and alerts need it.
    """
    spec = spec.strip().lower()
    if spec in ("none", "off", ""):
        return ()
    if spec == "auto":
        steps = {s for s in AUTO_STEPS if s <= horizon} | {horizon}
    elif spec == "all":
        steps = set(range(1, horizon + 1))
    else:
        try:
            steps = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise ValueError(
                f"score steps {spec!r}: expected auto, all, none or a list like 1,6,24"
            ) from None
        bad = sorted(s for s in steps if not 1 <= s <= horizon)
        if bad:
            raise ValueError(f"score steps {bad} are outside the model's horizon 1..{horizon}")
    return tuple(sorted(steps | {1}))


@dataclass(frozen=True)
class ScoringConfig:
    steps: str = "auto"  # see resolve_steps
    # the defaults are WorkerSettings' (measured on real data: bench/alerts.py)
    alpha: float = 0.02  # weight of the newest residual in the per-key mean and variance
    sigma: float = 6.0  # an actual is outside beyond sigma standard deviations (0: never)
    interval: bool = True  # ... or beyond sigma as the quantiles imply (models with quantiles)
    warmup: int = 48  # residuals a key needs before the sigma rule applies


class Alert(msgspec.Struct, omit_defaults=True):
    """One message on the alerts topic (keyed by the entity key)."""

    key: str
    state: Literal["open", "close"]
    ts: int  # the actual's time, epoch ms
    model: str
    target: str  # the target with the highest score
    actual: float | None
    expected: float | None  # the one-step point forecast for ts
    lower: float | None = None  # the forecast interval, when the model has quantiles
    upper: float | None = None
    score: float | None = None  # |residual - mean| / std (None before warmup)
    reason: str = ""  # "sigma", "interval" or "sigma,interval" (open); "" (close)
    since: int = 0  # when the excursion opened (epoch ms)
    count: int = 0  # actuals outside so far in this excursion
    peak: float | None = None  # highest score in this excursion


@dataclass
class TickScores:
    """What one tick's actuals scored, summed per (step index, target)."""

    n: np.ndarray  # [S, n_t] forecasts scored
    abs_err: np.ndarray  # [S, n_t]
    sq_err: np.ndarray  # [S, n_t]
    inside: np.ndarray | None  # [S, n_t] actuals inside the interval (models with quantiles)
    alerts: list[Alert] = field(default_factory=list)


@dataclass(frozen=True)
class TickGroups:
    """How a tick's applied events group by key (from the engine): events in key order."""

    slots: np.ndarray  # [K] cache slot per key
    kpos: np.ndarray  # [n] key row per event
    pos: np.ndarray  # [n] index of the event among its key's events this tick
    counts: np.ndarray  # [K] events per key this tick
    first: np.ndarray  # [K] index of the key's first event


def _none(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


class Scorer:
    """Scores a tick's actuals against the stored forecasts and keeps the residual trackers."""

    def __init__(self, cfg: ScoringConfig, mc: ModelConfig, version: str) -> None:
        self.cfg = cfg
        self.version = version
        self.horizon = mc.horizon
        self.interval_ms = mc.interval_ms
        self.targets = list(mc.targets)
        self.steps = np.asarray(resolve_steps(cfg.steps, mc.horizon), dtype=np.int64)
        self.step_index = np.full(mc.horizon + 1, -1, np.int64)
        self.step_index[self.steps] = np.arange(len(self.steps))
        # per step and target: point [, lower, upper]
        self.stat_index = (
            [mc.point_index, 0, len(mc.quantiles) - 1] if mc.quantiles else [mc.point_index]
        )
        self.has_interval = bool(mc.quantiles)
        # the interval rule's reach beyond the median, in multiples of each side's width
        # (upper - median, median - lower): sigma standard deviations as the lowest and highest
        # quantile imply them (a normal's), never less than the interval itself
        q_lo, q_hi = (min(mc.quantiles), max(mc.quantiles)) if mc.quantiles else (0.5, 0.5)
        nd = NormalDist()
        self.interval_reach = (
            max(1.0, cfg.sigma / nd.inv_cdf(1.0 - q_lo)) if q_lo < 0.5 else 1.0,
            max(1.0, cfg.sigma / nd.inv_cdf(q_hi)) if q_hi > 0.5 else 1.0,
        )
        # where each target's actual comes from: a feature column, else an extra column
        features = list(mc.features)
        self.target_cols = [features.index(t) if t in features else -1 for t in self.targets]

    @property
    def n_stats(self) -> int:
        return len(self.stat_index)

    def layout_dims(self) -> dict[str, int]:
        """The state's score block for this model (see stream_lstm/runtime/cache.py)."""
        return {
            "targets": len(self.targets),
            "score_ring": self.horizon,
            "steps": len(self.steps),
            "stats": self.n_stats,
        }

    def actuals(
        self, values: np.ndarray, extra: np.ndarray | None, extra_names: Sequence[str]
    ) -> np.ndarray:
        """``[n, n_t]`` the targets' actual values in the events (NaN: not sent)."""
        out = np.full((len(values), len(self.targets)), np.nan, np.float32)
        for t, (name, col) in enumerate(zip(self.targets, self.target_cols, strict=True)):
            if col >= 0:
                out[:, t] = values[:, col]
            elif extra is not None and name in extra_names:
                out[:, t] = extra[:, list(extra_names).index(name)]
        return out

    def score(
        self,
        cache: StateCache,
        g: TickGroups,
        ts: np.ndarray,
        vals: np.ndarray,
        actual: np.ndarray,
        keys: np.ndarray,
    ) -> TickScores:
        """Score the tick's actuals, then remember its forecasts.

        ``ts`` ``[n]``, ``vals`` ``[n, H, n_t, n_q]`` (original units), ``actual`` ``[n, n_t]``
        and ``keys`` ``[n]`` are per applied event, in the engine's key order (``g``). Call after
        the engine has counted the tick's events into ``cache.count``.
        """
        assert cache.score is not None
        sc = cache.score
        R, S, n_t = self.horizon, len(self.steps), len(self.targets)
        before = cache.count[g.slots] - g.counts  # events applied before this tick, per key
        # each key's event times: its last R stored events (oldest first), then this tick's
        ring_pos = (before[:, None] + np.arange(R)[None, :]) % R  # [K, R]
        stored_ts = sc["fring_ts"][g.slots[:, None], ring_pos]  # [K, R]
        # the R events before each event (column c < R: stored; else this tick's event
        # c - R of the key), and which of them forecast its time at a scored step
        cols = g.pos[:, None] + np.arange(R)[None, :]  # [n, R]
        kp = g.kpos[:, None]
        prev_ts = np.where(
            cols < R,
            stored_ts[kp, np.minimum(cols, R - 1)],
            ts[g.first[kp] + np.maximum(cols - R, 0)],
        )
        dt = ts[:, None] - prev_ts
        step = np.where((prev_ts != NO_TS) & (dt > 0) & (dt % self.interval_ms == 0),
                        dt // self.interval_ms, 0)  # fmt: skip
        j = self.step_index[np.minimum(step, R)]
        j[(step < 1) | (step > R)] = -1
        ev, r = np.nonzero(j >= 0)
        jm, col = j[ev, r], cols[ev, r]
        f = np.empty((len(ev), n_t, self.n_stats), np.float32)
        stored = col < R
        k_st = g.kpos[ev[stored]]
        f[stored] = sc["fring"][g.slots[k_st], ring_pos[k_st, col[stored]], jm[stored]]
        src = g.first[g.kpos[ev[~stored]]] + col[~stored] - R  # an earlier event of this tick
        f[~stored] = vals[src, self.steps[jm[~stored]] - 1][..., self.stat_index]
        a = actual[ev]  # [m, n_t]
        err = a.astype(np.float64) - f[..., 0]  # float64: a square of ~3e38 overflows float32
        ok = np.isfinite(a)
        bins = (jm[:, None] * n_t + np.arange(n_t)[None, :])[ok]
        size = S * n_t
        out = TickScores(
            n=np.bincount(bins, minlength=size).reshape(S, n_t),
            abs_err=np.bincount(bins, np.abs(err[ok]), minlength=size).reshape(S, n_t),
            sq_err=np.bincount(bins, np.square(err[ok]), minlength=size).reshape(S, n_t),
            inside=None,
        )
        if self.has_interval:
            hit = ((a >= f[..., 1]) & (a <= f[..., 2]))[ok]
            out.inside = np.bincount(bins, hit, minlength=size).reshape(S, n_t)
        one = jm == 0  # step 1: at most one per event
        self._track(cache, g, ev[one], ts, a[one], f[one], keys, out)
        self._remember(sc, g, before, ts, vals)
        return out

    def _remember(
        self, sc: np.ndarray, g: TickGroups, before: np.ndarray, ts: np.ndarray, vals: np.ndarray
    ) -> None:
        """This tick's forecasts (scored steps and stats only) into each key's ring."""
        R = self.horizon
        keep = g.pos >= g.counts[g.kpos] - R  # only a key's last R events stay
        e = np.flatnonzero(keep)
        rp = (before[g.kpos[e]] + g.pos[e]) % R
        s = g.slots[g.kpos[e]]
        sc["fring_ts"][s, rp] = ts[e]
        rows = vals[e][:, self.steps - 1][..., self.stat_index]  # [e, S, n_t, n_s]
        fr = sc["fring"]
        fr[s, rp] = rows

    def _track(
        self,
        cache: StateCache,
        g: TickGroups,
        ev: np.ndarray,
        ts: np.ndarray,
        a: np.ndarray,
        f: np.ndarray,
        keys: np.ndarray,
        out: TickScores,
    ) -> None:
        """Residual EWM and excursions, for events with a one-step forecast (``ev`` ascending:
        keys in order, each key's events in time order). Sequential per key, so one round per
        position: a round handles at most one event of every key, vectorised across keys."""
        if not ev.size:
            return
        assert cache.score is not None
        sc, cfg = cache.score, self.cfg
        p = g.pos[ev]
        for rnd in np.unique(p):
            sel = np.flatnonzero(p == rnd)
            e, ai, fi = ev[sel], a[sel], f[sel]
            s = g.slots[g.kpos[e]]
            m, v, n = sc["ewm_mean"][s], sc["ewm_var"][s], sc["ewm_n"][s]
            r = ai - fi[..., 0]
            d = r - m
            ok = np.isfinite(r)
            std = np.sqrt(v)
            warm = (n >= cfg.warmup)[:, None] & (std > 0) & ok
            z = np.where(warm, np.abs(d) / np.where(std > 0, std, 1.0), 0.0)
            out_sigma = (z > cfg.sigma) if cfg.sigma > 0 else np.zeros_like(warm)
            out_int = np.zeros_like(warm)
            if self.has_interval and cfg.interval:
                med, below, above = fi[..., 0], fi[..., 0] - fi[..., 1], fi[..., 2] - fi[..., 0]
                reach_lo, reach_hi = self.interval_reach
                out_int = ok & (
                    ((below > 0) & (ai < med - reach_lo * below))
                    | ((above > 0) & (ai > med + reach_hi * above))
                )
            outside = (out_sigma | out_int).any(axis=1)
            seen = ok.any(axis=1)
            # update the trackers (plain running moments until 1/alpha residuals are in), with
            # the residual clipped at the threshold once warm: one wild actual cannot inflate
            # the variance enough to hide the rest of its excursion, a lasting shift still
            # widens the band within a few steps
            if cfg.sigma > 0:
                lim = cfg.sigma * std
                d = np.where(warm, np.clip(d, -lim, lim), d)
            w = np.maximum(cfg.alpha, 1.0 / (n + 1.0))[:, None]
            d = d.astype(np.float64)  # a residual near the float32 limit squares past it
            big = float(np.finfo(np.float32).max)
            sc["ewm_mean"][s] = np.where(ok, np.clip(m + w * d, -big, big), m)
            sc["ewm_var"][s] = np.where(ok, np.minimum((1 - w) * (v + w * d * d), big), v)
            sc["ewm_n"][s] = n + seen
            self._excursions(sc, s, e, ts, ai, fi, z, out_sigma, out_int, outside, seen, keys, out)

    def _excursions(
        self,
        sc: np.ndarray,
        s: np.ndarray,
        e: np.ndarray,
        ts: np.ndarray,
        a: np.ndarray,
        f: np.ndarray,
        z: np.ndarray,
        out_sigma: np.ndarray,
        out_int: np.ndarray,
        outside: np.ndarray,
        seen: np.ndarray,
        keys: np.ndarray,
        out: TickScores,
    ) -> None:
        was_open = sc["exc_since"][s] != NO_TS
        peak = z.max(axis=1)
        opening = outside & ~was_open
        going = outside & was_open
        closing = ~outside & was_open & seen
        if going.any():
            sg = s[going]
            sc["exc_count"][sg] += 1
            sc["exc_peak"][sg] = np.maximum(sc["exc_peak"][sg], peak[going])
        for i in np.flatnonzero(opening | closing):
            t = int(np.argmax(np.where(out_sigma[i] | out_int[i], z[i] + 1.0, z[i])))
            slot = s[i]
            if opening[i]:
                reason = ",".join(
                    w for w, hit in (("sigma", out_sigma[i, t]), ("interval", out_int[i, t])) if hit
                )
                since, count, pk = int(ts[e[i]]), 1, float(peak[i])
                sc["exc_since"][slot], sc["exc_count"][slot], sc["exc_peak"][slot] = since, 1, pk
                state: Literal["open", "close"] = "open"
            else:
                reason = ""
                since = int(sc["exc_since"][slot])
                count, pk = int(sc["exc_count"][slot]), float(sc["exc_peak"][slot])
                sc["exc_since"][slot], sc["exc_count"][slot], sc["exc_peak"][slot] = NO_TS, 0, 0
                state = "close"
            out.alerts.append(
                Alert(
                    key=str(keys[e[i]]),
                    state=state,
                    ts=int(ts[e[i]]),
                    model=self.version,
                    target=self.targets[t],
                    actual=_none(a[i, t]),
                    expected=_none(f[i, t, 0]),
                    lower=_none(f[i, t, 1]) if self.has_interval else None,
                    upper=_none(f[i, t, 2]) if self.has_interval else None,
                    score=_none(z[i, t]) if z[i, t] > 0 else None,
                    reason=reason,
                    since=since,
                    count=count,
                    peak=pk if pk > 0 else None,
                )
            )


_ALERT_ENCODER = msgspec.json.Encoder()


def encode_alert(a: Alert) -> bytes:
    return _ALERT_ENCODER.encode(a)


def decode_alert(b: bytes) -> Alert:
    return msgspec.json.decode(b, type=Alert)
