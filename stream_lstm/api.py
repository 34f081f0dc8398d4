"""The Python API: train, evaluate and forecast from DataFrames; step events one at a time.

Offline::

    import stream_lstm as sl

    model = sl.fit(df, time="when", targets="load", features=["load", "temp"], key="meter")
    model.predict(df)            # long form: meter, when, target, h, value
    model.evaluate(df)           # the test span against the baselines (a dict, as evaluate writes)
    model.save("models/load")    # the same artifact as `stream-lstm train`
    model = sl.load("models/load")

Online (the stream worker's own engine, without Kafka)::

    online = model.online()                  # state in memory; or store="redis://host:6379/0"
    fc = online.update("m1", "2024-01-01T00:00:00Z", {"load": 3.2, "temp": 11.0})
    fc.forecast["load"]                      # the next H values
    online.latest("m1")                      # the latest forecast, from the state store

The online forecaster hands each call's events to :class:`~stream_lstm.runtime.engine.Engine`
as one tick (decode, group by key, one batched model call, state cache, commit cycle into the
store), so its forecasts are the worker's and ``predict``'s. Events are rejected with a reason
(:class:`Rejected`) where the worker dead-letters them: a missing feature, a late or duplicate
time, a malformed value.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import tempfile
import time as _time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd
import pydantic

from stream_lstm.data.anomalies import RepairRule
from stream_lstm.data.loading import load_frame, read_table
from stream_lstm.data.names import SeriesSpec
from stream_lstm.data.splits import SplitPoints
from stream_lstm.errors import ConfigError, DataError, StateError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import Artifact, check_output_dir, load_artifact
from stream_lstm.model.device import pick_device
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import (
    DecoderConfig,
    InMessage,
    decode_forecast,
    parse_ts,
)
from stream_lstm.runtime.query import latest_forecast
from stream_lstm.stores.base import StateStore
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.training.evaluate import evaluate as _evaluate
from stream_lstm.training.predict import predict_frame
from stream_lstm.training.train import TrainOptions, train

log = logging.getLogger(__name__)
TimeUnit = Literal["ms", "s", "us", "ns"]
_MS_PER = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "ns": 1e-6}
Data = pd.DataFrame | str | Path

__all__ = [
    "EventRejectedError",
    "Forecast",
    "Model",
    "OnlineForecaster",
    "Rejected",
    "fit",
    "load",
]


# -- data in ------------------------------------------------------------------------------------
def _table(data: Data) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        return read_table(Path(data))
    raise TypeError(f"data must be a pandas DataFrame or a CSV/Parquet path, not {type(data)}")


def _with_ms(frame: pd.DataFrame, time: str, unit: TimeUnit) -> pd.DataFrame:
    """Numeric times in ``unit`` → epoch milliseconds (what the loader reads numbers as)."""
    if unit not in _MS_PER:
        raise ConfigError(f"time_unit must be one of {sorted(_MS_PER)}, got {unit!r}")
    if time not in frame.columns:
        raise DataError(f"time column {time!r} not found; the DataFrame has {list(frame.columns)}")
    col = frame[time]
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if unit == "ms" and numeric and len(col) and float(np.nanmax(np.abs(col))) < 1e11:
        log.warning(
            "time column %r: the largest value %s as epoch milliseconds is before 1973-03-04; "
            "if the times are epoch seconds, pass time_unit='s'",
            time, np.nanmax(np.abs(col)),
        )  # fmt: skip
    if unit == "ms" or not numeric:
        return frame
    out = frame.copy()
    out[time] = np.round(col.to_numpy(dtype=np.float64) * _MS_PER[unit]).astype(np.int64)
    return out


def _check_missing(missing: str) -> None:
    if missing not in ("dlq", "ffill"):
        raise ConfigError(f"missing must be 'dlq' or 'ffill', not {missing!r}")


def _options(options: Mapping[str, Any], progress: bool) -> TrainOptions:
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {unknown}; the options are {sorted(known - {'progress'})}"
        )
    opts: dict[str, Any] = dict(options)
    defaults = TrainOptions()
    for name, v in opts.items():
        want = type(getattr(defaults, name))
        if want is bool:
            ok = isinstance(v, bool)
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        elif want is str:
            ok = isinstance(v, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"training option {name}: expected {want.__name__}, got {v!r}")
    for name in ("quantiles", "log1p", "calendar", "split", "split_dates"):
        if opts.get(name) is not None and not isinstance(opts[name], tuple):
            opts[name] = tuple(opts[name])
    if isinstance(opts.get("repair"), Mapping):
        try:
            opts["repair"] = RepairRule(**opts["repair"])
        except TypeError as e:
            raise ConfigError(f"training option repair: {e}") from None
    return replace(TrainOptions(progress=progress), **opts)


def _listed(cols: str | Sequence[str] | None, what: str) -> list[str] | None:
    if cols is None:
        return None
    out = [cols] if isinstance(cols, str) else list(cols)
    if not out or not all(isinstance(c, str) for c in out):
        raise ConfigError(f"{what} must be a column name or a non-empty list of column names")
    return out


# -- offline ------------------------------------------------------------------------------------
def fit(
    data: Data,
    *,
    time: str,
    targets: str | Sequence[str],
    features: str | Sequence[str] | None = None,
    key: str | None = None,
    out: str | Path | None = None,
    time_unit: TimeUnit = "ms",
    progress: bool = False,
    **options: Any,
) -> Model:
    """Train a model on ``data`` (a DataFrame, or a CSV/Parquet path) in long form.

    ``time``: the time column (datetimes, ISO strings, or epoch numbers in ``time_unit``);
    ``targets``: the column(s) to forecast; ``features``: the model's input columns (default:
    the targets); ``key``: the entity column (absent: one series). ``options`` are the
    ``stream-lstm train`` settings by their Python names (``kind="cnn-lstm-attn"``,
    ``time_step=48``, ``horizon=24``, ``epochs=30``, ``norm="auto"``, ``quantiles=(0.1, 0.5,
    0.9)`` with ``loss="pinball"``, …; see :class:`~stream_lstm.training.train.TrainOptions`).

    ``out``: the artifact directory (default: a temporary one, removed with the model unless
    :meth:`Model.save` is called). The split is chronological (70/15/15 by default); the test
    span's scores are in ``model.metrics["evaluation"]``.
    """
    tlist = _listed(targets, "targets")
    assert tlist is not None
    flist = _listed(features, "features") or tlist
    frame = _with_ms(_table(data), time, time_unit)
    spec = SeriesSpec(time, tuple(flist), tuple(tlist), key)
    opts = _options(options, progress)
    tmp = None if out is not None else tempfile.TemporaryDirectory(prefix="stream-lstm-model-")
    directory = Path(out) if out is not None else Path(tmp.name if tmp else ".")
    check_output_dir(directory)
    try:
        artifact, _ = train(frame, spec, opts, directory)
    except pydantic.ValidationError as e:  # the model's settings (ModelConfig) refused
        if tmp is not None:
            tmp.cleanup()
        problems = "; ".join(
            (f"{'.'.join(map(str, x['loc']))}: " if x["loc"] else "") + x["msg"] for x in e.errors()
        )
        raise ConfigError(f"invalid training options: {problems}") from None
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    model = Model(artifact)
    model._tmp = tmp
    return model


def load(path: str | Path, device: str = "cpu") -> Model:
    """A model artifact (from :func:`fit`, :meth:`Model.save` or ``stream-lstm train``)."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise ConfigError(f"load takes the artifact directory's path, not {path!r}")
    return Model(load_artifact(Path(path), pick_device(device)))


