"""One model call per tick, on CPU or CUDA, with one transfer each way on CUDA.

On CUDA the tick's inputs and initial states are packed into one pinned host buffer and copied
to the device in one transfer; outputs and final states come back concatenated in one transfer
into a pinned buffer. On CPU the numpy arrays are used in place (``torch.from_numpy``).
"""

from __future__ import annotations

import numpy as np
import torch

from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.lstm import LSTMForecaster


class TickRunner:
    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = device
        self.cuda = device.type == "cuda"
        self._pin_in = torch.empty(0, pin_memory=self.cuda)
        self._pin_out = torch.empty(0, pin_memory=self.cuda)

    def _staging(self, name: str, n: int) -> torch.Tensor:
        buf: torch.Tensor = getattr(self, name)
        if buf.numel() < n:
            buf = torch.empty(max(n, 2 * buf.numel()), dtype=torch.float32, pin_memory=True)
            setattr(self, name, buf)
        return buf[:n]

    def _to_device(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """Float32 arrays → device tensors, through one pinned buffer and one copy on CUDA."""
        if not self.cuda:
            return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
        sizes = [a.size for a in arrays]
        host = self._staging("_pin_in", sum(sizes))
        flat = host.numpy()
        at = 0
        for a, n in zip(arrays, sizes, strict=True):
            flat[at : at + n] = a.reshape(-1)
            at += n
        dev = host.to(self.device, non_blocking=True)
        out, at = [], 0
        for a, n in zip(arrays, sizes, strict=True):
            out.append(dev[at : at + n].view(a.shape))
            at += n
        return out

    def _to_host(self, *tensors: torch.Tensor) -> list[np.ndarray]:
        """Device tensors → numpy, one concatenated copy into a pinned buffer on CUDA."""
        if not self.cuda:
            return [t.numpy() for t in tensors]
        flat = torch.cat([t.reshape(-1) for t in tensors])
        host = self._staging("_pin_out", flat.numel())
        host.copy_(flat, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        out, at = [], 0
        arr = host.numpy()
        for t in tensors:
            n = t.numel()
            out.append(arr[at : at + n].reshape(tuple(t.shape)).copy())
            at += n
        return out

    @torch.inference_mode()
    def run_stateful(
        self, x: np.ndarray, lengths: np.ndarray, h0: np.ndarray, c0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x ``[K, Tmax, I]`` padded, lengths ``[K]``, h0/c0 ``[K, L, Hd]`` →
        y ``[sum(lengths), H, n_t, n_q]`` (key-major), h/c ``[K, L, Hd]``."""
        m = self.module
        assert isinstance(m, LSTMForecaster)
        xt, ht, ct = self._to_device(x, h0, c0)
        state = (ht.transpose(0, 1).contiguous(), ct.transpose(0, 1).contiguous())  # [L, K, Hd]
        y, (h, c) = m.forward_packed(xt, torch.from_numpy(lengths.astype(np.int64)), state)
        y_np, h_np, c_np = self._to_host(y, h.transpose(0, 1), c.transpose(0, 1))
        return y_np, h_np, c_np

    @torch.inference_mode()
    def run_windows(self, windows: np.ndarray) -> np.ndarray:
        """windows ``[N, T, I]`` → y ``[N, H, n_t, n_q]``."""
        m = self.module
        assert isinstance(m, CNNLSTMAttention)
        (wt,) = self._to_device(windows)
        (y,) = self._to_host(m(wt))
        return y
