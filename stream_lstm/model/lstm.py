"""``lstm``: a stacked LSTM with a dense head, stepped from a stored ``(h, c)``.

Parameter names are torch's own (``lstm.weight_ih_l0`` … ``head.weight``), so other runtimes can
load ``model.safetensors`` into a plain ``nn.LSTM`` + ``nn.Linear``; ``h0``/``c0`` exist only
when the initial state is learned.

With ``norm="offset"`` or ``"diff"`` (``levels`` > 0) the inputs start with the ``levels``
scaled feature values of the event, then each feature's change since the key's previous event,
then the calendar encodings; each target that is a feature is forecast as an offset from its
value at the event (``y = level + head(h)``), so a key whose level moves after training keeps
being forecast from where it is. ``offset`` (``read_levels``) lets the LSTM read every column;
``diff`` hides the levels from it, so nothing it computes depends on the level.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

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
        levels: int = 0,
        target_features: list[int] | None = None,
        read_levels: bool = False,
    ) -> None:
        super().__init__()
        self.horizon, self.n_targets, self.n_quantiles = horizon, n_targets, n_quantiles
        self.levels = levels
        self.skip = 0 if read_levels else levels  # leading input columns the LSTM does not read
        tf = target_features if target_features is not None else [-1] * n_targets
        # the level each target's forecast is an offset from: feature index, or none
        self.level_of = [i for i in tf if i >= 0] if levels else []
        self.offset_targets = [j for j, i in enumerate(tf) if i >= 0] if levels else []
        self.lstm = nn.LSTM(
            input_size - self.skip,
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

    def _head(self, top: Tensor, x: Tensor | None) -> Tensor:
        """``top [..., Hd]`` and the same steps' inputs ``x [..., I]`` (needed only when
        forecasts are offsets) → ``[..., H, n_t, n_q]``."""
        y: Tensor = self.head(self.drop(top))  # [..., H * n_t * n_q]
        y = y.unflatten(-1, (self.horizon, self.n_targets, self.n_quantiles))
        if self.offset_targets:  # offsets from the event's own (scaled) target values
            assert x is not None
            level = x[..., self.level_of]  # [..., n_t']
            y = y.clone()
            y[..., self.offset_targets, :] += level[..., None, :, None]
        return y

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run ``T`` steps from ``state`` (default ``h_0, c_0``). See the class docstring."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        out, (h, c) = self.lstm(x[..., self.skip :], state)  # out: [B, T, Hd], after each step
        return self._head(out, x), (h, c)  # [B, T, H, n_t, n_q]

    def forward_packed(self, x: Tensor, lengths: Tensor, state: State) -> tuple[Tensor, State]:
        """Run sequences of different lengths in one call (the stream worker's tick).

        x: ``[B, Tmax, I]`` padded; lengths: ``[B]`` (≥ 1, on CPU); state: ``[L, B, Hd]`` each.
        Returns the forecasts at the valid steps only, ``[sum(lengths), H, n_t, n_q]``, ordered
        key by key then step by step, and each key's state after its own last step.
        """
        if int(lengths.min()) == int(lengths.max()):  # all the same length: no packing needed
            y, st = self.forward(x[:, : int(lengths[0])], state)
            return y.flatten(0, 1), st  # [B * T, H, n_t, n_q]
        # Keys sorted by length, longest first; step t runs the keys that still have an event
        # (a prefix of the sorted batch). In a tick most keys have one event and a few have
        # more, so this is one full-width step and a few narrow ones: ~3x faster on CPU than
        # torch's packed sequences, with the same results.
        order = torch.argsort(lengths, descending=True, stable=True)
        lens = lengths[order]
        widths = [int((lens > t).sum()) for t in range(int(lens[0]))]
        dev = x.device
        xs = x[..., self.skip :].index_select(0, order.to(dev))  # [B, Tmax, I'], sorted
        h = state[0].index_select(1, order.to(dev))  # [L, B, Hd], sorted (a copy)
        c = state[1].index_select(1, order.to(dev))
        tops = []
        for t, b in enumerate(widths):
            hb, cb = (h, c) if b == len(order) else (h[:, :b].contiguous(), c[:, :b].contiguous())
            out, (hb, cb) = self.lstm(xs[:b, t : t + 1], (hb, cb))
            h[:, :b], c[:, :b] = hb, cb
            tops.append(out[:, 0])  # [b, Hd]: step t of the first b sorted keys
        top = torch.cat(tops)  # step-major: step 0 of every key, then step 1 of the first b1, …
        # gather back to key-major order: key at sorted position i, step t → starts[t] + i
        n_len = lengths.numpy()
        starts = np.cumsum([0, *widths[:-1]])  # first row of each step in `top`
        inv = np.empty(len(n_len), np.int64)
        inv[order.numpy()] = np.arange(len(n_len))  # sorted position of each key
        first = np.cumsum(n_len) - n_len  # first output row of each key, key-major
        steps = np.arange(int(n_len.sum())) - np.repeat(first, n_len)  # step of each output row
        pos = torch.from_numpy(starts[steps] + np.repeat(inv, n_len))  # row in `top`
        unsort = torch.from_numpy(inv).to(dev)
        x_rows = None  # the inputs of the output rows, in the same order (for the offsets)
        if self.offset_targets:
            valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, Tmax], key-major
            x_rows = x[valid.to(dev)]
        y = self._head(top[pos.to(dev)], x_rows)
        return y, (h.index_select(1, unsort), c.index_select(1, unsort))
