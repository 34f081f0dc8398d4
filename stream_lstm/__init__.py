"""stream-lstm: a Kafka-driven, real-time LSTM forecaster with per-key state in Redis.

The public Python API (documented in docs/api.md)::

    import stream_lstm as sl

    model = sl.fit(df, time="when", targets="load", key="meter")   # → sl.Model
    model.predict(df); model.evaluate(df); model.save("models/m")
    model = sl.load("models/m")
    online = model.online()            # sl.OnlineForecaster: events in, forecasts out
    online.update("m1", "2024-01-01T00:00:00Z", {"load": 3.2})     # → sl.Forecast

The names are imported on first use, so ``import stream_lstm`` (and the CLI's ``--help``)
stays fast: torch is loaded only when a model is.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "EventRejectedError",
    "Forecast",
    "Model",
    "OnlineForecaster",
    "Rejected",
    "StateError",
    "StreamLSTMError",
    "__version__",
    "fit",
    "load",
]

_FROM = {
    "fit": "stream_lstm.api",
    "load": "stream_lstm.api",
    "Model": "stream_lstm.api",
    "OnlineForecaster": "stream_lstm.api",
    "Forecast": "stream_lstm.api",
    "Rejected": "stream_lstm.api",
    "EventRejectedError": "stream_lstm.api",
    "StreamLSTMError": "stream_lstm.errors",
    "ConfigError": "stream_lstm.errors",
    "DataError": "stream_lstm.errors",
    "StateError": "stream_lstm.errors",
}

if TYPE_CHECKING:
    from stream_lstm.api import (
        EventRejectedError,
        Forecast,
        Model,
        OnlineForecaster,
        Rejected,
        fit,
        load,
    )
    from stream_lstm.errors import ConfigError, DataError, StateError, StreamLSTMError


def __getattr__(name: str) -> Any:
    if name in _FROM:
        value = getattr(import_module(_FROM[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stream_lstm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
