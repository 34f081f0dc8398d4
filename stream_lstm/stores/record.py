"""The state record: one key's state as the stores keep it (the format of the store contract).

A record is fixed-size little-endian binary (a numpy structured dtype)::

    magic "SLS4" | model version (12 bytes) | last_offset i64 @16 | last_ts i64 @24 | count i64
    | partition i32 @40 | fill i32 | layers u16 | hidden u16 | window u16 | features u16
    | head u16 | targets u16 | score_ring u16 | steps u16 | stats u16 | topic_id 16 bytes @66
    | h f32[layers, hidden] | c f32[layers, hidden]
    | score block (only when forecasts are scored, see stream_lstm/runtime/scoring.py):
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

"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
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
    def fixed_dtype(self) -> np.dtype:
        """The fixed part of a record: header, ``h``, ``c``, the score block."""
        return fixed_dtype(self.layers, self.hidden, *self.score_dims)

    @property
    def fixed_size(self) -> int:
        return int(self.fixed_dtype.itemsize)

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
    """Dirty keys' states at a commit cycle, as deltas: per key the fixed part (header, h, c,
    score block) and the ring rows written since its last write.

    The hot loop takes the header fields and the row log; the rows of ``h``, ``c`` and the
    score block are copied in by ``fill`` (copy-on-write: see :mod:`stream_lstm.runtime.cache`),
    which :meth:`complete` runs once, before anything reads them; the bytes are assembled on
    the writer's thread.
    """

    layout: Layout
    key_array: np.ndarray  # [n] the keys (object array; see `keys`)
    slots: np.ndarray  # [n] sorted
    header: np.ndarray  # [n] HEADER
    log: list[LogChunk]  # rows of these slots only
    fill: Callable[[Snapshot], None] | None = None  # copies the rows still owed into `fixed`
    # buffers: where `fixed` comes from (n → an array of at least n records) and goes back to
    # once the snapshot is written (`release`); None: a fresh one, left to the garbage collector
    alloc: Callable[[int], np.ndarray] | None = None
    recycle: Callable[[np.ndarray], None] | None = None
    _fixed: np.ndarray | None = None
    _released: bool = False
    _keys: list[str] | None = None
    _rows: bytes = b""
    _bounds: np.ndarray | None = None
    _blobs: tuple[list[bytes], list[bytes]] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def keys(self) -> list[str]:
        """The keys, in slot order (a list made on first use: on the writer's thread)."""
        if self._keys is None:
            self._keys = [k or "" for k in self.key_array.tolist()]
        return self._keys

    @property
    def fixed(self) -> np.ndarray:
        """``[n]`` fixed parts (``Layout.fixed_dtype``): the header, and the rows of ``h``,
        ``c`` and the score block once ``fill`` has copied them (:meth:`complete`). Allocated
        on first use, so its pages are touched off the hot loop."""
        if self._fixed is None:
            if self._released:
                raise RuntimeError("this snapshot was written and its buffer released")
            n = len(self.slots)
            dt = self.layout.fixed_dtype
            f = np.empty(n, dt) if self.alloc is None else self.alloc(n)[:n].view(dt)
            u8 = f.view(np.uint8).reshape(n, f.dtype.itemsize)
            u8[:, : HEADER.itemsize] = self.header.view(np.uint8).reshape(n, HEADER.itemsize)
            self._fixed = f
        return self._fixed

    def release(self) -> None:
        """Written: the buffer goes back for a later snapshot (its bytes are copied out)."""
        self.blobs()  # (built, if nobody asked yet: they are what stays readable)
        if self._fixed is not None and self.recycle is not None:
            self.recycle(self._fixed)
        self._fixed, self._released = None, True

    def complete(self) -> None:
        """Copy in the rows still owed (once; a no-op after that)."""
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill(self)

    def _prepare(self) -> None:
        self.complete()
        n = len(self.keys)
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
        if self._bounds is None:
            self._prepare()
        assert self._bounds is not None
        if self._blobs is None:
            fx = self.fixed
            f, raw = fx.dtype.itemsize, fx.tobytes()
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
