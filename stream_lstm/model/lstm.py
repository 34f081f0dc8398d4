"""``lstm``: a stacked LSTM with a dense head, stepped from a stored ``(h, c)``.

Parameter names are torch's own (``lstm.weight_ih_l0`` … ``head.weight``), so other runtimes can
load ``model.safetensors`` into a plain ``nn.LSTM`` + ``nn.Linear``; ``h0``/``c0`` exist only
when the initial state is learned.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

State = tuple[Tensor, Tensor]


class LSTMForecaster(nn.Module):
    """Stacked LSTM over per-step inputs; after each step the head emits ``H`` future steps.

    Shapes (batch first):
        x:       ``[B, T, I]``  B keys, T steps, I = features + calendar encodings
        state:   ``(h, c)``, each ``[L, B, Hd]``  L layers, Hd hidden size
        returns: ``y [B, T, H, n_t, n_q]`` and the state after the last step
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        horizon: int,
        n_targets: int,
        n_quantiles: int = 1,
        learned_init: bool = False,
    ) -> None:
        super().__init__()
        self.horizon, self.n_targets, self.n_quantiles = horizon, n_targets, n_quantiles
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, horizon * n_targets * n_quantiles)
        self.h0: nn.Parameter | None = None
        self.c0: nn.Parameter | None = None
        if learned_init:
            self.h0 = nn.Parameter(torch.zeros(num_layers, 1, hidden_size))
            self.c0 = nn.Parameter(torch.zeros(num_layers, 1, hidden_size))

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """``h_0, c_0``: zeros, or the learned vectors repeated over the batch. ``[L, B, Hd]``."""
        L, Hd = self.lstm.num_layers, self.lstm.hidden_size
        if self.h0 is not None and self.c0 is not None:
            return (
                self.h0.expand(L, batch, Hd).contiguous().to(device),
                self.c0.expand(L, batch, Hd).contiguous().to(device),
            )
        zeros = torch.zeros(L, batch, Hd, device=device)
        return zeros, zeros.clone()

    def _head(self, top: Tensor) -> Tensor:
        """``[..., Hd]`` → ``[..., H, n_t, n_q]``."""
        y: Tensor = self.head(self.drop(top))  # [..., H * n_t * n_q]
        return y.unflatten(-1, (self.horizon, self.n_targets, self.n_quantiles))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run ``T`` steps from ``state`` (default ``h_0, c_0``). See the class docstring."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        out, (h, c) = self.lstm(x, state)  # out: [B, T, Hd], top layer after each step
        return self._head(out), (h, c)  # [B, T, H, n_t, n_q]

    def forward_packed(self, x: Tensor, lengths: Tensor, state: State) -> tuple[Tensor, State]:
        """Run sequences of different lengths in one call (the stream worker's tick).

        x: ``[B, Tmax, I]`` padded; lengths: ``[B]`` (≥ 1, on CPU); state: ``[L, B, Hd]`` each.
        Returns the forecasts at the valid steps only, ``[sum(lengths), H, n_t, n_q]``, ordered
        key by key then step by step, and each key's state after its own last step.
        """
        if int(lengths.min()) == int(lengths.max()):  # all the same length: no packing needed
            y, st = self.forward(x[:, : int(lengths[0])], state)
            return y.flatten(0, 1), st  # [B * T, H, n_t, n_q]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.lstm(packed, state)  # h, c: [L, B, Hd] in the original key order
        padded, _ = pad_packed_sequence(out, batch_first=True)  # [B, Tmax', Hd]
        valid = torch.arange(padded.shape[1], device=lengths.device)[None, :] < lengths[:, None]
        top = padded[valid.to(padded.device)]  # [sum(lengths), Hd], key-major order
        return self._head(top), (h, c)
