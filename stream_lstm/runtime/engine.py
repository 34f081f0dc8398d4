"""The hot path, top to bottom: decode → group by key → state → ONE model call → publish.
The commit cycle (producer flush → state write → offset commit) is in ``runtime/commit.py``.

The engine knows nothing about the Kafka client: a driver (``drivers/confluent.py`` with
confluent-kafka, ``drivers/faust.py`` with Faust) hands it batches of :class:`InMessage`, a
:class:`Sink` to produce to, and a ``commit`` function for offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from stream_lstm.data.names import format_interval
from stream_lstm.errors import StreamLSTMError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.runtime import Forecaster, previous_rows
from stream_lstm.runtime.cache import StateCache
from stream_lstm.runtime.commit import CommitCycle, Offsets
from stream_lstm.runtime.events import (
    DecodedBatch,
    Decoder,
    DecoderConfig,
    ForecastEncoder,
    InMessage,
    MessageBatch,
)
from stream_lstm.runtime.scoring import Scorer, ScoringConfig, TickGroups, TickScores, encode_alert
from stream_lstm.runtime.steps import step_for
from stream_lstm.stores.base import StateStore
from stream_lstm.stores.record import NO_TOPIC, NO_TS, Layout

log = logging.getLogger(__name__)
T = TypeVar("T")


class Sink(Protocol):
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None: ...

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        """Produce a tick's messages (the hot path: one call, not one per message)."""

    def flush(self) -> None:
        """Wait until everything produced so far is acknowledged; raise PublishError if not."""


@dataclass(frozen=True)
class EngineConfig:
    output_topic: str
    dlq_topic: str
    late_policy: str = "dlq"  # "dlq": dead-letter late events; "drop": count and drop them
    scoring: ScoringConfig | None = None  # live forecast scoring (None or steps "none": off)
    alerts_topic: str | None = None  # where excursion alerts go (None: counted, not sent)
    # the largest message the producer and the output topics take: a dead letter of a larger
    # message keeps its headers and a truncated value (a `truncated` header says how long)
    max_output_bytes: int = 1_000_000


def scorer_for(fc: Forecaster, scoring: ScoringConfig | None) -> Scorer | None:
    if scoring is None:
        return None
    scorer = Scorer(scoring, fc.config, fc.version)
    return scorer if len(scorer.steps) else None


