"""Per-key state: the binary record stored in Redis and the in-memory cache of owned keys.

A record is fixed-size little-endian binary (a numpy structured dtype), so a whole commit
cycle's dirty keys encode in one vectorised call::

    magic "SLS1" | model version (12 bytes) | last_offset i64 @16 | last_ts i64 | count i64
    | partition i32 | fill i32 | layers u16 | hidden u16 | window u16 | features u16
    | h f32[layers, hidden] | c f32[layers, hidden]
    | win f32[window, features] | win_ts i64[window]      (oldest first, right-aligned)

``last_offset`` sits at byte 16 so the conditional-write script can compare it without
decoding the rest. The window holds the raw feature values and times of the key's last
``window`` events; rows not yet filled are zeros at the front.

The cache keeps every owned key in slabs (one array per field, one row per key) so gathering
and scattering a tick's keys is fancy indexing, never a per-key Python loop over tensors. The
window is a ring per key (``head`` = oldest row = next write position).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"SLS1"
OFFSET_POS = 16  # byte position of last_offset in a record (used by the Redis script)
NO_TS = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Layout:
    """Shapes of one model version's state."""

    version: str
    layers: int  # 0 for windowed models (no h, c)
    hidden: int
    window: int
    features: int

    @property
    def dtype(self) -> np.dtype:
        return record_dtype(self.layers, self.hidden, self.window, self.features)

    @property
    def record_size(self) -> int:
        return int(self.dtype.itemsize)


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
]
HEADER = np.dtype(HEADER_FIELDS)


def record_dtype(layers: int, hidden: int, window: int, features: int) -> np.dtype:
    return np.dtype(
        [
            *HEADER_FIELDS,
            ("h", "<f4", (layers, hidden)),
            ("c", "<f4", (layers, hidden)),
            ("win", "<f4", (window, features)),
            ("win_ts", "<i8", (window,)),
        ]
    )


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
    win: np.ndarray  # [window, features]
    win_ts: np.ndarray  # [window]


def decode_any(rec: bytes) -> Decoded | None:
    """Decode a record whatever its layout; None if it is not a record at all."""
    if len(rec) < HEADER.itemsize or rec[:4] != MAGIC:
        return None
    hd = np.frombuffer(rec, HEADER, count=1)[0]
    dt = record_dtype(int(hd["layers"]), int(hd["hidden"]), int(hd["window"]), int(hd["features"]))
    if len(rec) != dt.itemsize:
        return None
    r = np.frombuffer(rec, dt, count=1)[0]
    return Decoded(
        version=bytes(r["version"]).decode(errors="replace"),
        last_offset=int(r["last_offset"]),
        last_ts=int(r["last_ts"]),
        count=int(r["count"]),
        partition=int(r["partition"]),
        fill=int(r["fill"]),
        h=np.array(r["h"]),
        c=np.array(r["c"]),
        win=np.array(r["win"]),
        win_ts=np.array(r["win_ts"]),
    )


