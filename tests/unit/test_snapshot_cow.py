"""Copy-on-write snapshots: a snapshot holds each key's state of the instant it was taken, however
the hot loop changes the rows before the writer copies them, on any thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stream_lstm.runtime.cache import StateCache
from stream_lstm.stores.record import Layout, Snapshot, apply_delta, decode_any

# scored: the score block is copied on write too
LAY = Layout("cowcowcowcow", 2, 4, 3, 2, targets=1, score_ring=3, steps=2, stats=1)


def cache(capacity: int = 4) -> StateCache:
    return StateCache(
        LAY, np.zeros((2, 4)), np.zeros((2, 4)), keep_windows=False, capacity=capacity
    )


def tick(c: StateCache, slots: np.ndarray, value: float) -> None:
    """What a tick does to the rows (engine._apply, the scorer): preserve, then write."""
    c.preserve(slots)
    c.h[slots] = value
    c.c[slots] = -value
    assert c.score is not None
    c.score["ewm_mean"][slots] = value
    c.last_offset[slots] += 1
    c.dirty[slots] = True


def stored(snap: object) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for k, f, r in snap.items():  # type: ignore[attr-defined]
        rec = apply_delta(None, f, r, LAY)
        d = decode_any(rec)
        assert d is not None
        score = np.frombuffer(f, LAY.fixed_dtype)[0]["score"]["ewm_mean"][0]
        assert (d.h == d.h.flat[0]).all() and (d.c == d.c.flat[0]).all()
        out[k] = (float(d.h.flat[0]), float(d.c.flat[0]), float(score), d.last_offset)
    return out


def test_rows_changed_after_the_snapshot_are_written_as_they_were() -> None:
    c = cache()
    slots = c.allocate(["a", "b", "c"], [0, 0, 0])
    tick(c, slots, 1.0)
    snap = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    assert (c.owed[slots] > 0).all(), "the rows are left in the slabs, owed to the snapshot"
    tick(c, slots[:2], 2.0)  # a and b change before the writer copies them
    assert not c.owed[slots[:2]].any() and c.owed[slots[2]] > 0
    tick(c, slots[:1], 3.0)
    assert stored(snap) == {
        "a": (1.0, -1.0, 1.0, 0),
        "b": (1.0, -1.0, 1.0, 0),
        "c": (1.0, -1.0, 1.0, 0),
    }
    assert not c.owed.any() and not c._open
    again = c.snapshot(c.dirty_slots())
    assert stored(again) == {"a": (3.0, -3.0, 3.0, 2), "b": (2.0, -2.0, 2.0, 1)}


def test_two_open_snapshots_and_a_reused_slot() -> None:
    c = cache()
    a, b = c.allocate(["a", "b"], [0, 0])
    tick(c, np.asarray([a, b]), 1.0)
    first = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    tick(c, np.asarray([a]), 2.0)
    second = c.snapshot(c.dirty_slots())  # a again, while the first is not written yet
    c.dirty[:] = False
    c.evict([b])
    [d] = c.allocate(["d"], [0])  # b's slot reused: its old row is owed to the first snapshot
    assert d == b
    tick(c, np.asarray([a, d]), 5.0)
    assert stored(second) == {"a": (2.0, -2.0, 2.0, 1)}
    assert stored(first) == {"a": (1.0, -1.0, 1.0, 0), "b": (1.0, -1.0, 1.0, 0)}


def test_the_cache_grows_while_rows_are_owed() -> None:
    c = cache(capacity=2)
    slots = c.allocate(["a", "b"], [0, 0])
    tick(c, slots, 1.0)
    snap = c.snapshot(c.dirty_slots())
    c.allocate([f"k{i}" for i in range(50)], [0] * 50)  # the slabs are reallocated
    tick(c, slots, 9.0)
    assert stored(snap) == {"a": (1.0, -1.0, 1.0, 0), "b": (1.0, -1.0, 1.0, 0)}


def test_snapshots_left_unwritten_are_closed_and_refuse_a_late_write() -> None:
    c = cache()
    [a] = c.allocate(["a"], [0])
    snaps = []
    for i in range(StateCache.MAX_OPEN + 1):
        tick(c, np.asarray([a]), float(i))
        snaps.append(c.snapshot(c.dirty_slots()))
    assert len(c._open) == StateCache.MAX_OPEN
    with pytest.raises(RuntimeError, match="closed before it was written"):
        snaps[0].complete()
    assert stored(snaps[-1]) == {
        "a": (
            float(StateCache.MAX_OPEN),
            -float(StateCache.MAX_OPEN),
            float(StateCache.MAX_OPEN),
            StateCache.MAX_OPEN,
        )
    }


def test_the_writer_thread_copies_while_the_hot_loop_ticks() -> None:
    """Many keys, small copy chunks, a writer thread completing snapshots while ticks change
    rows: every snapshot holds exactly the state of its instant."""
    n = 3000
    c = cache(capacity=n)
    c.COPY_CHUNK = 64
    slots = c.allocate([f"k{i}" for i in range(n)], [0] * n)
    rng = np.random.default_rng(0)
    expected: list[dict[str, float]] = []
    snaps = []
    for round_ in range(6):
        for _ in range(20):
            sel = np.unique(rng.choice(slots, 200))
            tick(c, sel, float(round_ * 100 + _))
        dirty = c.dirty_slots()
        expected.append({f"k{s}": float(c.h[s, 0, 0]) for s in dirty.tolist()})
        snaps.append(c.snapshot(dirty))
        c.dirty[:] = False
    got: list[dict[str, float]] = []
    done = threading.Event()

    def writer() -> None:
        for s in snaps:
            got.append({k: v[0] for k, v in stored(s).items()})
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():  # the hot loop keeps changing rows meanwhile
        tick(c, np.unique(rng.choice(slots, 200)), -1.0)
    t.join()
    assert got == expected


def forty_keys_snapshotted() -> tuple[StateCache, np.ndarray, Snapshot]:
    """A cache of 40 keys, all ticked once, and the snapshot of them (not released yet)."""
    c = cache(capacity=64)
    slots = c.allocate([f"k{i}" for i in range(40)], [0] * 40)
    tick(c, slots, 1.0)
    first = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    return c, slots, first


def test_a_written_snapshot_lends_its_buffer_to_the_next() -> None:
    c, slots, first = forty_keys_snapshotted()
    before = stored(first)
    buf = first.fixed.base
    first.release()
    assert stored(first) == before, "its bytes stay readable"
    with pytest.raises(RuntimeError, match="released"):
        _ = first.fixed
    tick(c, slots[:30], 2.0)
    second = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    assert second.fixed.base is buf, "the same pages, not a new buffer"
    assert stored(second) == {f"k{i}": (2.0, -2.0, 2.0, 1) for i in range(30)}
    second.release()
    tick(c, slots[:2], 3.0)
    small = c.snapshot(c.dirty_slots())
    assert stored(small) == {"k0": (3.0, -3.0, 3.0, 2), "k1": (3.0, -3.0, 3.0, 2)}


def test_an_idle_cycle_lets_the_spare_buffer_go() -> None:
    """A worker with nothing dirty does not keep a buffer the size of its last write."""
    c, slots, first = forty_keys_snapshotted()
    buf = first.fixed.base
    first.release()
    idle = c.snapshot(c.dirty_slots())  # the commit cycle's store check: no key dirty
    assert len(idle.keys) == 0
    tick(c, slots[:30], 2.0)
    second = c.snapshot(c.dirty_slots())
    assert second.fixed.base is not buf, "the idle cycle released the spare"
    assert stored(second) == {f"k{i}": (2.0, -2.0, 2.0, 1) for i in range(30)}
