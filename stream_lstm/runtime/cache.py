"""The in-memory cache of the owned keys' state (the records of :mod:`stream_lstm.stores.record`).

The cache keeps every owned key in slabs (one array per field, one row per key) so gathering
and scattering a tick's keys is fancy indexing, never a per-key Python loop over tensors.

Snapshots are copy-on-write (:meth:`StateCache.snapshot`): the hot loop copies each dirty key's
header fields (a few dozen bytes) and leaves its large rows (``h``, ``c``, the score block) in
the slabs, marked as owed to the snapshot; the state writer copies them out in chunks
(:meth:`Snapshot.complete`, on its own thread), and a tick about to change a row still owed
copies that row first (:meth:`StateCache.preserve`). So the snapshot is of one instant, as
before, but the hot loop no longer stops for a copy of every dirty key's state.
"""

from __future__ import annotations

import functools
import threading
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
    owed: np.ndarray  # [cap] int8, the open snapshot still to copy this row's h, c, score (0: none)

    # snapshots whose rows are not all copied yet: a key should not be written so rarely that
    # more than this many are open (an engine has at most two writes in flight)
    MAX_OPEN = 8
    COPY_CHUNK = 4096  # rows the writer copies per hold of the lock

    def __init__(
        self,
        layout: Layout,
        init_h: np.ndarray,
        init_c: np.ndarray,
        *,
        keep_windows: bool,
        capacity: int = 1024,
    ) -> None:
        self.layout = layout
        self.keep_windows = keep_windows
        self.init_h = init_h.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.init_c = init_c.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.index: dict[str, int] = {}
        self.slot_keys: np.ndarray = np.empty(0, dtype=object)  # [cap] the key in each slot
        self.free: list[int] = []
        self.win = self.win_ts = None
        self.score = None
        # the input topic's id (its incarnation), written into every record: see write_refused
        self.topic_id = NO_TOPIC
        # ring rows written since each key's last Redis write: chunks of (slot, pos, v, ts)
        self._log: list[LogChunk] = []
        # windows of keys loaded from another model version, until the model replays them
        self.rebuild_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # copy-on-write snapshots (module docstring): the open ones by id, the lock that the hot
        # loop (preserve, growth) and the writer (Snapshot.complete) take to touch owed rows
        self._lock = threading.Lock()
        self._open: dict[int, Snapshot] = {}
        self._last_id = 0
        # a written snapshot's buffer, kept for the next one (its pages are already mapped)
        self._spare: np.ndarray | None = None
        self._spare_lock = threading.Lock()
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        with self._lock:  # (the writer may be copying owed rows out of the old slabs)
            self._grow_slabs(cap)

    def _grow_slabs(self, cap: int) -> None:
        lay = self.layout
        L, Hd, W, F = lay.layers, lay.hidden, lay.window, lay.features
        n_old = 0 if not hasattr(self, "h") else self.h.shape[0]

        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: object = 0) -> None:
            # zeros come from calloc: the pages of slots not used yet are not resident
            arr: np.ndarray = (
                np.zeros((cap, *shape), dtype) if fill == 0 else np.full((cap, *shape), fill, dtype)
            )
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
        grow("owed", (), np.int8, 0)
        if lay.score_ring:
            score = np.zeros(cap, dtype=lay.score_block)
            if n_old and self.score is not None:
                score[:n_old] = self.score
            self.score = score
        else:
            self.score = None
        self.slot_keys = np.concatenate([self.slot_keys, np.full(cap - n_old, None, object)])
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
        if need > len(self.free):  # grow by a quarter: at most ~25 % of the slabs stand empty
            self._alloc(max(self.capacity * 5 // 4, self.capacity + need - len(self.free)))
        slots = np.asarray([self.free.pop() for _ in range(need)], dtype=np.int64)
        for k, s in zip(keys, slots, strict=True):
            self.index[k] = int(s)
            self.slot_keys[int(s)] = k
        self.reset(slots)
        self.partition[slots] = np.asarray(partitions, dtype=np.int32)
        return slots

    def reset(self, slots: np.ndarray) -> None:
        self.preserve(slots)  # (a slot evicted and reused may still owe its old row)
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
            self.preserve(slots)
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
        """The dirty states of ``slots`` at this instant (``everything``: all dirty keys, so the
        whole row log goes with them without filtering).

        Copy-on-write (module docstring): here only the header fields, the keys and the row log
        are taken; the rows of ``h``, ``c`` and the score block are copied by
        :meth:`Snapshot.complete` (the store calls it before it reads them, on the writer's
        thread), or by :meth:`preserve` when a tick is about to change them first. Each
        snapshot has its own buffer, freed once it is written.
        """
        lay = self.layout
        slots = np.sort(np.asarray(slots, dtype=np.int64))
        n = len(slots)
        if not n:  # an idle cycle: the spare buffer (as large as the last write) is let go
            with self._spare_lock:
                self._spare = None
        hdr = np.empty(n, dtype=HEADER)
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
        if everything:
            log, self._log = self._log, []
        else:
            log = self._take_log(slots)
        snap = Snapshot(
            lay, self.slot_keys[slots], slots, hdr, log, alloc=self._buffer, recycle=self._keep
        )
        if n and (lay.layers or self.score is not None):
            with self._lock:
                self._preserve(slots)  # rows still owed to an earlier snapshot go there first
                sid = self._open_id()
                self.owed[slots] = sid
                self._open[sid] = snap
            snap.fill = functools.partial(self._complete, sid)
        return snap

    def _buffer(self, n: int) -> np.ndarray:
        """A snapshot buffer of at least ``n`` records: the spare when it fits and is not much
        larger (a first cycle's, when every key was new, is let go), else a new one."""
        with self._spare_lock:
            spare, self._spare = self._spare, None
        dt = self.layout.fixed_dtype
        if spare is not None and spare.dtype == dt and n <= len(spare) <= 2 * n + 1024:
            return spare
        return np.empty(n + n // 8, dt)  # (room for the next cycles' variation)

    def _keep(self, buf: np.ndarray) -> None:
        base = buf.base if isinstance(buf.base, np.ndarray) and buf.base.ndim == 1 else buf
        with self._spare_lock:
            if self._spare is None or len(base) > len(self._spare):
                self._spare = base

    def preserve(self, slots: np.ndarray) -> None:
        """Before the rows of ``slots`` change: those still owed to an open snapshot are copied
        into it first (the tick's only part in a snapshot; usually there is nothing to do)."""
        # (only this thread marks rows owed, the writer only clears them: rows read as not
        # owed here are not, so the lock is taken only when a row may still be owed)
        if self._open and self.owed[slots].any():
            with self._lock:
                self._preserve(slots)

    def _preserve(self, slots: np.ndarray) -> None:
        owed = self.owed[slots]
        if not owed.any():
            return
        for sid in np.unique(owed[owed > 0]).tolist():
            s = slots[owed == sid]
            snap = self._open[sid]
            self._copy_rows(snap, np.searchsorted(snap.slots, s), s)
            self.owed[s] = 0

    def _open_id(self) -> int:
        """An id for a new open snapshot. More than MAX_OPEN open means some were never
        written (a write given up, a rewind): the oldest is closed, its owed rows released;
        writing it later raises."""
        while len(self._open) >= self.MAX_OPEN:
            old = next(iter(self._open))
            self.owed[self.owed == old] = 0
            self._open.pop(old).fill = functools.partial(_abandoned, old)
        sid = self._last_id
        while True:
            sid = sid % 127 + 1
            if sid not in self._open:
                self._last_id = sid
                return sid

    def _complete(self, sid: int, snap: Snapshot) -> None:
        """Copy the rows ``snap`` is still owed, a chunk per hold of the lock (the writer's
        thread; the hot loop may take the lock between chunks to preserve a row it changes)."""
        n = len(snap.slots)
        for a in range(0, n, self.COPY_CHUNK):
            with self._lock:
                if self._open.get(sid) is not snap:
                    _abandoned(sid, snap)
                s = snap.slots[a : a + self.COPY_CHUNK]
                mine = self.owed[s] == sid
                if mine.all():
                    self._copy_rows(snap, slice(a, a + len(s)), s)
                elif mine.any():
                    self._copy_rows(snap, a + np.flatnonzero(mine), s[mine])
                self.owed[s[mine]] = 0
        with self._lock:
            self._open.pop(sid, None)

    def _copy_rows(self, snap: Snapshot, at: np.ndarray | slice, slots: np.ndarray) -> None:
        f = snap.fixed
        if self.layout.layers:
            f["h"][at] = self.h[slots]
            f["c"][at] = self.c[slots]
        if self.score is not None:
            f["score"][at] = self.score[slots]

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


def _abandoned(sid: int, snap: Snapshot) -> None:
    raise RuntimeError(
        f"snapshot {sid} of {len(snap.keys)} key(s) was closed before it was written: more than "
        f"{StateCache.MAX_OPEN} snapshots were left unwritten"
    )
