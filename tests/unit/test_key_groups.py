"""The engine groups a tick's events by key with numpy alone (the worker does not import
pandas): the same key ids, running maxima and forward fills as pandas gives, on random ticks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from stream_lstm.runtime.engine import _factorize, _forward_fill, _running_max


def ticks(seed: int, n: int = 2000):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        size, groups = int(rng.integers(1, 60)), int(rng.integers(1, 8))
        codes = rng.integers(0, groups, size)
        if rng.random() < 0.5:  # the engine passes events grouped by key, too
            codes = np.sort(codes, kind="stable")
        yield rng, size, codes


def test_key_ids_and_unique_keys_in_first_seen_order() -> None:
    for rng, size, _ in ticks(0):
        keys = [f"k{c}" for c in rng.integers(0, 9, size)]
        codes, uniq = _factorize(keys)
        want_codes, want_uniq = pd.factorize(np.asarray(keys, dtype=object))
        assert codes.tolist() == want_codes.tolist()
        assert uniq.tolist() == want_uniq.tolist()
    codes, uniq = _factorize([])
    assert codes.shape == (0,) and uniq.shape == (0,)


def test_running_max_per_key_of_times_and_flags() -> None:
    for rng, size, codes in ticks(1):
        ts = rng.integers(-5, 5, size) * 10 ** int(rng.integers(0, 12))
        want = pd.Series(ts).groupby(codes).cummax().to_numpy()
        assert _running_max(ts, codes).tolist() == want.tolist()
        flags = rng.random(size) < 0.3
        want_b = pd.Series(flags).groupby(codes).cummax().to_numpy(bool)
        assert _running_max(flags, codes).tolist() == want_b.tolist()


def test_forward_fill_per_key_and_column() -> None:
    for rng, size, codes in ticks(2):
        vals = rng.normal(size=(size, int(rng.integers(1, 4)))).astype(np.float32)
        vals[rng.random(vals.shape) < 0.4] = np.nan
        got = _forward_fill(vals, codes)
        want = pd.DataFrame(vals).groupby(codes, sort=False).ffill().to_numpy(np.float32)
        assert got.dtype == np.float32
        assert np.array_equal(got, want, equal_nan=True)


def test_the_worker_does_not_import_pandas() -> None:
    """pandas costs the worker ~70 MiB of RSS and ~2 s of start-up; only the offline commands
    (train, predict, evaluate, replay from a file) and a model's calendar in a time zone other
    than UTC (the default) need it."""
    code = (  # the CLI as `stream-lstm worker` builds it, then what the worker imports to run
        "import contextlib, io, sys\n"
        "from stream_lstm import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['worker', '--help'])\n"
        "import stream_lstm.commands.worker, stream_lstm.drivers.confluent\n"
        "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
