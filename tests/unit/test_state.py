"""State records: deltas (fixed part + new ring rows) rebuild exactly the full record."""

from __future__ import annotations

import numpy as np

from stream_lstm.runtime.cache import StateCache
from stream_lstm.stores.record import Layout, apply_delta, decode_any

LAY = Layout("v1v1v1v1v1v1", 2, 4, 5, 3)


def cache(keep: bool) -> StateCache:
    return StateCache(LAY, np.zeros((2, 4)), np.zeros((2, 4)), keep_windows=keep, capacity=4)


def feed(c: StateCache, slots: np.ndarray, n: int, t0: int) -> None:
    """n events per slot, values = time."""
    s = np.repeat(slots, n)
    pos = np.tile(np.arange(n), len(slots))
    counts = np.full(len(s), n)
    ts = t0 + pos + 100 * s
    c.append(s, pos, counts, np.repeat(ts[:, None], 3, 1).astype(np.float32), ts)
    last = np.asarray([int(ts[(s == x)].max()) for x in slots])
    c.last_ts[slots] = last
    c.last_offset[slots] += n
    c.count[slots] += n
    c.dirty[slots] = True


def test_deltas_rebuild_the_window_exactly() -> None:
    lean, full = cache(False), cache(True)
    for c in (lean, full):
        c.allocate(["a", "b", "c"], [0, 0, 1])
    stored: dict[str, bytes] = {}
    rng = np.random.default_rng(0)
    for cycle in range(6):
        for c in (lean, full):
            rng2 = np.random.default_rng(cycle)
            for _ in range(rng2.integers(1, 4)):
                n = int(rng2.integers(1, 8))  # sometimes more than the window in one tick
                feed(c, np.asarray([0, 1, 2]), n, t0=1000 * cycle + int(rng2.integers(0, 10)))
        snap = lean.snapshot(lean.dirty_slots(), everything=cycle % 2 == 0)
        for k, f, r in snap.items():
            stored[k] = apply_delta(stored.get(k), f, r, LAY)
        lean.dirty[:] = False
        for k in ("a", "b", "c"):
            got = decode_any(stored[k])
            assert got is not None
            w, t = full.window_rows(np.asarray([full.index[k]]))
            np.testing.assert_array_equal(got.win, w[0])
            np.testing.assert_array_equal(got.win_ts, t[0])
            assert got.fill == full.fill[full.index[k]]
    assert rng is not None


def test_a_partial_snapshot_keeps_the_other_keys_rows() -> None:
    c = cache(False)
    slots = c.allocate(["a", "b"], [0, 1])
    feed(c, slots, 2, 0)
    rows = lambda snap: [r for _, _, r in snap.items()]  # noqa: E731
    part = c.snapshot(np.asarray([slots[0]]))
    assert len(rows(part)[0]) == 2 * LAY.row_dtype.itemsize
    rest = c.snapshot(np.asarray([slots[1]]))
    assert len(rows(rest)[0]) == 2 * LAY.row_dtype.itemsize, "b's rows were kept for its own write"
    again = c.snapshot(slots)
    assert rows(again) == [b"", b""], "written rows are not sent twice"


def test_evicted_keys_leave_no_rows_behind() -> None:
    c = cache(False)
    slots = c.allocate(["a", "b"], [0, 0])
    feed(c, slots, 3, 0)
    c.evict([slots[0]])
    [b] = c.allocate(["c"], [0])
    assert b == slots[0], "the slot is reused"
    assert [r for _, _, r in c.snapshot(np.asarray([b])).items()] == [b""], (
        "c does not inherit a's rows"
    )
