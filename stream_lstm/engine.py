"""The hot path, top to bottom: decode → group by key → state → ONE model call → publish;
and the commit cycle: producer flush → Redis write → offset commit.

The engine knows nothing about the Kafka client: a driver (``worker.py`` with confluent-kafka,
``faust_app.py`` with Faust) hands it batches of :class:`InMessage`, a :class:`Sink` to produce
to, and a ``commit`` function for offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from stream_lstm.data.loading import format_interval
from stream_lstm.events import Decoder, DecoderConfig, ForecastOut, InMessage, encode_forecast
from stream_lstm.faults import failpoint
from stream_lstm.inference import TickRunner
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.runtime import Forecaster
from stream_lstm.state import NO_TS, Layout, StateCache
from stream_lstm.state_redis import SaveResult

log = logging.getLogger(__name__)
T = TypeVar("T")
Offsets = dict[tuple[str, int], int]  # (topic, partition) → next offset to consume


class Sink(Protocol):
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None: ...

    def flush(self) -> None:
        """Wait until everything produced so far is acknowledged; raise PublishError if not."""


class StateStore(Protocol):
    previous_version: str | None

    def load(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def save(self, keys: Sequence[str], records: Sequence[bytes]) -> SaveResult: ...


@dataclass(frozen=True)
class EngineConfig:
    output_topic: str
    dlq_topic: str
    late_policy: str = "dlq"  # "dlq": dead-letter late events; "drop": count and drop them


def _once(fn: Callable[[], T]) -> T:
    return fn()


class Engine:
    def __init__(
        self,
        forecaster: Forecaster,
        store: StateStore,
        sink: Sink,
        metrics: WorkerMetrics,
        cfg: EngineConfig,
        decoder_cfg: DecoderConfig | None = None,
        retry: Callable[[Callable[[], Any]], Any] = _once,
    ) -> None:
        self.fc = forecaster
        self.mcfg = mc = forecaster.config
        self.store, self.sink, self.metrics, self.cfg = store, sink, metrics, cfg
        self.retry = retry
        self.decoder = Decoder(
            decoder_cfg
            or DecoderConfig(features=tuple(mc.features), allowed_extra=tuple(mc.targets))
        )
        self.runner = TickRunner(forecaster.module, forecaster.device)
        layers, hidden = (mc.num_layers, mc.hidden_size) if mc.stateful else (0, 0)
        self.layout = Layout(forecaster.version, layers, hidden, mc.time_step, len(mc.features))
        init_h, init_c = self._initial_state()
        self.cache = StateCache(self.layout, init_h, init_c)
        self.pending: Offsets = {}
        self.interval = format_interval(mc.interval_ms)
        self._targets = list(mc.targets)
        self._qnames = [repr(q) for q in mc.quantiles]
        metrics.model.info(
            {"version": forecaster.version, "kind": mc.kind, "features": ",".join(mc.features),
             "targets": ",".join(mc.targets), "horizon": str(mc.horizon), "interval": self.interval}
        )  # fmt: skip

    def _initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.fc.module
        if not self.mcfg.stateful:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        h, c = m.init_state(1)  # type: ignore[operator]
        return h[:, 0].detach().cpu().numpy(), c[:, 0].detach().cpu().numpy()

    # -- one tick -------------------------------------------------------------------------------
    def process(self, msgs: Sequence[InMessage]) -> None:
        """Apply one tick of messages: ONE model call for every key in it."""
        if not msgs:
            return
        m = self.metrics
        t0 = time.perf_counter()
        dec = self.decoder.decode_batch(msgs)
        keys = np.asarray(dec.keys, dtype=object)
        codes, uniq = pd.factorize(keys)  # key id per event, unique keys in first-seen order
        parts = np.fromiter((msgs[i].partition for i in dec.index), np.int32, len(dec.index))
        offs = np.fromiter((msgs[i].offset for i in dec.index), np.int64, len(dec.index))
        t1 = time.perf_counter()

        # state for every key of the tick: cached, else ONE round trip to Redis (may raise: no
        # side effect has happened yet, so the driver can retry the whole tick)
        first = np.unique(codes, return_index=True)[1] if len(codes) else np.empty(0, int)
        slots_u = self._slots_for(list(uniq), parts[first])
        t2 = time.perf_counter()

        m.events_in.inc(len(msgs))
        m.tick_size.observe(len(msgs))
        self._track_offsets(msgs)
        for b in dec.bad:
            self._dead_letter(msgs[b.index], b.reason, b.detail)

        # per key in arrival order; drop what was applied before a crash, then late/duplicate
        order = np.argsort(codes, kind="stable")
        slot_ev = slots_u[codes]
        fresh = offs[order] > self.cache.last_offset[slot_ev[order]]
        m.replayed.inc(int((~fresh).sum()))
        s_idx = order[fresh]  # event indices, grouped by key, in arrival order
        late, dup = self._late_or_duplicate(s_idx, codes, dec.ts, slot_ev)
        for i in s_idx[late]:
            m.late_events.inc()
            if self.cfg.late_policy == "dlq":
                self._dead_letter(
                    msgs[dec.index[i]], "late", "older than the key's last applied event"
                )
        for i in s_idx[dup]:
            self._dead_letter(
                msgs[dec.index[i]], "duplicate", "same time as the key's last applied event"
            )
        a_idx = s_idx[~late & ~dup]
        t3 = time.perf_counter()
        if a_idx.size:
            y = self._apply(a_idx, codes, slots_u, dec.values, dec.ts, offs, keys)
            t4 = time.perf_counter()
            self._publish(a_idx, y, keys, dec.ts, parts, offs, dec.index, msgs)
        else:
            t4 = time.perf_counter()
        t5 = time.perf_counter()
        m.stage_seconds.labels("decode").observe(t1 - t0 + t3 - t2)
        m.stage_seconds.labels("state_load").observe(t2 - t1)
        m.stage_seconds.labels("model").observe(t4 - t3)
        m.stage_seconds.labels("publish").observe(t5 - t4)
        m.cached_keys.set(len(self.cache))

    def _late_or_duplicate(
        self, s_idx: np.ndarray, codes: np.ndarray, ts: np.ndarray, slot_ev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks over ``s_idx`` (events grouped by key, in order): older than / as old as the
        latest time applied before them (stored, or earlier in this tick)."""
        if s_idx.size == 0:
            return np.zeros(0, bool), np.zeros(0, bool)
        s_codes, s_ts = codes[s_idx], ts[s_idx]
        incl = pd.Series(s_ts).groupby(s_codes).cummax().to_numpy()  # max so far, inclusive
        before = np.r_[NO_TS, incl[:-1]]  # exclusive: the max before each event ...
        before[np.r_[True, s_codes[1:] != s_codes[:-1]]] = NO_TS  # ... within its own key
        # late or duplicate events never raise the max, so including them above is harmless
        prev = np.maximum(before, self.cache.last_ts[slot_ev[s_idx]])
        return s_ts < prev, s_ts == prev

    def _slots_for(self, keys: list[str], partitions: np.ndarray) -> np.ndarray:
        slots = self.cache.lookup(keys)
        miss = np.flatnonzero(slots < 0)
        if miss.size:
            miss_keys = [keys[i] for i in miss]
            records = self.retry(lambda: self.store.load(miss_keys))
            new = self.cache.allocate(miss_keys, partitions[miss])
            stats = self.cache.load(new, records)
            for outcome, n in stats.items():
                if n:
                    self.metrics.state_loaded.labels(outcome=outcome).inc(n)
            slots[miss] = new
        return slots

    def _apply(
        self,
        a_idx: np.ndarray,
        codes: np.ndarray,
        slots_u: np.ndarray,
        values: np.ndarray,
        ts: np.ndarray,
        offs: np.ndarray,
        keys: np.ndarray,
    ) -> np.ndarray:
        """Run the accepted events through the model from each key's state; update the state.

        Returns the forecasts ``[n, H, n_t, n_q]`` (standardised) in ``a_idx`` order.
        """
        cache, fc, mc = self.cache, self.fc, self.mcfg
        n = a_idx.size
        a_codes = codes[a_idx]
        uk, first, counts = np.unique(a_codes, return_index=True, return_counts=True)
        K = uk.size
        kpos = np.repeat(np.arange(K), counts)  # key row per event (a_idx is grouped by key)
        pos = np.arange(n) - first[kpos]  # index of the event within its key this tick
        slots = slots_u[uk]
        ev_keys = keys[a_idx]
        x = fc.inputs(values[a_idx], ts[a_idx], ev_keys)  # [n, I]
        n_in = x.shape[1]
        if mc.stateful:
            # keys loaded from another model version replay their stored window first
            pre = np.where(cache.rebuild[slots], cache.fill[slots], 0)  # [K]
            lengths = counts + pre
            xp = np.zeros((K, int(lengths.max()), n_in), np.float32)  # [K, Tmax, I]
            if pre.any():
                rb = np.flatnonzero(pre)
                w_raw, w_ts = cache.window_rows(slots[rb])  # [R, W, F], [R, W]
                W = w_raw.shape[1]
                valid = np.arange(W)[None, :] >= (W - pre[rb])[:, None]  # [R, W] filled rows
                r_row, r_col = np.nonzero(valid)
                w_keys = np.repeat(self._keys_of(slots[rb]), valid.sum(1))
                w_x = fc.inputs(w_raw[r_row, r_col], w_ts[r_row, r_col], w_keys)
                xp[rb[r_row], r_col - (W - pre[rb][r_row])] = w_x
                cache.h[slots[rb]], cache.c[slots[rb]] = cache.init_h, cache.init_c
            xp[kpos, pre[kpos] + pos] = x
            y_all, h, c = self.runner.run_stateful(xp, lengths, cache.h[slots], cache.c[slots])
            starts = np.r_[0, np.cumsum(lengths)[:-1]]
            y = y_all[np.repeat(starts + pre, counts) + pos]  # drop the replayed window rows
            cache.h[slots], cache.c[slots] = h, c
            cache.rebuild[slots] = False
        else:
            # windowed model: each event's window = the key's last T - 1 rows + this tick's rows
            T = mc.time_step
            w_raw, w_ts = cache.window_rows(slots)  # [K, T, F] oldest first, zeros unfilled
            c_keys = np.repeat(self._keys_of(slots), T - 1)
            ctx = fc.inputs(
                w_raw[:, 1:].reshape(-1, w_raw.shape[2]), w_ts[:, 1:].reshape(-1), c_keys
            ).reshape(K, T - 1, n_in)
            filled = np.arange(1, T)[None, :] >= (T - cache.fill[slots])[:, None]  # [K, T - 1]
            ctx[~filled] = 0.0  # the offline initial context is zeros in input space
            ext = np.zeros(
                (K, T - 1 + int(counts.max()), n_in), np.float32
            )  # [K, T - 1 + n_max, I]
            ext[:, : T - 1] = ctx
            ext[kpos, T - 1 + pos] = x
            win = ext[kpos[:, None], pos[:, None] + np.arange(T)[None, :]]  # [n, T, I]
            y = self.runner.run_windows(win)
        cache.append(slots[kpos], pos, counts[kpos], values[a_idx], ts[a_idx])
        last = first + counts - 1
        cache.last_offset[slots] = offs[a_idx][last]
        cache.last_ts[slots] = ts[a_idx][last]
        cache.count[slots] += counts
        cache.dirty[slots] = True
        self.metrics.events_applied.inc(n)
        return y

    def _keys_of(self, slots: np.ndarray) -> np.ndarray:
        """Entity keys of slots (only per-key scaling needs them; global scaling ignores them)."""
        if self.mcfg.scaling != "per-key":
            return np.full(len(slots), "", dtype=object)
        return np.asarray([self.cache.slot_keys[s] for s in slots], dtype=object)

    def _publish(
        self,
        a_idx: np.ndarray,
        y: np.ndarray,
        keys: np.ndarray,
        ts: np.ndarray,
        parts: np.ndarray,
        offs: np.ndarray,
        index: np.ndarray,
        msgs: Sequence[InMessage],
    ) -> None:
        """Encode one forecast per applied event and hand it to the producer."""
        mc = self.mcfg
        ev_keys = keys[a_idx]
        vals = self.fc.to_original(y, ev_keys)  # [n, H, n_t, n_q]
        point = vals[..., mc.point_index].transpose(0, 2, 1).tolist()  # [n][n_t][H]
        quant = vals.transpose(0, 2, 3, 1).tolist() if mc.quantiles else None  # [n][n_t][n_q][H]
        ev_ts, ev_parts, ev_offs = ts[a_idx].tolist(), parts[a_idx].tolist(), offs[a_idx].tolist()
        topic, produce, targets, qn = (
            self.cfg.output_topic,
            self.sink.produce,
            self._targets,
            self._qnames,
        )
        version, interval, interval_ms = self.fc.version, self.interval, mc.interval_ms
        for j, key in enumerate(ev_keys):
            f = ForecastOut(
                key=key,
                ts=ev_ts[j],
                model=version,
                interval=interval,
                interval_ms=interval_ms,
                forecast=dict(zip(targets, point[j], strict=True)),
                partition=ev_parts[j],
                offset=ev_offs[j],
                quantiles=(
                    {t: dict(zip(qn, quant[j][ti], strict=True)) for ti, t in enumerate(targets)}
                    if quant is not None
                    else None
                ),
            )
            produce(topic, key.encode(), encode_forecast(f))
        now = time.time()
        msg_ts = np.fromiter((msgs[i].timestamp_ms for i in index[a_idx]), np.float64, a_idx.size)
        self.metrics.latency.observe_many(now - msg_ts / 1000.0)
        self.metrics.forecasts_out.inc(a_idx.size)

    def _dead_letter(self, msg: InMessage, reason: str, detail: str) -> None:
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:500].encode(errors="replace")),
            ("source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
            ("model", self.fc.version.encode()),
        ]
        self.sink.produce(self.cfg.dlq_topic, msg.key, msg.value or b"", headers)
        self.metrics.dead_letters.labels(reason=reason).inc()

    def _track_offsets(self, msgs: Sequence[InMessage]) -> None:
        pending = self.pending
        for msg in msgs:  # consumption order: the last message of a partition has its max offset
            pending[(msg.topic, msg.partition)] = msg.offset + 1

    # -- the commit cycle ---------------------------------------------------------------------
    def commit_cycle(
        self, commit: Callable[[Offsets], None], partitions: Iterable[tuple[str, int]] | None = None
    ) -> bool:
        """producer flush → Redis write of dirty states → offset commit (DESIGN.md's order).

        ``partitions`` limits the cycle to those (on revocation). Returns False when nothing
        needed committing.
        """
        t0 = time.perf_counter()
        tps = None if partitions is None else set(partitions)
        offsets = {tp: o for tp, o in self.pending.items() if tps is None or tp in tps}
        slots = self.cache.dirty_slots(None if tps is None else {p for _, p in tps})
        if not offsets and not slots.size:
            return False
        self.sink.flush()  # 1. every forecast and dead letter so far is acknowledged
        failpoint("after_flush")
        if slots.size:  # 2. states, each carrying the offset of its last applied event
            keys = [self.cache.slot_keys[s] for s in slots]
            recs = self.cache.encode(slots)
            res: SaveResult = self.retry(lambda: self.store.save(keys, recs))
            self.cache.dirty[slots] = False
            self.metrics.state_written.inc(res.written)
            if res.refused:
                # another worker has advanced these keys: our copy is stale, never reuse it
                self.metrics.state_refused.inc(len(res.refused))
                log.warning(
                    "%d state write(s) refused: a newer state is stored (rebalanced away?)",
                    len(res.refused),
                )
                self.cache.evict(self.cache.index[k] for k in res.refused if k in self.cache.index)
        failpoint("after_save")
        if offsets:
            commit(offsets)  # 3. only now do the offsets move
            for tp, o in offsets.items():
                if self.pending.get(tp) == o:
                    del self.pending[tp]
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
        self.metrics.commits.labels(outcome="ok").inc()
        return True

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the keys and pending offsets of partitions this worker no longer owns."""
        tps = set(partitions)
        for tp in tps:
            self.pending.pop(tp, None)
        n = self.cache.evict(self.cache.slots_of_partitions({p for _, p in tps}))
        self.metrics.cached_keys.set(len(self.cache))
        return n
