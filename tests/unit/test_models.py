"""Both model kinds: shapes, stepping from stored state equals one whole-sequence call."""

from __future__ import annotations

import pytest
import torch

from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.lstm import LSTMForecaster


@pytest.mark.parametrize("learned_init", [False, True])
def test_lstm_step_by_step_equals_whole_sequence(learned_init: bool) -> None:
    torch.manual_seed(0)
    m = LSTMForecaster(
        5, 16, 2, 0.2, horizon=4, n_targets=2, n_quantiles=3, learned_init=learned_init
    ).eval()
    if learned_init:
        with torch.no_grad():
            m.h0.normal_()  # type: ignore[union-attr]
    x = torch.randn(3, 30, 5)
    with torch.no_grad():
        y, (h, c) = m(x)
        assert y.shape == (3, 30, 4, 2, 3)
        state = m.init_state(3)
        steps = []
        for t in range(30):
            yt, state = m(x[:, t : t + 1], state)  # one event at a time from the stored (h, c)
            steps.append(yt)
        torch.testing.assert_close(torch.cat(steps, 1), y, atol=1e-5, rtol=0)
        torch.testing.assert_close(state[0], h, atol=1e-5, rtol=0)
        torch.testing.assert_close(state[1], c, atol=1e-5, rtol=0)


def test_lstm_packed_ticks_equal_separate_runs() -> None:
    torch.manual_seed(1)
    m = LSTMForecaster(4, 8, 1, 0.0, horizon=2, n_targets=1).eval()
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        s0 = (torch.randn(1, 3, 8), torch.randn(1, 3, 8))  # arbitrary stored states
        y, (h, _) = m.forward_packed(x, lengths, s0)
        assert y.shape == (12, 2, 1, 1)
        offset = 0
        for k, n in enumerate(lengths.tolist()):
            yk, (hk, _) = m(x[k : k + 1, :n], (s0[0][:, k : k + 1], s0[1][:, k : k + 1]))
            torch.testing.assert_close(y[offset : offset + n], yk[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(h[:, k], hk[:, 0], atol=1e-5, rtol=0)
            offset += n


def test_cnn_lstm_attn_run_from_context_equals_whole_sequence() -> None:
    torch.manual_seed(2)
    T = 8
    m = CNNLSTMAttention(5, T, 6, 3, 8, 16, 2, 0.1, horizon=4, n_targets=1).eval()
    x = torch.randn(2, 25, 5)
    with torch.no_grad():
        ctx0 = m.init_context(2, 5)
        y, ctx = m.run(x, ctx0)
        assert y.shape == (2, 25, 4, 1, 1)
        cc, steps = ctx0, []
        for t in range(25):
            yt, cc = m.run(x[:, t : t + 1], cc)
            steps.append(yt)
        torch.testing.assert_close(torch.cat(steps, 1), y, atol=1e-5, rtol=0)
        torch.testing.assert_close(cc, ctx, atol=0, rtol=0)
        # the forecast after row t is the model applied to the window ending at t
        seq = torch.cat([ctx0, x], 1)
        direct = m(seq[:, 10 : 10 + T])
        torch.testing.assert_close(y[:, 10], direct, atol=1e-5, rtol=0)  # x row 10 ends it
