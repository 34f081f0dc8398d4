"""Per-key state: the binary record stored in Redis and the in-memory cache of owned keys.

A record is fixed-size little-endian binary (a numpy structured dtype)::

    magic "SLS4" | model version (12 bytes) | last_offset i64 @16 | last_ts i64 @24 | count i64
    | partition i32 @40 | fill i32 | layers u16 | hidden u16 | window u16 | features u16
    | head u16 | targets u16 | score_ring u16 | steps u16 | stats u16 | topic_id 16 bytes @66
    | h f32[layers, hidden] | c f32[layers, hidden]
    | score block (only when forecasts are scored, see stream_lstm/scoring.py):
    |   residual EWM mean f32[targets], variance f32[targets], residuals seen i32,
    |   open excursion: events i32, since i64, peak score f32,
    |   forecast ring: origin ts i64[score_ring], forecasts f32[score_ring, steps, targets, stats]
    |                                                               ← the "fixed part" ends here
    | ring (v f32[features], ts i64)[window]                        ← oldest row at `head`

``last_offset``, ``last_ts``, ``partition`` and ``topic_id`` sit at fixed bytes so the
conditional-write script compares them without decoding the rest. ``partition`` and
``topic_id`` (the Kafka topic id of the input topic's incarnation; zeros when unknown) say where
``last_offset`` was read: the offset guard ("an event at or below the stored offset was applied
already") holds only in that same partition of that same topic. A key whose events now come
from another partition (partitions were added) or another incarnation of the topic (deleted and
re-created) keeps its state, and its events are ordered by time instead (see
:func:`write_refused` and :meth:`StateCache.load`).

Older formats: "SLS3" (no topic id) is upgraded in place, losslessly (16 zero bytes inserted
after its header, here and in the Redis script); "SLS2" (no score fields, no score block) is
read as another layout and the state is rebuilt from its window. The window holds the raw
feature values and times of the key's last ``window`` events; rows not yet filled are zeros.

Writes are deltas: each commit cycle sends, per dirty key, the fixed part and only the ring
rows written since the key's last write (usually one or two), and the Redis script patches them
into the record (creating a zero-filled one first). So a write costs about a kilobyte, not the
whole window, and the stateful ``lstm`` kind need not keep windows in memory at all: the
window lives in Redis and is read back only to rebuild a key's state for a new model version.
Windowed models (``cnn-lstm-attn``) read the window every tick and keep it in memory as well.

The cache keeps every owned key in slabs (one array per field, one row per key) so gathering
and scattering a tick's keys is fancy indexing, never a per-key Python loop over tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"SLS4"
MAGIC_V3 = b"SLS3"  # before topic ids: upgraded in place when read or written
MAGIC_V2 = b"SLS2"  # before forecast scoring: read (and rebuilt from its window), never written
# byte positions in a record's header (the Redis script reads them)
OFFSET_POS = 16  # last_offset
TS_POS = 24  # last_ts
PARTITION_POS = 40  # partition
TOPIC_ID_POS = 66  # topic_id (SLS4)
NO_TOPIC = bytes(16)  # topic id unknown
NO_TS = np.iinfo(np.int64).min

HEADER_FIELDS: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
    ("magic", "S4"),
    ("version", "S12"),
    ("last_offset", "<i8"),
    ("last_ts", "<i8"),
    ("count", "<i8"),
    ("partition", "<i4"),
    ("fill", "<i4"),
    ("layers", "<u2"),
    ("hidden", "<u2"),
    ("window", "<u2"),
    ("features", "<u2"),
    ("head", "<u2"),
]
HEADER_V2 = np.dtype(HEADER_FIELDS)
HEADER_FIELDS = [
    *HEADER_FIELDS,
    ("targets", "<u2"),
    ("score_ring", "<u2"),
    ("steps", "<u2"),
    ("stats", "<u2"),
]
HEADER_V3 = np.dtype(HEADER_FIELDS)
HEADER_FIELDS = [*HEADER_FIELDS, ("topic_id", "S16")]
HEADER = np.dtype(HEADER_FIELDS)
assert HEADER.fields is not None
assert HEADER.fields["partition"][1] == PARTITION_POS
assert HEADER.fields["last_ts"][1] == TS_POS
assert HEADER.fields["topic_id"][1] == TOPIC_ID_POS == HEADER_V3.itemsize


def score_dtype(targets: int, ring: int, steps: int, stats: int) -> np.dtype:
    """The score block: one-step residual EWM, the open excursion, the last forecasts."""
    if not ring:
        return np.dtype([])
    return np.dtype(
        [
            ("ewm_mean", "<f4", (targets,)),
            ("ewm_var", "<f4", (targets,)),
            ("ewm_n", "<i4"),
            ("exc_count", "<i4"),
            ("exc_since", "<i8"),
            ("exc_peak", "<f4"),
            ("fring_ts", "<i8", (ring,)),
            ("fring", "<f4", (ring, steps, targets, stats)),
        ]
    )


def fixed_dtype(
    layers: int, hidden: int, targets: int = 0, ring: int = 0, steps: int = 0, stats: int = 0
) -> np.dtype:
    fields: list[Any] = [
        *HEADER_FIELDS,
        ("h", "<f4", (layers, hidden)),
        ("c", "<f4", (layers, hidden)),
    ]
    if ring:
        fields.append(("score", score_dtype(targets, ring, steps, stats)))
    return np.dtype(fields)


def record_dtype(
    layers: int,
    hidden: int,
    window: int,
    features: int,
    targets: int = 0,
    ring: int = 0,
    steps: int = 0,
    stats: int = 0,
) -> np.dtype:
    return np.dtype(
        [
            *fixed_dtype(layers, hidden, targets, ring, steps, stats).descr,
            ("ring", [("v", "<f4", (features,)), ("ts", "<i8")], (window,)),
        ]
    )


def record_dtype_v2(layers: int, hidden: int, window: int, features: int) -> np.dtype:
    return np.dtype(
        [
            *HEADER_V2.descr,
            ("h", "<f4", (layers, hidden)),
            ("c", "<f4", (layers, hidden)),
            ("ring", [("v", "<f4", (features,)), ("ts", "<i8")], (window,)),
        ]
    )


@dataclass(frozen=True)
class Layout:
    """Shapes of one model version's state."""

    version: str
    layers: int  # 0 for windowed models (no h, c)
    hidden: int
    window: int
    features: int
    # forecast scoring (0: off): targets, forecasts kept (the last `score_ring` events'),
    # horizon steps scored, numbers per step and target (1: point; 3: point, lower, upper)
    targets: int = 0
    score_ring: int = 0
    steps: int = 0
    stats: int = 0

    @property
    def score_dims(self) -> tuple[int, int, int, int]:
        return self.targets, self.score_ring, self.steps, self.stats

    @property
    def dtype(self) -> np.dtype:
        return record_dtype(self.layers, self.hidden, self.window, self.features, *self.score_dims)

    @property
    def record_size(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def fixed_size(self) -> int:
        return int(fixed_dtype(self.layers, self.hidden, *self.score_dims).itemsize)

    @property
    def score_block(self) -> np.dtype:
        return score_dtype(*self.score_dims)

    @property
    def row_dtype(self) -> np.dtype:
        """One ring row in a delta: position, values, time."""
        return np.dtype([("pos", "<u2"), ("v", "<f4", (self.features,)), ("ts", "<i8")])

    @property
    def row_bytes(self) -> int:
        """Bytes of one ring row in a record: the values, then the time."""
        return 4 * self.features + 8


@dataclass
class Decoded:
    """A record of any layout, decoded (used when the stored version differs)."""

    version: str
    last_offset: int
    last_ts: int
    count: int
    partition: int
    fill: int
    h: np.ndarray
    c: np.ndarray
    win: np.ndarray  # [window, features], oldest first, right-aligned
    win_ts: np.ndarray  # [window]
    topic_id: bytes = NO_TOPIC


def upgrade(rec: bytes) -> bytes:
    """An SLS3 record as SLS4 (no topic id known); other records as they are."""
    if rec[:4] != MAGIC_V3 or len(rec) < HEADER_V3.itemsize:
        return rec
    at = HEADER_V3.itemsize
    return MAGIC + rec[4:at] + NO_TOPIC + rec[at:]


def write_refused(cur: bytes, new_fixed: bytes) -> bool:
    """Whether a stored record ``cur`` refuses the write of a state whose fixed part is
    ``new_fixed`` (the rule the Redis script applies; :class:`~stream_lstm.testing.MemoryStore`
    applies it too).

    Same place (partition, and topic id when both are known): refused when the stored state has
    applied a later offset (a zombie that lost its partitions cannot overwrite its successor).
    Another place (the key moved to another partition, or the topic was re-created): offsets
    are not comparable, so refused when the stored state has applied a later event time.
    """
    cur = upgrade(cur)
    if len(cur) < HEADER.itemsize or cur[:4] != MAGIC:
        return False  # not a record of this format: overwritten

    def i64(b: bytes, at: int) -> int:
        return int.from_bytes(b[at : at + 8], "little", signed=True)

    tid_cur = cur[TOPIC_ID_POS : TOPIC_ID_POS + 16]
    tid_new = new_fixed[TOPIC_ID_POS : TOPIC_ID_POS + 16]
    same_place = cur[PARTITION_POS : PARTITION_POS + 4] == new_fixed[
        PARTITION_POS : PARTITION_POS + 4
    ] and (tid_cur == tid_new or NO_TOPIC in (tid_cur, tid_new))
    if same_place:
        return i64(cur, OFFSET_POS) > i64(new_fixed, OFFSET_POS)
    return i64(cur, TS_POS) > i64(new_fixed, TS_POS)


def decode_any(rec: bytes) -> Decoded | None:
    """Decode a record whatever its layout (or format); None if it is not a record at all."""
    rec = upgrade(rec)
    header = {MAGIC: HEADER, MAGIC_V2: HEADER_V2}.get(rec[:4])
    if header is None or len(rec) < header.itemsize:
        return None
    hd = np.frombuffer(rec, header, count=1)[0]
    dims = (int(hd["layers"]), int(hd["hidden"]), int(hd["window"]), int(hd["features"]))
    if header is HEADER:
        score = (int(hd["targets"]), int(hd["score_ring"]), int(hd["steps"]), int(hd["stats"]))
        dt = record_dtype(*dims, *score)
    else:
        dt = record_dtype_v2(*dims)
    if len(rec) != dt.itemsize:
        return None
    r = np.frombuffer(rec, dt, count=1)[0]
    order = (int(r["head"]) + np.arange(int(r["window"]))) % max(1, int(r["window"]))
    return Decoded(
        version=bytes(r["version"]).decode(errors="replace"),
        last_offset=int(r["last_offset"]),
        last_ts=int(r["last_ts"]),
        count=int(r["count"]),
        partition=int(r["partition"]),
        fill=int(r["fill"]),
        h=np.array(r["h"]),
        c=np.array(r["c"]),
        win=np.array(r["ring"]["v"])[order],
        win_ts=np.array(r["ring"]["ts"])[order],
        topic_id=bytes(r["topic_id"]).ljust(16, b"\0") if header is HEADER else NO_TOPIC,
    )


def apply_delta(record: bytes | None, fixed: bytes, rows: bytes, layout: Layout) -> bytes:
    """What the Redis script does, in Python (tests, the in-memory store): an SLS3 record is
    upgraded, a record of another size replaced by a zero-filled one, then patched."""
    size, fsize, rb = layout.record_size, layout.fixed_size, layout.row_bytes
    record = None if record is None else upgrade(record)
    buf = bytearray(record if record is not None and len(record) == size else bytes(size))
    buf[:fsize] = fixed
    for i in range(len(rows) // (2 + rb)):
        o = i * (2 + rb)
        p = int.from_bytes(rows[o : o + 2], "little")
        buf[fsize + p * rb : fsize + (p + 1) * rb] = rows[o + 2 : o + 2 + rb]
    return bytes(buf)


LogChunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # slot, ring pos, values, ts


@dataclass
class Snapshot:
    """Dirty keys' states at a commit cycle, as deltas: per key the fixed part (header, h, c)
    and the ring rows written since its last write.

    The hot loop only copies arrays (:meth:`StateCache.snapshot`); the bytes are assembled by
    :meth:`items` on the writer's thread.
    """

    layout: Layout
    keys: list[str]
    slots: np.ndarray  # [n] sorted
    header: np.ndarray  # [n] HEADER
    h: np.ndarray  # [n, L, Hd]
    c: np.ndarray  # [n, L, Hd]
    log: list[LogChunk]  # rows of these slots only
    score: np.ndarray | None = None  # [n] the score block, when forecasts are scored
    _fixed: np.ndarray | None = None
    _rows: bytes = b""
    _bounds: np.ndarray | None = None
    _blobs: tuple[list[bytes], list[bytes]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _prepare(self) -> None:
        n = len(self.keys)
        self._fixed = np.concatenate(
            [
                self.header.view(np.uint8).reshape(n, HEADER.itemsize),
                self.h.reshape(n, -1).view(np.uint8),  # float32 bytes, little-endian
                self.c.reshape(n, -1).view(np.uint8),
                *(() if self.score is None else (self.score.view(np.uint8).reshape(n, -1),)),
            ],
            axis=1,
        )  # [n, fixed_size]
        self._bounds = np.zeros(n + 1, np.int64)
        if not self.log:
            return
        s, p, v, t = (np.concatenate(x) for x in zip(*self.log, strict=True))
        # the last write of each (slot, position) wins: keep the last occurrence
        order = np.lexsort((np.arange(len(s)), p, s))
        s, p, v, t = s[order], p[order], v[order], t[order]
        last = np.r_[(s[1:] != s[:-1]) | (p[1:] != p[:-1]), True]
        s, p, v, t = s[last], p[last], v[last], t[last]
        packed = np.empty(len(s), dtype=self.layout.row_dtype)
        packed["pos"], packed["v"], packed["ts"] = p, v, t
        self._rows = packed.tobytes()
        # s holds only these slots, sorted: slot i's rows end where slot i + 1's begin
        self._bounds = (
            np.r_[0, np.searchsorted(s, self.slots, side="right")] * packed.dtype.itemsize
        )

    def blobs(self) -> tuple[list[bytes], list[bytes]]:
        """Per key: the fixed part and the packed new rows (built once, on first use)."""
        if self._fixed is None:
            self._prepare()
        assert self._fixed is not None
        assert self._bounds is not None
        if self._blobs is None:
            f = self._fixed.shape[1]
            raw = self._fixed.tobytes()
            fixed = [raw[i * f : (i + 1) * f] for i in range(len(self.keys))]
            rows, b = self._rows, self._bounds.tolist()
            self._blobs = (fixed, [rows[x:y] for x, y in itertools.pairwise(b)])
        return self._blobs

    def items(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, bytes, bytes]]:
        """(key, fixed part, rows) for keys ``start:stop``."""
        fixed, rows = self.blobs()
        stop = len(self.keys) if stop is None else min(stop, len(self.keys))
        for i in range(start, stop):
            yield self.keys[i], fixed[i], rows[i]


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
        self._snap: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
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

        The copies live in buffers reused by the next snapshot: a snapshot must be written before
        the next one is taken (the engine keeps one write in flight at most).
        """
        lay = self.layout
        slots = np.sort(slots)
        n = len(slots)
        if self._snap is None or len(self._snap[0]) < n:
            cap = max(n, 1024, len(self._snap[0]) * 3 // 2 if self._snap else 0)
            self._snap = (
                np.zeros(cap, dtype=HEADER),
                np.zeros((cap, lay.layers, lay.hidden), np.float32),
                np.zeros((cap, lay.layers, lay.hidden), np.float32),
                np.zeros(cap if lay.score_ring else 0, dtype=lay.score_block),
            )
        hdr, h, c, score = (a[:n] for a in self._snap)
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
