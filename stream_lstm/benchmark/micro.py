"""Inference microbenchmark: keys per second for one tick of S keys.

``step``: what the worker does per tick for S keys with one event each: gather (h, c) from the
slabs, one LSTM step, the head, scatter (h, c) back (and on CUDA, one transfer each way).
``window``: the same forecasts by recomputing a T-step window per key from h_0 (what a
stateless forecaster does).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch

from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.runtime.inference import TickRunner

SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


def _time(fn: Any, budget_s: float = 1.0, min_reps: int = 3) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < budget_s:
        fn()
        reps += 1
        if reps >= 2000:
            break
    return (time.perf_counter() - t0) / reps


def _step(
    runner: TickRunner,
    x: np.ndarray,
    ones: np.ndarray,
    h_slab: np.ndarray,
    c_slab: np.ndarray,
    slots: np.ndarray,
) -> None:
    """One tick: gather (h, c), one step, head, scatter."""
    _, h, c = runner.run_stateful(x, ones, h_slab[slots], c_slab[slots])
    h_slab[slots], c_slab[slots] = h, c


@torch.inference_mode()
def _window(module: LSTMForecaster, win: torch.Tensor, device: torch.device) -> None:
    """The same forecasts from a T-step window per key, from h_0."""
    out, _ = module.lstm(win.to(device))  # [S, T, Hd]
    module.head(out[:, -1]).cpu()  # the forecast after the last row


def micro_bench(
    input_size: int,
    hidden: int,
    layers: int,
    horizon: int,
    time_step: int,
    sizes: tuple[int, ...] = SIZES,
    threads: tuple[int, ...] = (1, 2),
    window_max: int = 65536,
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    module = LSTMForecaster(input_size, hidden, layers, 0.0, horizon, 1).eval()
    devices = [("cpu", t) for t in threads]
    if torch.cuda.is_available():
        devices.append(("cuda", 0))
    rows = []
    for dev_name, n_threads in devices:
        if dev_name == "cpu":
            torch.set_num_threads(n_threads)
        device = torch.device(dev_name)
        runner = TickRunner(module, device)  # moves the module to the device
        cap = max(sizes)
        h_slab = np.random.default_rng(0).normal(size=(cap, layers, hidden)).astype(np.float32)
        c_slab = np.zeros_like(h_slab)
        for S in sizes:
            slots = np.random.default_rng(S).permutation(cap)[:S]
            x = np.random.default_rng(1).normal(size=(S, 1, input_size)).astype(np.float32)
            ones = np.ones(S, np.int64)

            t_step = _time(partial(_step, runner, x, ones, h_slab, c_slab, slots))
            row: dict[str, Any] = {
                "device": dev_name, "threads": n_threads, "keys": S,
                "step_ms": t_step * 1e3, "step_keys_per_s": S / t_step,
            }  # fmt: skip
            if window_max >= S:
                win = torch.from_numpy(
                    np.random.default_rng(2)
                    .normal(size=(S, time_step, input_size))
                    .astype(np.float32)
                )

                t_win = _time(partial(_window, module, win, device), budget_s=1.0, min_reps=1)
                row.update(
                    window_ms=t_win * 1e3,
                    window_keys_per_s=S / t_win,
                    window_over_step=t_win / t_step,
                )
            rows.append(row)
            if dev_name == "cuda":
                torch.cuda.synchronize()
    return rows


def resident_bench(
    input_size: int,
    hidden: int,
    layers: int,
    horizon: int,
    sizes: tuple[int, ...],
    device: torch.device,
) -> list[dict[str, Any]]:
    """One tick of S keys with the state kept on ``device`` (not what the worker does today:
    its slabs are host memory): the events' inputs in (one copy), gather (h, c) by index, one
    LSTM step, the head, scatter (h, c), the forecasts out (one copy), synchronised. On CUDA
    the tick is also captured as a CUDA graph and replayed (no per-kernel launch cost); the
    faster of the two is reported, ``graph`` says which."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    module = LSTMForecaster(input_size, hidden, layers, 0.0, horizon, 1).eval().to(device)
    cap = max(sizes)
    h_slab = torch.randn(cap, layers, hidden, device=device)
    c_slab = torch.zeros_like(h_slab)
    rows = []
    for S in sizes:
        idx = torch.from_numpy(np.random.default_rng(S).permutation(cap)[:S]).to(device)
        x_host = (
            torch.randn(S, 1, input_size).pin_memory() if cuda else torch.randn(S, 1, input_size)
        )
        x_dev = torch.empty(S, 1, input_size, device=device)
        y_host = torch.empty(S, horizon, pin_memory=cuda)

        @torch.inference_mode()
        def tick(
            idx: torch.Tensor = idx,
            x_host: torch.Tensor = x_host,
            x_dev: torch.Tensor = x_dev,
            y_host: torch.Tensor = y_host,
        ) -> None:
            x_dev.copy_(x_host, non_blocking=True)
            h = h_slab.index_select(0, idx).transpose(0, 1).contiguous()
            c = c_slab.index_select(0, idx).transpose(0, 1).contiguous()
            out, (h2, c2) = module.lstm(x_dev, (h, c))
            y = module.head(out[:, -1])
            h_slab.index_copy_(0, idx, h2.transpose(0, 1))
            c_slab.index_copy_(0, idx, c2.transpose(0, 1))
            y_host.copy_(y, non_blocking=True)

        def eager(tick: Any = tick) -> None:
            tick()
            if cuda:
                torch.cuda.synchronize()

        t = _time(eager, budget_s=0.5)
        row: dict[str, Any] = {"device": device.type, "keys": S, "step_ms": t * 1e3, "graph": False}
        if cuda:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        tick()
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    tick()

                def replay(g: Any = g) -> None:
                    g.replay()
                    torch.cuda.synchronize()

                tg = _time(replay, budget_s=0.5)
                row["eager_ms"], row["graph_ms"] = t * 1e3, tg * 1e3
                if tg < t:
                    row.update(step_ms=tg * 1e3, graph=True)
            except RuntimeError as e:  # a capture that fails: the eager figure stands
                row["graph_error"] = str(e)[:200]
        row["step_keys_per_s"] = S / (row["step_ms"] / 1e3)
        rows.append(row)
    return rows