class Model:
    """A trained model: its artifact, and what it can compute offline and online."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._fc: Forecaster | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model(version={self.version!r}, kind={c.kind!r}, features={list(c.features)}, "
            f"targets={list(c.targets)}, horizon={c.horizon}, interval_ms={c.interval_ms})"
        )

    @property
    def config(self) -> Any:
        """The model's :class:`~stream_lstm.model.spec.ModelConfig` (``config.json``)."""
        return self.artifact.config

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def path(self) -> Path | None:
        """Where the artifact is on disk (a temporary directory until :meth:`save`)."""
        return self.artifact.path

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: data report, training history, test-span evaluation."""
        return self.artifact.metrics

    @property
    def forecaster(self) -> Forecaster:
        if self._fc is None:
            self._fc = Forecaster(self.artifact)
        return self._fc

    def _columns(self, time: str | None, key: str | None) -> tuple[str, str | None]:
        data = self.config.data or {}
        t = time or data.get("time_col")
        if not t:
            raise ConfigError("give time= (the model records no time column)")
        return t, key if key is not None else data.get("key_col")

    def _frame(
        self, data: Data, time: str | None, key: str | None, unit: TimeUnit, need_targets: bool
    ) -> tuple[pd.DataFrame, str, str | None]:
        t, k = self._columns(time, key)
        table = _with_ms(_table(data), t, unit)
        cfg = self.config
        targets = tuple(cfg.targets) if need_targets else ()
        if k is not None and k not in table.columns:
            if key is not None:
                raise DataError(f"key column {k!r} not found; the DataFrame has {list(table)}")
            k = None  # the model's key column is absent: one series
        spec = SeriesSpec(t, tuple(cfg.features), targets, k)
        if not need_targets:  # the loader asks for one target: the first feature stands in
            spec = replace(spec, targets=(cfg.features[0],))
        frame, _ = load_frame(table, spec)
        return frame, t, k

    def predict(
        self,
        data: Data,
        *,
        time: str | None = None,
        key: str | None = None,
        time_unit: TimeUnit = "ms",
        missing: str = "dlq",
    ) -> pd.DataFrame:
        """The forecast after every row, as the stream worker publishes it: long form with the
        data's own key and time column names, then ``target``, ``h`` (1..H), ``value`` (and
        ``quantile``), in original units. Times are UTC datetimes. ``time``/``key`` default to
        the columns the model was trained with. ``missing="ffill"`` carries a missing feature
        forward (``worker --missing ffill``); by default a row with one gets no forecast."""
        _check_missing(missing)
        frame, t, k = self._frame(data, time, key, time_unit, need_targets=False)
        out = predict_frame(self.forecaster, frame, missing)
        names = {"ts": t} | ({"key": k} if k else {})
        out = out.rename(columns=names)
        return out if k else out.drop(columns="key")

    def evaluate(
        self,
        data: Data,
        *,
        split: str = "test",
        season: int | None = None,
        time: str | None = None,
        key: str | None = None,
        time_unit: TimeUnit = "ms",
        missing: str = "dlq",
    ) -> dict[str, Any]:
        """Scores on ``split`` (``train``, ``val``, ``test`` by the training cut dates, or
        ``all``) for the model and the baselines (linear, seasonal naive, persistence), per
        target and overall, original and standardised: what ``stream-lstm evaluate`` writes."""
        _check_missing(missing)
        frame, _, _ = self._frame(data, time, key, time_unit, need_targets=True)
        points = None
        if split != "all":
            cut = (self.config.data or {}).get("split")
            if not cut:
                raise ConfigError("the model records no split dates; use split='all'")
            points = SplitPoints(int(cut["val_start_ms"]), int(cut["test_start_ms"]))
        result = _evaluate(self.forecaster, frame, points, split, season, missing)
        return {"model": self.version, **result.to_json()}

    def save(self, path: str | Path) -> Path:
        """Copy the artifact to ``path`` (a new or empty directory); the model then lives there."""
        src, dst = self.artifact.path, Path(path)
        if src is None:
            raise ConfigError("this model has no artifact directory to copy")
        check_output_dir(dst)
        if dst.exists() and any(dst.iterdir()):
            raise ConfigError(f"{dst} is not empty: save into a new or empty directory")
        shutil.copytree(src, dst, dirs_exist_ok=True)
        self.artifact.path = dst
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return dst

    def online(
        self,
        store: str | StateStore | None = None,
        *,
        namespace: str = "stream-lstm-api",
        late: str = "dlq",
        missing: str = "dlq",
        device: str = "cpu",
        time_unit: TimeUnit = "ms",
        flush_interval_s: float | None = None,
    ) -> OnlineForecaster:
        """A stateful forecaster that takes events one at a time or in batches (see
        :class:`OnlineForecaster`)."""
        return OnlineForecaster(
            self,
            store,
            namespace=namespace,
            late=late,
            missing=missing,
            device=device,
            time_unit=time_unit,
            flush_interval_s=flush_interval_s,
        )


# -- online -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Forecast:
    """One forecast: what the worker publishes to the output topic for an event."""

    key: str
    ts: int  # the event's time, epoch milliseconds (UTC)
    model: str  # model version
    interval_ms: int
    forecast: dict[str, list[float]]  # target → H values (the median when there are quantiles)
    quantiles: dict[str, dict[str, list[float]]] | None = None  # target → "0.1" → H values

    @property
    def time(self) -> pd.Timestamp:
        return pd.Timestamp(self.ts, unit="ms", tz="UTC")

    def to_dict(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "ts": self.ts,
            "model": self.model,
            "interval_ms": self.interval_ms,
            "forecast": self.forecast,
        }
        if self.quantiles is not None:
            out["quantiles"] = self.quantiles
        return out


@dataclass(frozen=True)
class Rejected:
    """An event the worker would dead-letter, with the reason (``late``, ``missing_feature``,
    ``bad_value``, …) and its detail."""

    key: str | None
    ts: Any
    reason: str
    detail: str


class EventRejectedError(DataError):
    """:meth:`OnlineForecaster.update` was given an event the worker would dead-letter."""

    def __init__(self, rejected: Rejected) -> None:
        super().__init__(f"event of key {rejected.key!r} rejected ({rejected.reason}): "
                         f"{rejected.detail}")  # fmt: skip
        self.rejected = rejected


class _Sink:
    """Collects what the engine produces; ``flush`` acknowledges everything (in memory)."""

    def __init__(self) -> None:
        self.out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.out.append((topic, key, value, headers))

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        self.out.extend((topic, k, v, None) for k, v in zip(keys, values, strict=True))

    def flush(self) -> None:
        pass

    def take(self) -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]]:
        out, self.out = self.out, []
        return out


_OUT, _DLQ, _IN = "forecasts", "rejected", "events"
_MALFORMED = object()  # the key of an event that is neither a 3-tuple nor a mapping


def _plain(obj: Any) -> Any:
    """numpy and pandas scalars in event values → Python numbers (for the JSON encoder)."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not a number")


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)
Event = tuple[str, Any, Mapping[str, Any]] | Mapping[str, Any]


