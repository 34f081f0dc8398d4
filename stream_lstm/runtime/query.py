"""The latest forecast of a key, computed from its stored state (an interactive query).

The worker does not store forecasts: a key's state record holds what the model needs to
compute the forecast it published after the key's last applied event. This module computes
it again, as the ``Engine`` did:

- stateful ``lstm`` with the record's own model version: the output head on the top layer of
  the stored ``h`` (plus, for ``norm="offset"``/``"diff"`` models, the level of the last event,
  the newest row of the stored window) — no recurrent step is run;
- a windowed model (``cnn-lstm-attn``): the model on the stored window (the last
  ``time_step`` events, zero context before a key's first ones), exactly the window of the
  last event's forecast;
- a record of another model version (the worker has not seen this key since a switch): the
  stored window replayed from the initial state, what the worker does at the key's next event
  (``rebuilt`` is True: this forecast was not published, it is the one the current model
  gives from the stored events). A record holds its features' values, not their names: as for
  the worker, the other version must have the same features (a hot switch checks it; a query
  cannot, and says which version wrote the state).

The answer is the state as of the last commit cycle the worker completed (about a second
behind the stream), in the output topic's message format (:class:`ForecastOut`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stream_lstm.data.names import format_interval
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.runtime import Forecaster, previous_rows
from stream_lstm.runtime.events import ForecastEncoder, ForecastOut, decode_forecast
from stream_lstm.stores.record import decode_any


@dataclass(frozen=True)
class Latest:
    forecast: ForecastOut
    rebuilt: bool  # computed by replaying the stored window (the record is another version's)
    events: int  # events the key has applied (the record's count)
    state_version: str  # the model version that wrote the record (its first 12 characters)


def _tag(version: str) -> str:
    return version.encode()[:12].decode(errors="replace")


@torch.inference_mode()
def latest_forecast(fc: Forecaster, key: str, record: bytes | None) -> Latest | None:
    """The forecast after the key's last applied event, from its stored ``record``; None when
    there is none (no record, an unreadable one, or no event applied yet)."""
    if record is None:
        return None
    d = decode_any(record)
    if d is None or d.fill <= 0 or d.last_ts is None:
        return None
    cfg = fc.config
    if d.win.shape[1] != len(cfg.features):
        return None  # another model's columns: nothing this model can compute from
    fill = min(d.fill, d.win.shape[0])
    v, t = d.win[d.win.shape[0] - fill :], d.win_ts[d.win.shape[0] - fill :]  # oldest first
    keys = [key] * fill
    same = d.version == _tag(fc.version)
    m = fc.module
    if same and isinstance(m, LSTMForecaster) and d.h.size:
        prev = previous_rows(v)[-1:]
        x = fc.inputs(v[-1:], t[-1:], keys[-1:], prev)  # the last event's inputs [1, I]
        top = torch.from_numpy(np.ascontiguousarray(d.h[-1:], np.float32)).to(fc.device)
        y = m._head(top, torch.from_numpy(x).to(fc.device)).float().cpu().numpy()
    else:
        x = fc.inputs(v, t, keys, previous_rows(v))
        y = fc.run_sequence(x)[-1:]  # [1, H, n_t, n_q]
    vals = fc.to_original(y, [key])  # [1, H, n_t, n_q]
    point = vals[..., cfg.point_index].transpose(0, 2, 1)  # [1, n_t, H]
    quant = vals.transpose(0, 2, 3, 1) if cfg.quantiles else None
    enc = ForecastEncoder(
        fc.version,
        format_interval(cfg.interval_ms),
        cfg.interval_ms,
        list(cfg.targets),
        list(cfg.quantiles),
    )
    (msg,) = enc.encode([key], [int(d.last_ts)], point, quant, [d.partition], [d.last_offset])
    return Latest(decode_forecast(msg), rebuilt=not same, events=d.count, state_version=d.version)
