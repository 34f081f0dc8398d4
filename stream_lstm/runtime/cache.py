"""The in-memory cache of the owned keys' state (the records of :mod:`stream_lstm.stores.record`).

The cache keeps every owned key in slabs (one array per field, one row per key) so gathering
and scattering a tick's keys is fancy indexing, never a per-key Python loop over tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from stream_lstm.stores.record import (
    HEADER,
    MAGIC,
    NO_TOPIC,
    NO_TS,
    Layout,
    LogChunk,
    Snapshot,
    decode_any,
    upgrade,
)


class StateCache:
    """The owned keys' state in slabs. Slot = row; ``index`` maps a key to its slot."""

    h: np.ndarray  # [cap, L, Hd] float32
    c: np.ndarray  # [cap, L, Hd] float32
    head: np.ndarray  # [cap] int32, ring position of the oldest row (= next write)
    fill: np.ndarray  # [cap] int32, rows filled (≤ W)
    last_offset: np.ndarray  # [cap] int64, offset of the last applied event (-1: none)
    last_ts: np.ndarray  # [cap] int64, time of the last applied event
    count: np.ndarray  # [cap] int64, events applied
    partition: np.ndarray  # [cap] int32
    dirty: np.ndarray  # [cap] bool, changed since the last Redis write
    rebuild: np.ndarray  # [cap] bool, replay the window through the model first
    last_v: np.ndarray  # [cap, F] float32, the key's last applied feature values (NaN: none)
    score: np.ndarray | None  # [cap] Layout.score_block, when forecasts are scored
    win: np.ndarray | None  # [cap, W, F] float32 ring, only when windows are kept in memory
    win_ts: np.ndarray | None  # [cap, W] int64

    def __init__(
        self,
        layout: Layout,
        init_h: np.ndarray,
        init_c: np.ndarray,
        *,
        keep_windows: bool,
        capacity: int = 1024,
        snapshot_buffers: int = 1,
    ) -> None:
        self.layout = layout
        self.keep_windows = keep_windows
        self.init_h = init_h.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.init_c = init_c.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.index: dict[str, int] = {}
        self.slot_keys: list[str | None] = []
        self.free: list[int] = []
        self.win = self.win_ts = None
        self.score = None
        # the input topic's id (its incarnation), written into every record: see write_refused
        self.topic_id = NO_TOPIC
        # ring rows written since each key's last Redis write: chunks of (slot, pos, v, ts)
        self._log: list[LogChunk] = []
        # windows of keys loaded from another model version, until the model replays them
        self.rebuild_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # the snapshot buffers, used in turn: as many snapshots may be in flight (being written)
        self._snaps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] = [
            None
        ] * snapshot_buffers
        self._turn = 0
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        lay = self.layout
        L, Hd, W, F = lay.layers, lay.hidden, lay.window, lay.features
        n_old = 0 if not hasattr(self, "h") else self.h.shape[0]

        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: object = 0) -> None:
            arr: np.ndarray = np.full((cap, *shape), fill, dtype=dtype)
            if n_old:
                arr[:n_old] = getattr(self, name)
            setattr(self, name, arr)

        grow("h", (L, Hd), np.float32)
        grow("c", (L, Hd), np.float32)
        if self.keep_windows:
            grow("win", (W, F), np.float32)
            grow("win_ts", (W,), np.int64)
        grow("head", (), np.int32)
        grow("fill", (), np.int32)
        grow("last_offset", (), np.int64, -1)
        grow("last_ts", (), np.int64, NO_TS)
        grow("count", (), np.int64)
        grow("partition", (), np.int32, -1)
        grow("dirty", (), np.bool_, False)
        grow("rebuild", (), np.bool_, False)
        grow("last_v", (F,), np.float32, np.nan)
        if lay.score_ring:
            score = np.zeros(cap, dtype=lay.score_block)
            if n_old and self.score is not None:
                score[:n_old] = self.score
            self.score = score
        else:
            self.score = None
        self.slot_keys += [None] * (cap - n_old)
        self.free += list(range(cap - 1, n_old - 1, -1))

    # -- lookup and allocation --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        return int(self.h.shape[0])

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Slots of ``keys`` (-1 for keys not cached)."""
        get = self.index.get
        return np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def allocate(self, keys: Sequence[str], partitions: Sequence[int] | np.ndarray) -> np.ndarray:
        """New slots in the initial state (h_0, c_0, empty window, nothing applied)."""
        need = len(keys)
        if need > len(self.free):  # grow by half: 100,000 keys fit in ~110,000 slots, not 131,072
            self._alloc(max(self.capacity * 3 // 2, self.capacity + need - len(self.free)))
        slots = np.asarray([self.free.pop() for _ in range(need)], dtype=np.int64)
        for k, s in zip(keys, slots, strict=True):
            self.index[k] = int(s)
            self.slot_keys[int(s)] = k
        self.reset(slots)
        self.partition[slots] = np.asarray(partitions, dtype=np.int32)
        return slots

    def reset(self, slots: np.ndarray) -> None:
        self.h[slots] = self.init_h
        self.c[slots] = self.init_c
        if self.win is not None and self.win_ts is not None:
            self.win[slots] = 0
            self.win_ts[slots] = 0
        self.head[slots] = 0
        self.fill[slots] = 0
        self.last_offset[slots] = -1
        self.last_ts[slots] = NO_TS
        self.count[slots] = 0
        self.dirty[slots] = False
        self.rebuild[slots] = False
        self.last_v[slots] = np.nan
        self.reset_score(slots)

    def reset_score(self, slots: np.ndarray) -> None:
        """No forecasts kept, no residuals seen, no excursion open."""
        if self.score is not None:
            self.score[slots] = np.zeros(1, dtype=self.score.dtype)
            self.score["fring_ts"][slots] = NO_TS
            self.score["exc_since"][slots] = NO_TS

    def evict(self, slots: Iterable[int]) -> int:
        gone = []
        for s in slots:
            k = self.slot_keys[int(s)]
            if k is None:
                continue
            del self.index[k]
            self.slot_keys[int(s)] = None
            self.free.append(int(s))
            self.dirty[int(s)] = False
            self.rebuild_rows.pop(int(s), None)
            gone.append(int(s))
        if gone and self._log:
            self._drop_log(np.asarray(gone))
        return len(gone)

    def slots_of_partitions(self, partitions: Iterable[int]) -> np.ndarray:
        used = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
        if used.size == 0:
            return used
        return used[np.isin(self.partition[used], np.fromiter(partitions, dtype=np.int32))]

    def dirty_slots(self, partitions: Iterable[int] | None = None) -> np.ndarray:
        slots = (
            np.flatnonzero(self.dirty)
            if partitions is None
            else self.slots_of_partitions(partitions)
        )
        return slots[self.dirty[slots]]

    # -- windows -----------------------------------------------------------------------------
    def window_rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows kept in memory, oldest first, right-aligned (zeros before the first event).

        Returns ``[S, W, F]`` values and ``[S, W]`` times.
        """
        assert self.win is not None, "windows are not kept in memory"
        assert self.win_ts is not None
        W = self.layout.window
        idx = (self.head[slots][:, None] + np.arange(W)[None, :]) % W  # [S, W]
        return self.win[slots[:, None], idx], self.win_ts[slots[:, None], idx]

    def append(
        self,
        slots: np.ndarray,
        pos: np.ndarray,
        counts: np.ndarray,
        values: np.ndarray,
        ts: np.ndarray,
    ) -> None:
        """Append each event to its key's ring. ``slots``/``pos`` per event (pos = index within
        the key's events this tick), ``counts`` per event = that key's events this tick."""
        W = self.layout.window
        keep = pos >= counts - W  # only the last W events of a key can stay in its ring
        s, p = slots[keep], pos[keep]
        at = (self.head[s] + p) % W
        if self.win is not None and self.win_ts is not None:
            self.win[s, at] = values[keep]
            self.win_ts[s, at] = ts[keep]
        self._log.append((s, at.astype(np.int64), values[keep], ts[keep]))
        last = pos == counts - 1
        self.last_v[slots[last]] = values[last]
        first = pos == 0
        ks, kn = slots[first], counts[first]
        self.head[ks] = (self.head[ks] + kn) % W
        self.fill[ks] = np.minimum(self.fill[ks] + kn, W)

    def _drop_log(self, slots: np.ndarray) -> None:
        """Forget the logged rows of ``slots`` (written, or evicted)."""
        s, p, v, t = self._merged_log()
        keep = ~np.isin(s, slots)
        self._log = [(s[keep], p[keep], v[keep], t[keep])] if keep.any() else []

    def _merged_log(self) -> LogChunk:
        if len(self._log) == 1:
            return self._log[0]
        s, p, v, t = (np.concatenate(x) for x in zip(*self._log, strict=True))
        self._log = [(s, p, v, t)]
        return s, p, v, t

    # -- records -----------------------------------------------------------------------------
    def snapshot(self, slots: np.ndarray, *, everything: bool = False) -> Snapshot:
        """Copies of the dirty states of ``slots`` (``everything``: all dirty keys, so the whole
        row log goes with them without filtering). Array copies only: cheap on the hot loop.

        The copies live in buffers reused in turn (``snapshot_buffers`` of them): a snapshot must
        be written before the buffer it uses comes round again (the engine keeps at most that
        many writes in flight).
        """
        lay = self.layout
        slots = np.sort(slots)
        n = len(slots)
        turn = self._turn
        if n:  # (an empty snapshot, the idle store check, takes no buffer's turn)
            self._turn = (turn + 1) % len(self._snaps)
        snap = self._snaps[turn]
        if snap is None or len(snap[0]) < n:
            cap = max(n, 1024, len(snap[0]) * 3 // 2 if snap else 0)
            snap = self._snaps[turn] = (
                np.zeros(cap, dtype=HEADER),
                np.zeros((cap, lay.layers, lay.hidden), np.float32),
                np.zeros((cap, lay.layers, lay.hidden), np.float32),
                np.zeros(cap if lay.score_ring else 0, dtype=lay.score_block),
            )
        hdr, h, c, score = (a[:n] for a in snap)
        hdr["magic"] = MAGIC
        hdr["version"] = lay.version.encode()[:12]
        hdr["last_offset"] = self.last_offset[slots]
        hdr["last_ts"] = self.last_ts[slots]
        hdr["count"] = self.count[slots]
        hdr["partition"] = self.partition[slots]
        hdr["fill"] = self.fill[slots]
        hdr["layers"], hdr["hidden"] = lay.layers, lay.hidden
        hdr["window"], hdr["features"] = lay.window, lay.features
        hdr["head"] = self.head[slots]
        hdr["targets"], hdr["score_ring"] = lay.targets, lay.score_ring
        hdr["steps"], hdr["stats"] = lay.steps, lay.stats
        hdr["topic_id"] = self.topic_id
        np.take(self.h, slots, axis=0, out=h)  # into reused buffers: no fresh pages to fault in
        np.take(self.c, slots, axis=0, out=c)
        if self.score is not None:
            np.take(self.score, slots, axis=0, out=score)
        if everything:
            log, self._log = self._log, []
        else:
            log = self._take_log(slots)
        keys = [self.slot_keys[s] or "" for s in slots.tolist()]
        return Snapshot(lay, keys, slots, hdr, h, c, log, score if lay.score_ring else None)

    def _take_log(self, slots: np.ndarray) -> list[LogChunk]:
        """Remove and return the logged rows of ``slots``."""
        if not self._log or not len(slots):
            return []
        s, p, v, t = self._merged_log()
        mine = np.isin(s, slots)
        rest = ~mine
        self._log = [(s[rest], p[rest], v[rest], t[rest])] if rest.any() else []
        return [(s[mine], p[mine], v[mine], t[mine])] if mine.any() else []

    def load(self, slots: np.ndarray, records: Sequence[bytes | None]) -> dict[str, int]:
        """Fill freshly allocated ``slots`` (their partition set) from stored records (None =
        never seen).

        Same version and layout: restored as is, in one vectorised decode. Another version:
        counters and window kept (its newest rows, when this version keeps fewer), ``(h, c)``
        reset and the slot flagged for a rebuild from its window (or started fresh when the
        window's features do not match). A record written from another partition or another
        incarnation of the topic keeps its state, but its offset guard is reset (``moved``):
        its offset means nothing here. Returns counts.
        """
        lay = self.layout
        tag = lay.version.encode()[:12].ljust(12, b"\0")
        records = [None if r is None else upgrade(r) for r in records]
        same = [
            i
            for i, r in enumerate(records)
            if r is not None and len(r) == lay.record_size and r[4:16] == tag
        ]
        stats = {"restored": len(same), "rebuilt": 0, "fresh": 0, "new": 0, "moved": 0}
        if same:
            arr = np.frombuffer(b"".join(records[i] or b"" for i in same), dtype=lay.dtype)
            s = slots[same]
            self.h[s], self.c[s] = arr["h"], arr["c"]
            if self.win is not None and self.win_ts is not None:
                self.win[s], self.win_ts[s] = arr["ring"]["v"], arr["ring"]["ts"]
            self.head[s] = arr["head"]
            self.fill[s] = arr["fill"]
            self.last_offset[s], self.last_ts[s] = arr["last_offset"], arr["last_ts"]
            self.count[s] = arr["count"]
            if self.score is not None:
                self.score[s] = arr["score"]
            newest = (arr["head"].astype(np.int64) - 1) % max(1, lay.window)
            self.last_v[s] = np.where(
                (arr["fill"] > 0)[:, None],
                arr["ring"]["v"][np.arange(len(same)), newest],
                np.nan,
            )
            moved = self._moved(arr["partition"], arr["topic_id"], s)
            self.last_offset[s[moved]] = -1
            stats["moved"] += int(moved.sum())
        same_set = set(same)
        for i, r in enumerate(records):
            if i in same_set:
                continue
            if r is None:
                stats["new"] += 1
                continue
            d = decode_any(r)
            s1 = int(slots[i])
            if d is None:
                stats["fresh"] += 1  # unreadable: start over (the old bytes stay until overwritten)
                continue
            self.last_offset[s1], self.last_ts[s1], self.count[s1] = (
                d.last_offset,
                d.last_ts,
                d.count,
            )
            if self._moved(np.asarray([d.partition]), np.asarray([d.topic_id]), slots[i : i + 1])[
                0
            ]:
                self.last_offset[s1] = -1
                stats["moved"] += 1
            self.dirty[s1] = True  # written under the new version at the next commit
            if d.win.shape[1] != lay.features:
                stats["fresh"] += 1
                continue
            if d.fill > 0:
                self.last_v[s1] = d.win[-1]
            # the window's newest rows (as many as this version keeps), oldest first and
            # right-aligned, become this version's ring (head 0)
            W, fill = lay.window, min(d.fill, lay.window)
            v, t = d.win[d.win.shape[0] - fill :], d.win_ts[d.win.shape[0] - fill :]
            self.fill[s1], self.head[s1] = fill, 0
            filled = np.arange(W - fill, W)
            if self.win is not None and self.win_ts is not None:
                self.win[s1], self.win_ts[s1] = 0, 0
                self.win[s1, filled], self.win_ts[s1, filled] = v, t
            self._log.append((np.full(fill, s1), filled, v, t))
            if lay.layers > 0 and fill > 0:
                self.rebuild[s1] = True
                self.rebuild_rows[s1] = (v, t)
            stats["rebuilt"] += 1
        return stats

    def _moved(self, partition: np.ndarray, topic_id: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Records written from another partition, or another incarnation of the topic (when
        both topic ids are known), than the one ``slots`` are read from now."""
        tid = np.asarray(topic_id, dtype="S16")
        other_topic = (tid != b"") & (tid != np.bytes_(self.topic_id)) & (self.topic_id != NO_TOPIC)
        return np.asarray((partition != self.partition[slots]) | other_topic)

    def forget_offsets(self, slots: np.ndarray | None = None) -> None:
        """Reset the offset guard of ``slots`` (all cached keys when None): their offsets belong
        to a topic that was re-created. Events are then ordered by time alone."""
        used = (
            np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
            if slots is None
            else slots
        )
        self.last_offset[used] = -1

    def rewrite_all(self) -> int:
        """After the store was wiped: every cached key is written in full at the next commit
        cycle (its windows too where they are kept in memory; the stateful kind keeps no window
        in memory, only each key's last row, so its window starts again from that row while
        ``(h, c)`` carry on). Returns how many keys."""
        used = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
        if self._log and used.size:
            self._drop_log(used)
        if self.win is not None and self.win_ts is not None and used.size:
            W = self.layout.window
            pos = np.tile(np.arange(W), used.size)
            s = np.repeat(used, W)
            filled = ((pos - self.head[s]) % W) >= W - self.fill[s]  # the newest `fill` rows
            self._log.append((s[filled], pos[filled], self.win[s, pos][filled],
                              self.win_ts[s, pos][filled]))  # fmt: skip
        elif used.size:
            # the newest row, which --missing ffill carries forward from, is in memory
            has = used[~np.isnan(self.last_v[used]).any(axis=1)]
            self.fill[used], self.head[used] = 0, 0
            self.fill[has], self.head[has] = 1, 1 % self.layout.window
            zero = np.zeros(len(has), np.int64)
            self._log.append((has, zero, self.last_v[has].copy(), self.last_ts[has].copy()))
        self.dirty[used] = True
        return int(used.size)