def layout_for(fc: Forecaster, scoring: ScoringConfig | None = None) -> Layout:
    """The shape of a key's state for a model: (h, c) for the stateful kind, a T-row window,
    and the score block when forecasts are scored."""
    mc = fc.config
    layers, hidden = (mc.num_layers, mc.hidden_size) if mc.stateful else (0, 0)
    scorer = scorer_for(fc, scoring)
    dims = scorer.layout_dims() if scorer else {}
    return Layout(fc.version, layers, hidden, mc.time_step, len(mc.features), **dims)


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
        self.store, self.sink, self.metrics, self.cfg = store, sink, metrics, cfg
        self.retry = retry
        self._decoder_cfg = decoder_cfg
        self.pending: Offsets = {}
        # why nothing may be committed any more (a crash path), or None
        self.halted: str | None = None
        # the input topic's id (its incarnation; NO_TOPIC: unknown), and how the driver reads
        # the current one (called when offsets go back without a seek: was it re-created?)
        self.topic_id = NO_TOPIC
        self.topic_id_now: Callable[[str], bytes] | None = None
        self._consumed: Offsets = {}  # highest offset handed to process() per partition
        # per partition, where consuming must start again to redo everything not committed:
        # the last committed offset, else the first offset consumed (see rewind)
        self.resume_at: Offsets = {}
        # exactly-once (the sink runs Kafka transactions): per partition, the committed offset
        # up to which events are applied to state only — their outputs are in committed
        # transactions already, their states were not all stored (see begin_catch_up)
        self.transactional = bool(getattr(sink, "transactional", False))
        self.catch_up: Offsets = {}
        self.committed_at: Offsets = {}  # exactly-once: the last committed offset (resume_at:
        # where the states are stored, at or before it)
        self._quiet = False  # applying catch-up events: no output
        self.commits = CommitCycle(self)
        self.use_model(forecaster)

    def use_model(self, forecaster: Forecaster) -> None:
        """Run ``forecaster`` from now on. At start-up, and for a hot model switch: the driver
        runs a whole commit cycle first, the store moves to the new version's layout, and every
        key is loaded again from Redis (rebuilt from its stored window: docs/architecture.md)."""
        self.fc = forecaster
        self.mcfg = mc = forecaster.config
        # the given limits (or the defaults), the model's columns
        base = self._decoder_cfg or DecoderConfig(features=())
        self.decoder = Decoder(
            replace(base, features=tuple(mc.features), allowed_extra=tuple(mc.targets))
        )
        self.step = step_for(forecaster)
        self.scorer = scorer_for(forecaster, self.cfg.scoring)
        self.layout = layout_for(forecaster, self.cfg.scoring)
        init_h, init_c = self._initial_state()
        # stateful models read windows only to rebuild: those stay in Redis, not in memory
        self.cache = StateCache(self.layout, init_h, init_c, keep_windows=self.step.keeps_windows)
        self.cache.topic_id = self.topic_id
        self.interval = format_interval(mc.interval_ms)
        self._encoder = ForecastEncoder(
            forecaster.version, self.interval, mc.interval_ms, list(mc.targets), list(mc.quantiles)
        )
        self.metrics.model.info(
            {"version": forecaster.version, "kind": mc.kind, "features": ",".join(mc.features),
             "targets": ",".join(mc.targets), "horizon": str(mc.horizon), "interval": self.interval}
        )  # fmt: skip
        self.metrics.cached_keys.set(0)

    @property
    def forecaster(self) -> Forecaster:
        """The model this engine runs now."""
        return self.fc

    @property
    def cached_keys(self) -> int:
        """How many keys' states the engine holds."""
        return len(self.cache)

    def largest_forecast_bytes(self, max_key_bytes: int) -> int:
        """The largest forecast message this model can publish, with the Kafka key: a key of
        ``max_key_bytes`` control characters (each escaped in JSON), every number at its
        longest."""
        mc = self.mcfg
        longest = -1.2345679e-38  # 14 characters: the longest float32 in its shortest form
        point = np.full((1, len(mc.targets), mc.horizon), longest, np.float32)
        quant = (
            np.full((1, len(mc.targets), len(mc.quantiles), mc.horizon), longest, np.float32)
            if mc.quantiles
            else None
        )
        key = "\x01" * max_key_bytes
        msg = self._encoder.encode([key], [2**53 - 1], point, quant, [2**31 - 1], [2**63 - 1])
        return len(msg[0]) + max_key_bytes + 128  # + the Kafka key and the record's overhead

    def switch_model(self, forecaster: Forecaster, commit: Callable[[Offsets], None]) -> int:
        """A hot model switch, between ticks: a whole commit cycle (every forecast so far
        acknowledged, every state written under the old version, offsets committed), then the
        new version. Returns how many cached keys were dropped (they reload and rebuild)."""
        self.commit_cycle(commit, wait=True)
        dropped = len(self.cache)
        layout = layout_for(forecaster, self.cfg.scoring)
        self.retry(lambda: self.store.use_layout(layout))
        self.use_model(forecaster)
        return dropped

    def _initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.fc.module
        if not self.mcfg.stateful:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        h, c = m.init_state(1)  # type: ignore[operator]
        return h[:, 0].detach().cpu().numpy(), c[:, 0].detach().cpu().numpy()

    # -- one tick -------------------------------------------------------------------------------
    def process(self, batch: MessageBatch | Sequence[InMessage]) -> None:
        """Apply one tick of messages: ONE model call for every key in it (two when the tick
        starts with catch-up events: those first, without outputs)."""
        if not isinstance(batch, MessageBatch):
            batch = MessageBatch.of(batch)
        if self.catch_up and len(batch):
            batch = self._catch_up(batch)
        if len(batch):
            self._process(batch)

    def begin_catch_up(
        self, topic: str, applied: dict[int, int], committed: dict[int, int]
    ) -> dict[int, int]:
        """Exactly-once, on assignment: a partition whose applied offset (stores.base, clause 6)
        is behind its committed offset lost the state write of its last committed cycles (a
        crash between the transaction's commit and the store write). Its events from the
        applied offset on are consumed again and applied to state only, up to the committed
        offset; their outputs are not produced again (they are committed already). Returns
        where each such partition must start (the driver seeks there)."""
        start = {}
        for p, c in committed.items():
            a = applied.get(p)
            if c >= 0:
                self.committed_at[(topic, p)] = c  # (a rewind before the next commit replays
                # up to here for state only, too)
            if a is None or c < 0:
                continue  # no mark (the first exactly-once run, or a wiped store): as stored
            if a < c:
                self.catch_up[(topic, p)] = c
                start[p] = a
            elif a > c:
                log.warning(
                    "%s[%d]: the state store has applied events up to offset %d, past the "
                    "committed offset %d (were the group's offsets reset?): events below %d are "
                    "skipped for state, as already applied",
                    topic, p, a, c, a,
                )  # fmt: skip
        if start:
            log.warning(
                "exactly-once recovery: the stored states of %s trail the committed offsets "
                "(a crash after a transaction committed, before its states were stored): "
                "consuming again from %s up to %s, for state only (no output)",
                topic, dict(sorted(start.items())),
                {p: self.catch_up[(topic, p)] for p in sorted(start)},
            )  # fmt: skip
        return start

    def _catch_up(self, batch: MessageBatch) -> MessageBatch:
        """Apply the tick's catch-up events (state only); return the rest."""
        ends = np.array([self.catch_up.get((batch.topic, int(p)), -1) for p in batch.partitions])
        quiet = batch.offsets < ends
        done: Offsets = {}
        for p in np.unique(batch.partitions):
            tp = (batch.topic, int(p))
            end = self.catch_up.get(tp)
            if end is not None and int(batch.offsets[batch.partitions == p].max()) >= end - 1:
                done[tp] = self.catch_up.pop(tp)  # outputs again from the committed offset on
                log.info("%s[%d]: caught up to the committed offset %d", tp[0], tp[1], end)
        if quiet.any():
            self._quiet = True
            try:
                self._process(batch.take(np.flatnonzero(quiet)))
            finally:
                self._quiet = False
            self.metrics.catch_up_events.inc(int(quiet.sum()))
        for tp, end in done.items():
            # the next cycle commits the same offset again and stores its mark
            self.pending[tp] = max(self.pending.get(tp, end), end)
        return batch.take(np.flatnonzero(~quiet)) if quiet.any() else batch

    def _process(self, batch: MessageBatch) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        self._track_offsets(batch)  # first: offsets that went back may mean a re-created topic
        dec = self.decoder.decode_batch(batch)
        keys = np.asarray(dec.keys, dtype=object)
        codes, uniq = _factorize(dec.keys)  # key id per event, unique keys in first-seen order
        parts, offs = batch.partitions[dec.index], batch.offsets[dec.index]
        t1 = time.perf_counter()

        # state for every key of the tick: cached, else ONE round trip to Redis (may raise: no
        # side effect has happened yet, so the driver can retry the whole tick)
        first = np.unique(codes, return_index=True)[1] if len(codes) else np.empty(0, int)
        slots_u = self._slots_for(list(uniq), parts[first])
        if self.store.wiped():
            self.after_wipe()
        t2 = time.perf_counter()

        m.events_in.inc(len(batch))
        m.tick_size.observe(len(batch))
        for b in dec.bad:
            self._dead_letter(batch, b.index, b.reason, b.detail)

        # per key in arrival order; drop what was applied before a crash, then late/duplicate
        self._follow_moved_keys(slots_u, codes, parts, uniq)
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
                    batch, dec.index[i], "late", "older than the key's last applied event"
                )
        for i in s_idx[dup]:
            self._dead_letter(
                batch, dec.index[i], "duplicate", "same time as the key's last applied event"
            )
        a_idx = s_idx[~late & ~dup]
        sent = dec.values  # what the events sent (the actuals: never a carried-forward value)
        if dec.missing is not None and a_idx.size:
            sent = dec.values.copy()
            a_idx = self._fill_missing(a_idx, codes, slot_ev, dec, batch)
        t3 = t4 = t5 = time.perf_counter()
        if a_idx.size:
            y, groups = self._apply(a_idx, codes, slots_u, dec.values, dec.ts, offs, keys)
            vals = self.fc.to_original(y, keys[a_idx])  # [n, H, n_t, n_q]
            t4 = time.perf_counter()
            if self.scorer is not None:
                sc = self.scorer
                actual = sc.actuals(
                    sent[a_idx],
                    None if dec.extra is None else dec.extra[a_idx],
                    self.decoder.extra_names,
                )
                self._scored(sc.score(self.cache, groups, dec.ts[a_idx], vals, actual, keys[a_idx]))
            t5 = time.perf_counter()
            self._publish(a_idx, vals, keys, dec.ts, parts, offs, batch.timestamps[dec.index])
        t6 = time.perf_counter()
        m.stage_seconds.labels("decode").observe(t1 - t0 + t3 - t2)
        m.stage_seconds.labels("state_load").observe(t2 - t1)
        m.stage_seconds.labels("model").observe(t4 - t3)
        if self.scorer is not None:
            m.stage_seconds.labels("score").observe(t5 - t4)
        m.stage_seconds.labels("publish").observe(t6 - t5)
        m.cached_keys.set(len(self.cache))

    def _follow_moved_keys(
        self, slots_u: np.ndarray, codes: np.ndarray, parts: np.ndarray, uniq: np.ndarray
    ) -> None:
        """Keys whose events arrive on another partition than their cached state's (partitions
        were added to the topic): the offset guard is reset (offsets of two partitions are not
        comparable) and the key follows its newest event's partition; time orders its events."""
        moved_ev = parts != self.cache.partition[slots_u[codes]]
        if not moved_ev.any():
            return
        last_of = np.full(len(uniq), -1, np.int64)
        np.maximum.at(last_of, codes, np.arange(len(codes)))
        ks = np.unique(codes[moved_ev])
        sl = slots_u[ks]
        old = self.cache.partition[sl].copy()
        self.cache.partition[sl] = parts[last_of[ks]]
        self.cache.last_offset[sl] = -1
        self.metrics.keys_moved.inc(len(ks))
        log.warning(
            "%d key(s) now arrive on another partition than their state's (e.g. %r: %d → %d; "
            "were partitions added?): their offset guard is reset and their events are ordered "
            "by time", len(ks), uniq[ks[0]], old[0], self.cache.partition[sl[0]],
        )  # fmt: skip

    def _fill_missing(
        self,
        a_idx: np.ndarray,
        codes: np.ndarray,
        slot_ev: np.ndarray,
        dec: DecodedBatch,
        batch: MessageBatch,
    ) -> np.ndarray:
        """``--missing ffill``: a feature an event did not send takes the key's previous value
        (an earlier event of this tick, else the key's last applied one) — as ``predict`` does
        on a file. A key's events before its first complete one (nothing to carry forward) are
        dead-lettered, and never feed the fill (so ticks may group events any way: the same
        events are filled with the same values). Returns the events still accepted."""
        assert dec.missing is not None
        vals = dec.values[a_idx]  # [n, F], NaN where missing
        gap = np.isnan(vals)
        if not gap.any():
            return a_idx
        a_codes = codes[a_idx]
        prev = self.cache.last_v[slot_ev[a_idx]]  # [n, F]: NaN for a key with no history
        complete = ~gap.any(axis=1) | ~np.isnan(prev).any(axis=1)
        started = _running_max(complete, a_codes)
        vals[~started] = np.nan
        filled = _forward_fill(vals, a_codes)
        filled = np.where(np.isnan(filled), prev, filled)
        self.metrics.missing_filled.inc(int(gap[started].sum()))
        dec.values[a_idx[started]] = filled[started]
        for i in a_idx[~started]:
            absent = [
                f for f, g in zip(self.mcfg.features, np.isnan(dec.values[i]), strict=True) if g
            ]
            self._dead_letter(
                batch, dec.index[i], "missing_feature",
                f"{', '.join(absent)} missing and the key has no complete earlier event to carry "
                "values forward from",
            )  # fmt: skip
        return a_idx[started]

    def _late_or_duplicate(
        self, s_idx: np.ndarray, codes: np.ndarray, ts: np.ndarray, slot_ev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks over ``s_idx`` (events grouped by key, in order): older than / as old as the
        latest time applied before them (stored, or earlier in this tick)."""
        if s_idx.size == 0:
            return np.zeros(0, bool), np.zeros(0, bool)
        s_codes, s_ts = codes[s_idx], ts[s_idx]
        incl = _running_max(s_ts, s_codes)  # max so far, inclusive
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
            moved = stats.pop("moved")
            for outcome, n in stats.items():
                if n:
                    self.metrics.state_loaded.labels(outcome=outcome).inc(n)
            if moved:
                self.metrics.keys_moved.inc(moved)
                log.warning(
                    "%d key(s) loaded with a state written from another partition or another "
                    "incarnation of the input topic: their offset guard is reset and their "
                    "events are ordered by time", moved,
                )  # fmt: skip
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
    ) -> tuple[np.ndarray, TickGroups]:
        """Run the accepted events through the model from each key's state; update the state.

        Returns the forecasts ``[n, H, n_t, n_q]`` (standardised) in ``a_idx`` order, and how
        the events group by key.
        """
        cache, fc = self.cache, self.fc
        n = a_idx.size
        a_codes = codes[a_idx]
        uk, first, counts = np.unique(a_codes, return_index=True, return_counts=True)
        K = uk.size
        kpos = np.repeat(np.arange(K), counts)  # key row per event (a_idx is grouped by key)
        pos = np.arange(n) - first[kpos]  # index of the event within its key this tick
        slots = slots_u[uk]
        ev_keys = keys[a_idx]
        v = values[a_idx]
        prev = None
        if fc.needs_previous:  # each event's key's previous values: this tick's, else stored
            prev = previous_rows(v)
            prev[pos == 0] = cache.last_v[slots]
        x = fc.inputs(v, ts[a_idx], ev_keys, prev)  # [n, I]
        cache.preserve(slots)  # rows still owed to a snapshot being written are copied first
        y = self.step(cache, slots, kpos, pos, counts, x)  # ONE model call
        cache.append(slots[kpos], pos, counts[kpos], v, ts[a_idx])
        last = first + counts - 1
        cache.last_offset[slots] = offs[a_idx][last]
        cache.last_ts[slots] = ts[a_idx][last]
        cache.count[slots] += counts
        cache.dirty[slots] = True
        self.metrics.events_applied.inc(n)
        return y, TickGroups(slots, kpos, pos, counts, first)

    def _scored(self, res: TickScores) -> None:
        """A tick's live errors into the metrics; its alerts to the alerts topic."""
        assert self.scorer is not None
        m, sc = self.metrics, self.scorer
        for j, step in enumerate(sc.steps.tolist()):
            for t, target in enumerate(sc.targets):
                if res.n[j, t]:
                    lbl = (target, str(step))
                    m.forecast_scored.labels(*lbl).inc(int(res.n[j, t]))
                    m.forecast_abs_error.labels(*lbl).inc(float(res.abs_err[j, t]))
                    m.forecast_sq_error.labels(*lbl).inc(float(res.sq_err[j, t]))
                    if res.inside is not None:
                        m.forecast_interval_hits.labels(*lbl).inc(int(res.inside[j, t]))
        for a in res.alerts:
            m.alerts.labels(a.state).inc()
            if self.cfg.alerts_topic and not self._quiet:
                self.sink.produce(self.cfg.alerts_topic, a.key.encode(), encode_alert(a))

    def _publish(
        self,
        a_idx: np.ndarray,
        vals: np.ndarray,
        keys: np.ndarray,
        ts: np.ndarray,
        parts: np.ndarray,
        offs: np.ndarray,
        msg_ts: np.ndarray,
    ) -> None:
        """One forecast per applied event, encoded for the whole tick, handed to the producer."""
        if self._quiet:
            return
        mc = self.mcfg
        ev_keys = keys[a_idx]
        point = vals[..., mc.point_index].transpose(0, 2, 1)  # [n, n_t, H]
        quant = vals.transpose(0, 2, 3, 1) if mc.quantiles else None  # [n, n_t, n_q, H]
        ev_keys_l = ev_keys.tolist()
        messages = self._encoder.encode(
            ev_keys_l, ts[a_idx].tolist(), point, quant, parts[a_idx].tolist(), offs[a_idx].tolist()
        )
        self.sink.produce_many(self.cfg.output_topic, [k.encode() for k in ev_keys_l], messages)
        now_ms = time.time() * 1000.0
        self.metrics.latency.observe_many((now_ms - msg_ts[a_idx]) / 1000.0)
        self.metrics.forecasts_out.inc(a_idx.size)

    def _dead_letter(self, batch: MessageBatch, i: int, reason: str, detail: str) -> None:
        """The original key, value and reason to the dead-letter topic; a message too large to
        publish keeps its headers and the start of its key and value (``truncated`` and
        ``key_truncated`` headers give the original lengths)."""
        if self._quiet:
            return
        headers = [
            ("reason", reason.encode()),
            ("detail", detail[:500].encode(errors="replace")),
            ("source", f"{batch.topic}/{batch.partitions[i]}/{batch.offsets[i]}".encode()),
            ("model", self.fc.version.encode()),
        ]
        key, value = batch.keys[i], batch.values[i] or b""
        # room for key and value: the limit less the headers and the record's own overhead
        room = self.cfg.max_output_bytes - sum(len(k) + len(v) + 8 for k, v in headers) - 1024
        if len(key or b"") + len(value) > room:
            if key is not None and len(key) > room // 2:
                headers.append(("key_truncated", str(len(key)).encode()))
                key = key[: room // 2]
            headers.append(("truncated", str(len(value)).encode()))
            value = value[: max(0, room - len(key or b"") - 64)]
            self.metrics.dead_letters_truncated.inc()
        self.sink.produce(self.cfg.dlq_topic, key, value, headers)
        self.metrics.dead_letters.labels(reason=reason).inc()

    def _track_offsets(self, batch: MessageBatch) -> None:
        """The next offset to commit per partition: one past the highest consumed. Offsets that
        go back without the driver seeking (it calls :meth:`rewind` when it does) mean the
        partition's log restarted: the topic was deleted and re-created (its id says so), or
        truncated."""
        parts = batch.partitions
        ranges = []
        for p in np.unique(parts):
            offs = batch.offsets[parts == p]
            ranges.append(((batch.topic, int(p)), int(offs.min()), int(offs.max())))
        if any(tp not in self._consumed for tp, _, _ in ranges):
            self._check_topic_at_first_read(batch.topic)
        for tp, lo, _ in ranges:
            seen = self._consumed.get(tp)
            if seen is not None and lo <= seen:
                self._offsets_went_back(tp, seen, lo)
        for tp, lo, hi in ranges:
            self.resume_at.setdefault(tp, lo)
            self._consumed[tp] = hi
            if not self._quiet:  # (catch-up events: their offsets are committed already)
                self.pending[tp] = hi + 1

    def _check_topic_at_first_read(self, topic: str) -> None:
        """A partition's first events since the start, an assignment or a rewind: nothing read
        before them shows offsets going back, yet the topic may have been re-created since its
        id was read (a worker idle at the end of the old topic reads the new one from 0), and
        the cached and stored keys' offset guard would take its events for applied ones."""
        if self.topic_id_now is None or self.topic_id == NO_TOPIC:
            return
        try:
            now = self.topic_id_now(topic)
        except StreamLSTMError as e:
            log.warning(
                "reading the id of %s at a first read: %s (the periodic check will)", topic, e
            )
            return
        if now not in (NO_TOPIC, self.topic_id):
            self.input_topic_recreated(topic, now, "its id changed before a partition's first read")

    def _offsets_went_back(self, tp: tuple[str, int], seen: int, now: int) -> None:
        topic_id = self.topic_id_now(tp[0]) if self.topic_id_now is not None else NO_TOPIC
        if topic_id not in (NO_TOPIC, self.topic_id):
            self.input_topic_recreated(tp[0], topic_id, f"{tp[0]}[{tp[1]}] went back to {now}")
            return
        self.metrics.input_resets.labels(outcome="same_topic").inc()
        log.error(
            "offsets of %s[%d] went back from %d to %d, and the topic is the same (a truncated "
            "log?): events at or below each key's stored offset are skipped as already applied",
            tp[0], tp[1], seen, now,
        )  # fmt: skip

    def set_topic_id(self, topic_id: bytes) -> None:
        """The input topic's id, read at start-up: written into every record from now on."""
        self.topic_id = self.cache.topic_id = topic_id

    def input_topic_recreated(self, topic: str, topic_id: bytes, how: str) -> None:
        """The input topic is a new incarnation (deleted and re-created): its offsets start
        again, so every cached key's offset guard is reset (the states carry on; time orders
        the events) and offsets of the old incarnation are never committed to the new one."""
        self.metrics.input_resets.labels(outcome="recreated").inc()
        log.error(
            "input topic %s was deleted and re-created (%s; topic id %s → %s): the offset guard "
            "of %d cached key(s) is reset, their states carry on; offsets not yet committed for "
            "the old topic are dropped",
            topic, how, self.topic_id.hex() or "?", topic_id.hex(), len(self.cache),
        )  # fmt: skip
        self.set_topic_id(topic_id)
        self.cache.forget_offsets()
        for tp in [tp for tp in self.pending if tp[0] == topic]:
            del self.pending[tp]
        for tp in [tp for tp in self._consumed if tp[0] == topic]:
            del self._consumed[tp]
        for tp in [tp for tp in self.resume_at if tp[0] == topic]:
            del self.resume_at[tp]
        for tp in [tp for tp in self.catch_up if tp[0] == topic]:
            del self.catch_up[tp]
        for tp in [tp for tp in self.committed_at if tp[0] == topic]:
            del self.committed_at[tp]

    def after_wipe(self) -> None:
        """The store lost its data: every cached key is written in full at the next cycle."""
        self.metrics.state_wipes.inc()
        n = self.cache.rewrite_all()
        log.error(
            "the state store was wiped: the %d cached key(s) are written again in full at the "
            "next commit cycle%s", n,
            "" if self.cache.win is not None else " (the stateful kind keeps no window in memory: "
            "each stored window starts again from the key's last row; (h, c) carry on)",
        )  # fmt: skip

    # -- the commit cycle (runtime/commit.py) ------------------------------------------------
    def commit_cycle(
        self,
        commit: Callable[[Offsets], None],
        partitions: Iterable[tuple[str, int]] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """One commit cycle (:meth:`CommitCycle.run`): flush → write states → commit."""
        return self.commits.run(commit, partitions, wait=wait)

    def poll_commits(self, commit: Callable[[Offsets], None], block: bool = False) -> None:
        """Commit the offsets of background writes that finished (:meth:`CommitCycle.poll`)."""
        self.commits.poll(commit, block)

    def start_writer(self) -> None:
        """Write states on a background thread (:meth:`CommitCycle.start_writer`)."""
        self.commits.start_writer()

    def stop_writer(self) -> None:
        self.commits.stop_writer()

    def halt(self, why: str) -> None:
        """A crash path: from now on nothing is committed (the process is going down; what was
        consumed since the last commit is consumed again by whoever takes over)."""
        if not self.halted:
            self.halted = why
            log.error("halted, nothing more is committed: %s", why)

    def rewind(self) -> int:
        """After outputs that were not acknowledged: forget everything since the last commit —
        the pending offsets and every cached state (they reload from the store, which holds
        only states whose outputs were acknowledged) — so that the driver can seek each
        partition back to :attr:`resume_at` and consume again. Call :meth:`poll_commits` with
        ``block=True`` first (writes already under way belong to flushed cycles). Returns the
        keys dropped."""
        self.pending.clear()
        self._consumed.clear()
        for tp, stored in self.resume_at.items():
            if self.committed_at.get(tp, -1) > stored:
                # exactly-once: committed past the stored states: replayed for state only
                self.catch_up[tp] = max(self.catch_up.get(tp, -1), self.committed_at[tp])
        n = self.cache.evict(np.fromiter(self.cache.index.values(), np.int64, len(self.cache)))
        self.metrics.cached_keys.set(0)
        return n

    def forget_offsets(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the pending offsets of ``partitions`` (a refused commit); states stay cached."""
        for tp in partitions:
            self.pending.pop(tp, None)

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the keys and pending offsets of partitions this worker no longer owns."""
        tps = set(partitions)
        for tp in tps:
            self.pending.pop(tp, None)
            self._consumed.pop(tp, None)
            self.resume_at.pop(tp, None)
            self.catch_up.pop(tp, None)
            self.committed_at.pop(tp, None)
        n = self.cache.evict(self.cache.slots_of_partitions({p for _, p in tps}))
        self.metrics.cached_keys.set(len(self.cache))
        return n


# -- grouping by key without pandas (the worker does not import it: ~70 MiB of RSS) ----------
def _factorize(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Key id per event, and the unique keys in first-seen order."""
    ids: dict[str, int] = {}
    codes = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), np.int64, len(keys))
    uniq = np.empty(len(ids), dtype=object)
    uniq[:] = list(ids)
    return codes, uniq


def _running_max(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per group of ``codes``, the largest of ``values`` up to and including each element
    (any order of the groups; the order within a group is the order given)."""
    if not len(values):
        return values.copy()
    order = np.argsort(codes, kind="stable")
    levels, rank = np.unique(values, return_inverse=True)
    sc = codes[order]
    base = np.r_[0, np.cumsum(sc[1:] != sc[:-1])] * len(levels)  # each group above the last
    out = np.empty_like(values)
    out[order] = levels[np.maximum.accumulate(base + rank.reshape(-1)[order]) - base]
    return out


def _forward_fill(vals: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``vals`` ``[n, F]`` with each NaN replaced by the last value of its column that is not
    NaN earlier in its group of ``codes`` (NaN when there is none)."""
    if not len(vals):
        return vals.copy()
    order = np.argsort(codes, kind="stable")
    sv, sc = vals[order], codes[order]
    pos = np.arange(len(sv))
    start = np.maximum.accumulate(np.where(np.r_[True, sc[1:] != sc[:-1]], pos, 0))
    last = np.maximum.accumulate(np.where(np.isnan(sv), -1, pos[:, None]), axis=0)
    got = sv[np.maximum(last, 0), np.arange(sv.shape[1])]
    out = np.empty_like(vals)
    out[order] = np.where(last >= start[:, None], got, np.nan)
    return out