class StateCache:
    """The owned keys' state in slabs. Slot = row; ``index`` maps a key to its slot."""

    h: np.ndarray  # [cap, L, Hd] float32
    c: np.ndarray  # [cap, L, Hd] float32
    win: np.ndarray  # [cap, W, F] float32, a ring per key
    win_ts: np.ndarray  # [cap, W] int64
    head: np.ndarray  # [cap] int32, ring position of the oldest row (= next write)
    fill: np.ndarray  # [cap] int32, rows filled (≤ W)
    last_offset: np.ndarray  # [cap] int64, offset of the last applied event (-1: none)
    last_ts: np.ndarray  # [cap] int64, time of the last applied event
    count: np.ndarray  # [cap] int64, events applied
    partition: np.ndarray  # [cap] int32
    dirty: np.ndarray  # [cap] bool, changed since the last Redis write
    rebuild: np.ndarray  # [cap] bool, replay the window through the model first

    def __init__(
        self, layout: Layout, init_h: np.ndarray, init_c: np.ndarray, capacity: int = 1024
    ) -> None:
        self.layout = layout
        self.init_h = init_h.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.init_c = init_c.astype(np.float32).reshape(layout.layers, layout.hidden)
        self.index: dict[str, int] = {}
        self.slot_keys: list[str | None] = []
        self.free: list[int] = []
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        lay = self.layout
        L, Hd, W, F = lay.layers, lay.hidden, lay.window, lay.features
        old = getattr(self, "h", None)
        n_old = 0 if old is None else old.shape[0]

        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: object = 0) -> None:
            arr: np.ndarray = np.full((cap, *shape), fill, dtype=dtype)
            if n_old:
                arr[:n_old] = getattr(self, name)
            setattr(self, name, arr)

        grow("h", (L, Hd), np.float32)
        grow("c", (L, Hd), np.float32)
        grow("win", (W, F), np.float32)
        grow("win_ts", (W,), np.int64)
        grow("head", (), np.int32)
        grow("fill", (), np.int32)
        grow("last_offset", (), np.int64, -1)
        grow("last_ts", (), np.int64, NO_TS)
        grow("count", (), np.int64)
        grow("partition", (), np.int32, -1)
        grow("dirty", (), np.bool_, False)
        grow("rebuild", (), np.bool_, False)  # replay the window through the model first
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
        if need > len(self.free):
            self._alloc(max(2 * self.capacity, self.capacity + need))
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
        self.win[slots] = 0
        self.win_ts[slots] = 0
        self.head[slots] = 0
        self.fill[slots] = 0
        self.last_offset[slots] = -1
        self.last_ts[slots] = NO_TS
        self.count[slots] = 0
        self.dirty[slots] = False
        self.rebuild[slots] = False

    def evict(self, slots: Iterable[int]) -> int:
        n = 0
        for s in slots:
            k = self.slot_keys[int(s)]
            if k is None:
                continue
            del self.index[k]
            self.slot_keys[int(s)] = None
            self.free.append(int(s))
            self.dirty[int(s)] = False
            n += 1
        return n

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
        """Windows oldest first, right-aligned (zeros before the first event).

        Returns ``[S, W, F]`` values and ``[S, W]`` times.
        """
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
        self.win[s, at] = values[keep]
        self.win_ts[s, at] = ts[keep]
        first = pos == 0
        ks, kn = slots[first], counts[first]
        self.head[ks] = (self.head[ks] + kn) % W
        self.fill[ks] = np.minimum(self.fill[ks] + kn, W)

    # -- records -----------------------------------------------------------------------------
    def encode(self, slots: np.ndarray) -> list[bytes]:
        """Records for ``slots``, in one vectorised pass."""
        lay = self.layout
        rec = np.zeros(len(slots), dtype=lay.dtype)
        rec["magic"] = MAGIC
        rec["version"] = lay.version.encode()[:12]
        rec["last_offset"] = self.last_offset[slots]
        rec["last_ts"] = self.last_ts[slots]
        rec["count"] = self.count[slots]
        rec["partition"] = self.partition[slots]
        rec["fill"] = self.fill[slots]
        rec["layers"], rec["hidden"] = lay.layers, lay.hidden
        rec["window"], rec["features"] = lay.window, lay.features
        rec["h"] = self.h[slots]
        rec["c"] = self.c[slots]
        rec["win"], rec["win_ts"] = self.window_rows(slots)
        raw = rec.tobytes()
        size = lay.record_size
        return [raw[i * size : (i + 1) * size] for i in range(len(slots))]

    def load(self, slots: np.ndarray, records: Sequence[bytes | None]) -> dict[str, int]:
        """Fill freshly allocated ``slots`` from stored records (None = never seen).

        Same version and layout: restored as is, in one vectorised decode. Another version:
        counters and window kept, ``(h, c)`` reset and the slot flagged for a rebuild from its
        window (or started fresh when the window's features do not match). Returns counts.
        """
        lay = self.layout
        same = [
            i
            for i, r in enumerate(records)
            if r is not None
            and len(r) == lay.record_size
            and r[4:16] == lay.version.encode()[:12].ljust(12, b"\0")
        ]
        stats = {"restored": len(same), "rebuilt": 0, "fresh": 0, "new": 0}
        if same:
            arr = np.frombuffer(b"".join(records[i] or b"" for i in same), dtype=lay.dtype)
            s = slots[same]
            self.h[s], self.c[s] = arr["h"], arr["c"]
            self.win[s], self.win_ts[s] = arr["win"], arr["win_ts"]
            self.head[s] = 0
            self.fill[s] = arr["fill"]
            self.last_offset[s], self.last_ts[s], self.count[s] = (
                arr["last_offset"],
                arr["last_ts"],
                arr["count"],
            )
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
            if d.win.shape == (lay.window, lay.features):
                self.win[s1], self.win_ts[s1] = d.win, d.win_ts
                self.fill[s1] = d.fill
                self.head[s1] = 0
                self.rebuild[s1] = lay.layers > 0 and d.fill > 0
                self.dirty[s1] = True  # written under the new version at the next commit
                stats["rebuilt"] += 1
            else:
                self.dirty[s1] = True
                stats["fresh"] += 1
        return stats
