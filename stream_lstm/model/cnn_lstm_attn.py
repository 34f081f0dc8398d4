"""``cnn-lstm-attn``: Conv1d feature extraction → temporal attention → LSTM → dense head.

A windowed model: each forecast reads the last ``T`` input rows. Its streaming "state" is the
context of the last ``T - 1`` rows, so :meth:`CNNLSTMAttention.run` continues a sequence from a
stored context exactly as a whole-sequence call would.

With ``norm="revin"`` (``levels`` > 0: the first ``levels`` input columns are the scaled
features) each window's features are normalised by that window's own mean and spread (and a
learned per-feature affine map) before the network sees them, and the forecasts of targets that
are features are mapped back with the same statistics: reversible instance normalisation (Kim
et al., ICLR 2022). The network never sees a level, so a level that moves after training is
followed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REVIN_EPS = 1e-5


class CNNLSTMAttention(nn.Module):
    """Windows in, one multi-step forecast per window out.

    Shapes (batch first):
        windows: ``[B, T, I]``
        conv:    ``[B, C, T]`` causal Conv1d (kernel k, left padding k - 1), ReLU
        attn:    ``a [B, T, 1]`` softmax over time of ``v·tanh(W z_t)``; ``z_t ← T · a_t · z_t``
        lstm:    ``[B, T, Hd]``; the last step's hidden state feeds the head
        returns: ``[B, H, n_t, n_q]``
    """

    def __init__(
        self,
        input_size: int,
        time_step: int,
        conv_channels: int,
        conv_kernel: int,
        attention_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        horizon: int,
        n_targets: int,
        n_quantiles: int = 1,
        levels: int = 0,
        target_features: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.time_step = time_step
        self.levels = levels
        tf = target_features if target_features is not None else [-1] * n_targets
        self.level_of = [i for i in tf if i >= 0] if levels else []
        self.offset_targets = [j for j, i in enumerate(tf) if i >= 0] if levels else []
        self.revin_weight: nn.Parameter | None = None
        self.revin_bias: nn.Parameter | None = None
        if levels:
            self.revin_weight = nn.Parameter(torch.ones(levels))
            self.revin_bias = nn.Parameter(torch.zeros(levels))
        self.horizon, self.n_targets, self.n_quantiles = horizon, n_targets, n_quantiles
        self.kernel = conv_kernel
        self.conv = nn.Conv1d(input_size, conv_channels, conv_kernel)
        self.attn_proj = nn.Linear(conv_channels, attention_size)
        self.attn_score = nn.Linear(attention_size, 1, bias=False)
        self.lstm = nn.LSTM(
            conv_channels,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, horizon * n_targets * n_quantiles)

    def forward(self, windows: Tensor) -> Tensor:
        """``[B, T, I]`` → ``[B, H, n_t, n_q]``."""
        if self.revin_weight is not None and self.revin_bias is not None:
            feats = windows[..., : self.levels]  # [B, T, F]
            mu = feats.mean(1, keepdim=True)  # [B, 1, F]
            sd = torch.sqrt(feats.var(1, keepdim=True, unbiased=False) + REVIN_EPS)
            normed = (feats - mu) / sd * self.revin_weight + self.revin_bias
            windows = torch.cat([normed, windows[..., self.levels :]], dim=-1)
        z = F.pad(windows.transpose(1, 2), (self.kernel - 1, 0))  # [B, I, T + k - 1]
        z = F.relu(self.conv(z)).transpose(1, 2)  # [B, T, C]
        score = self.attn_score(torch.tanh(self.attn_proj(z)))  # [B, T, 1]
        a = torch.softmax(score, dim=1)  # [B, T, 1], sums to 1 over time
        z = z * a * z.shape[1]  # re-weighted steps, mean weight 1  [B, T, C]
        out, _ = self.lstm(z)  # [B, T, Hd]
        y: Tensor = self.head(self.drop(out[:, -1]))  # [B, H * n_t * n_q]
        y = y.unflatten(-1, (self.horizon, self.n_targets, self.n_quantiles))
        if self.offset_targets and self.revin_weight is not None and self.revin_bias is not None:
            i, j = self.level_of, self.offset_targets
            w = self.revin_weight[i][:, None]  # [n_t', 1]
            b = self.revin_bias[i][:, None]
            back = (y[:, :, j] - b) / (w + REVIN_EPS) * sd[:, 0, i][:, None, :, None]
            y = y.clone()
            y[:, :, j] = back + mu[:, 0, i][:, None, :, None]
        return y

    def init_context(
        self, batch: int, input_size: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The context before a key's first event: ``T - 1`` zero rows (the scaled mean)."""
        return torch.zeros(batch, self.time_step - 1, input_size, device=device)

    def run(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Forecast after each of ``n`` new rows, continuing from ``context``.

        x: ``[B, n, I]``; context: ``[B, T - 1, I]``.
        Returns ``y [B, n, H, n_t, n_q]`` and the new context ``[B, T - 1, I]``.
        """
        B, n, _ = x.shape
        T = self.time_step
        seq = torch.cat([context, x], dim=1)  # [B, T - 1 + n, I]
        win = seq.unfold(1, T, 1).transpose(2, 3)  # [B, n, T, I]
        y = self.forward(win.reshape(B * n, T, -1))  # [B * n, H, n_t, n_q]
        return y.unflatten(0, (B, n)), seq[:, seq.shape[1] - (T - 1) :]