def _non_finite(vals: Any) -> str | None:
    """The first value of an event that is ±inf (JSON has no such number; NaN is encoded as
    null: a missing value, as the worker reads it)."""
    if isinstance(vals, Mapping):
        for name, v in vals.items():
            if isinstance(v, (float, np.floating)) and math.isinf(v):  # (NaN: missing)
                return f"{name}={v}"
    return None


def _ms(ts: Any, unit: TimeUnit = "ms") -> int | str:
    """An event time as the decoder takes it: epoch ms, or an ISO string it parses itself.
    Numbers are in ``unit``."""
    if isinstance(ts, (bool, np.bool_)):
        return str(ts)  # refused by the decoder with its own reason
    if isinstance(ts, (int, np.integer, float, np.floating)) and unit != "ms":
        if not math.isfinite(ts):
            return str(ts)
        return round(float(ts) * _MS_PER[unit])
    if isinstance(ts, (int, np.integer)):
        return int(ts)
    if isinstance(ts, pd.Timestamp | datetime | date | np.datetime64):
        stamp = pd.Timestamp(ts)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        return int(stamp.value // 1_000_000)
    if isinstance(ts, float) and ts.is_integer():
        return int(ts)
    return str(ts)


class OnlineForecaster:
    """Events in, forecasts out, with each key's state kept across calls in a state store.

    ``store``: ``None`` or ``"memory"`` (this process only), a ``redis://`` URL (the worker's
    Redis store, under ``namespace``: state survives restarts and is shared between
    processes), or any object that keeps the store contract (:mod:`stream_lstm.stores.base`).

    Each :meth:`update_many` call is one engine tick. The forecaster keeps the states of the
    keys it has seen in memory and writes the changed ones to the store on :meth:`flush` and
    :meth:`close` (and, with ``flush_interval_s``, after a call once that many seconds have
    passed since the last write). Consuming from Kafka, keep the worker's order: deliver the
    forecasts, then :meth:`flush`, then commit the input offsets — a state written before its
    forecasts are delivered makes the redelivered events after a crash late (rejected), so
    their forecasts would be lost; a state written after the commit makes them applied twice.

    Per key, events must come in time order: one at or before the key's last applied time is
    rejected as ``late`` or ``duplicate`` (``late="drop"``: a late one is dropped, its result
    ``None``). Across forecasters sharing a store, a key's events are ordered by time. Numeric
    times are in ``time_unit`` (epoch milliseconds by default).
    """

    def __init__(
        self,
        model: Model | str | Path,
        store: str | StateStore | None = None,
        *,
        namespace: str = "stream-lstm-api",
        late: str = "dlq",
        missing: str = "dlq",
        device: str = "cpu",
        time_unit: TimeUnit = "ms",
        flush_interval_s: float | None = None,
    ) -> None:
        if not isinstance(model, Model):
            model = load(model)
        if flush_interval_s is not None and not (
            isinstance(flush_interval_s, (int, float)) and flush_interval_s >= 0
        ):
            raise ConfigError(
                f"flush_interval_s must be None (flush() only) or seconds >= 0, not "
                f"{flush_interval_s!r}"
            )
        if late not in ("dlq", "drop"):
            raise ConfigError(
                f"late must be 'dlq' (rejected with a reason) or 'drop', not {late!r}"
            )
        _check_missing(missing)
        if time_unit not in _MS_PER:
            raise ConfigError(f"time_unit must be one of {sorted(_MS_PER)}, got {time_unit!r}")
        self.time_unit = time_unit
        self.model = model
        artifact = model.artifact
        dev = pick_device(device)
        if next(artifact.module.parameters()).device != dev:
            # a copy on that device: the model's own network stays where it is (predict)
            artifact = replace(artifact, module=copy.deepcopy(artifact.module))
        self.fc = Forecaster(artifact, dev)
        layout = layout_for(self.fc)
        self.store = self._open(store, namespace, layout)
        self._sink = _Sink()
        cfg = EngineConfig(output_topic=_OUT, dlq_topic=_DLQ, late_policy=late)
        mc = self.fc.config
        decoder = DecoderConfig(
            features=tuple(mc.features),
            missing=missing,
            max_future_ms=2**62,  # the API takes any time (the worker refuses far-future ones)
        )
        self.engine = Engine(self.fc, self.store, self._sink, WorkerMetrics(), cfg, decoder)
        # this forecaster's own "topic": a stored key written by another one is ordered by time
        self.engine.set_topic_id(uuid.uuid4().bytes)
        self._offset = 0
        self._closed = False
        self._broken: str | None = None  # why this forecaster may not be used any more
        self.flush_interval_s = flush_interval_s
        self._flushed = _time.monotonic()
        self._last: dict[str, Forecast] = {}  # each key's latest forecast from this forecaster

    @staticmethod
    def _open(store: str | StateStore | None, namespace: str, layout: Any) -> StateStore:
        if store is None or store == "memory":
            return MemoryStore(layout)
        if isinstance(store, str):
            schemes = ("redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://")
            if not store.startswith(schemes):
                raise ConfigError(
                    f"store must be None, 'memory', a redis:// URL or a store object, not {store!r}"
                )
            from stream_lstm.stores.redis import RedisStateStore

            rs = RedisStateStore(store, namespace, layout)
            rs.connect()
            return rs
        if not callable(getattr(store, "use_layout", None)):
            raise ConfigError(
                f"store must be None, 'memory', a redis:// URL or a store object (the contract of "
                f"stream_lstm.stores.base.StateStore), not {store!r}"
            )
        store.use_layout(layout)  # the contract: a store keeps the records of a layout it is given
        return store

    @property
    def config(self) -> Any:
        return self.fc.config

    def update(self, key: str, ts: Any, values: Mapping[str, Any]) -> Forecast:
        """One event → its forecast; raises :class:`EventRejectedError` (with the reason) for an
        event the worker would dead-letter."""
        (res,) = self.update_many([(key, ts, values)])
        if isinstance(res, Rejected):
            raise EventRejectedError(res)
        if res is None:
            why = "older than the key's last applied event (dropped: late='drop')"
            raise EventRejectedError(Rejected(key, ts, "late", why))
        return res

    def update_many(self, events: Iterable[Event]) -> list[Forecast | Rejected | None]:
        """A batch of events (one engine tick) → one result per event, in the order given:
        its :class:`Forecast`, a :class:`Rejected`, or ``None`` for a late event dropped under
        ``late="drop"``.

        An event is ``(key, ts, values)`` or a mapping ``{"key", "ts", "values"}``. Times:
        epoch numbers (in ``time_unit``), datetimes or ISO strings. For a DataFrame, see
        :meth:`update_frame`.
        """
        self._check_usable()
        return self._run(self._events(events), self.time_unit)

    def _run(
        self, evs: Sequence[tuple[Any, Any, Any]], unit: TimeUnit
    ) -> list[Forecast | Rejected | None]:
        msgs, first = [], self._offset
        now = int(_time.time() * 1000)
        results: list[Forecast | Rejected | None] = [None] * len(evs)
        for i, (k, ts, vals) in enumerate(evs):
            key = k if isinstance(k, str) else None
            body = b""  # (an event refused here: the decoder refuses it as empty; ours stands)
            inf = _non_finite(vals)
            if k is _MALFORMED:
                why = f"an event is (key, ts, values) or a mapping with key, ts, values: {vals}"
                results[i] = Rejected(None, None, "wrong_type", why)
            elif not isinstance(k, str):
                why = f"the key must be a string, not {type(k).__name__} ({k!r})"
                results[i] = Rejected(None, ts, "bad_key" if k is not None else "null_key", why)
            elif inf:
                results[i] = Rejected(key, ts, "non_finite_value", f"{inf} is not finite")
            else:
                try:
                    body = _ENCODER.encode({"key": key, "ts": _ms(ts, unit), "values": vals})
                except (TypeError, ValueError, OverflowError) as e:
                    why = f"cannot encode the event: {e}"
                    results[i] = Rejected(key, ts, "wrong_type", why)
            kb = None if key is None else key.encode()
            msgs.append(InMessage(kb, body, _IN, 0, first + i, now))
        self._offset += len(msgs)
        if msgs:
            try:
                self.engine.process(msgs)
            except Exception as e:  # the store failed mid-tick: states may be half applied
                self._sink.take()
                self._fail(e)
                raise
        for topic, _, value, headers in self._sink.take():
            if topic == _OUT and value is not None:
                f = decode_forecast(value)
                fc = Forecast(f.key, f.ts, f.model, f.interval_ms, f.forecast, f.quantiles)
                results[f.offset - first] = fc
                prev = self._last.get(f.key)
                if prev is None or prev.ts <= fc.ts:
                    self._last[f.key] = fc
            elif topic == _DLQ:
                h = {n: v.decode(errors="replace") for n, v in headers or []}
                i = int(h.get("source", "//-1").rsplit("/", 1)[-1]) - first
                if 0 <= i < len(evs) and results[i] is None:
                    k = evs[i][0]
                    results[i] = Rejected(
                        None if k is None else str(k),
                        evs[i][1],
                        h.get("reason", "?"),
                        h.get("detail", ""),
                    )
        every = self.flush_interval_s
        if every is not None and _time.monotonic() - self._flushed >= every:
            self.flush()
        return results

    @staticmethod
    def _events(events: Iterable[Any]) -> list[tuple[Any, Any, Any]]:
        """Events as (key, ts, values); a malformed one as (_MALFORMED, None, its repr)."""
        if isinstance(events, (pd.DataFrame, str, bytes, Mapping)):
            raise TypeError(
                "update_many takes a list of events ((key, ts, values) or {'key', 'ts', "
                "'values'}); use update for one event and update_frame for a DataFrame"
            )
        out: list[tuple[Any, Any, Any]] = []
        for e in events:
            if isinstance(e, Mapping):
                out.append((e.get("key"), e.get("ts"), e.get("values")))
            elif isinstance(e, (tuple, list)) and len(e) == 3:
                out.append((e[0], e[1], e[2]))
            else:
                out.append((_MALFORMED, None, repr(e)[:200]))
        return out

    def update_frame(
        self,
        frame: pd.DataFrame,
        *,
        time: str | None = None,
        key: str | None = None,
        batch: int = 4096,
    ) -> list[Forecast | Rejected | None]:
        """Every row of ``frame`` as an event, applied in time order (by key where times tie)
        in ticks of ``batch`` rows; one result per row of ``frame``, in its row order. Columns:
        the model's time and key columns (or ``time=``, ``key=``; no key column: one series)
        and its features (targets that are not features are passed on too)."""
        self._check_usable()
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"update_frame takes a pandas DataFrame, not {type(frame).__name__}")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, not {batch!r}")
        t, k = self.model._columns(time, key)
        if t not in frame.columns:
            raise DataError(f"time column {t!r} not found; the DataFrame has {list(frame)}")
        if k is not None and k not in frame.columns:
            if key is not None:
                raise DataError(f"key column {k!r} not found; the DataFrame has {list(frame)}")
            k = None
        rows = frame.reset_index(drop=True)
        ms = pd.Series([_ms(v, self.time_unit) for v in rows[t]], dtype=object)
        when = [x if isinstance(x, int) else parse_ts(x) for x in ms]  # None: refused later
        order = (
            pd.DataFrame(
                {"t": pd.array(when, dtype="Int64"), "k": rows[k].astype(str) if k else ""}
            )
            .sort_values(["t", "k"], kind="stable", na_position="first")
            .index.to_numpy()
        )
        rows, ms = rows.iloc[order], ms.iloc[order]
        feats = list(self.config.features)
        extra = [c for c in self.config.targets if c in rows.columns and c not in feats]
        cols = [c for c in feats + extra if c in rows.columns]
        keys = rows[k].astype(str).tolist() if k else ["default"] * len(rows)
        vals = rows[cols].to_numpy(dtype=np.float64)
        evs = [
            (kk, ts, {c: (None if np.isnan(x) else float(x)) for c, x in zip(cols, v, strict=True)})
            for kk, ts, v in zip(keys, ms.tolist(), vals, strict=True)
        ]
        done: list[Forecast | Rejected | None] = []
        for s in range(0, len(evs), batch):
            done += self._run(evs[s : s + batch], "ms")  # (times converted above)
        out: list[Forecast | Rejected | None] = [None] * len(done)
        for pos, res in zip(order.tolist(), done, strict=True):
            out[pos] = res
        return out

    def flush(self) -> None:
        """Write every changed state to the store (one commit cycle)."""
        self._check_usable()
        try:
            self.engine.commit_cycle(lambda offsets: None, wait=True)
        except Exception as e:
            self._fail(e)
            raise
        self._flushed = _time.monotonic()

    def _check_usable(self) -> None:
        if self._closed:
            raise ConfigError("this OnlineForecaster is closed: make a new one")
        if self._broken is not None:
            raise StateError(
                f"this OnlineForecaster failed earlier ({self._broken}); its states in memory may "
                "be ahead of the forecasts it returned: make a new one (it continues from the "
                "store's last flush) and send again the events since your last flush()"
            )

    def _fail(self, e: Exception) -> None:
        self._broken = f"{type(e).__name__}: {e}"

    def latest(self, key: str) -> Forecast | None:
        """The key's latest forecast: this forecaster's own for the key, or the one computed
        from the key's state in the store (written by an earlier or another forecaster, or a
        worker with the same model and namespace), whichever is of the later event; None
        when neither has one. Writes nothing."""
        self._check_usable()
        if not isinstance(key, str):
            raise ConfigError(f"keys are strings, not {type(key).__name__} ({key!r})")
        peek = getattr(self.store, "peek", None)
        (record,) = peek([key]) if callable(peek) else self.store.load([key])
        got = latest_forecast(self.fc, key, record)
        mine = self._last.get(key)
        if got is None:
            return mine
        f = got.forecast
        stored = Forecast(f.key, f.ts, f.model, f.interval_ms, f.forecast, f.quantiles)
        return mine if mine is not None and mine.ts >= stored.ts else stored

    def close(self) -> None:
        """Flush, and close the store's connections (a Redis store). A closed forecaster takes
        no more events; closing again does nothing."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self.flush()
        finally:
            self._closed = True
            close = getattr(self.store, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> OnlineForecaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
