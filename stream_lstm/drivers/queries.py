"""Interactive queries on the worker's health server: ``GET /latest?key=K`` (``key`` may repeat).

The answer is computed from the state store (:func:`stream_lstm.runtime.query.latest_forecast`):
the forecast published after the key's last event whose state was written — as of the last
commit cycle, about a second behind the stream. Any worker of the group answers for any key
(the state is shared), not only the one that owns the key's partition.

The query reads through its own Redis connection (:meth:`RedisStateStore.peek`, read-only), so
it never shares a connection or bookkeeping with the worker's loop.

Responses (JSON): 200 ``{"forecasts": [...], "missing": [...]}`` with one forecast message per
key found (the output topic's format, plus ``rebuilt``); 404 when none of the keys has state;
400 without a key; 503 when Redis cannot be read.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from stream_lstm.errors import StreamLSTMError
from stream_lstm.runtime.engine import Engine, layout_for
from stream_lstm.runtime.query import latest_forecast
from stream_lstm.stores.redis import RedisStateStore

if TYPE_CHECKING:
    from stream_lstm.config import WorkerSettings

MAX_KEYS = 1000  # keys per query
JSON = "application/json"


def latest_json(fc: Any, keys: list[str], records: list[bytes | None]) -> dict[str, Any]:
    """``{"forecasts": [...], "missing": [...]}`` for ``keys`` and their stored records."""
    found, missing = [], []
    for key, rec in zip(keys, records, strict=True):
        got = latest_forecast(fc, key, rec)
        if got is None:
            missing.append(key)
            continue
        msg = msgspec.to_builtins(got.forecast)
        msg["rebuilt"] = got.rebuilt
        msg["events"] = got.events
        msg["state_version"] = got.state_version
        found.append(msg)
    return {"forecasts": found, "missing": missing}


class LatestQuery:
    """``/latest``: each ``key`` parameter's latest forecast under the model the worker runs."""

    def __init__(self, s: WorkerSettings, engine: Engine) -> None:
        self.s, self.engine = s, engine
        self._lock = threading.Lock()
        self._reader: RedisStateStore | None = None

    def _store(self) -> RedisStateStore:
        fc = self.engine.forecaster
        if self._reader is None or self._reader.version != fc.version:
            if self._reader is not None:
                self._reader.close()
            s = self.s
            self._reader = RedisStateStore(
                s.redis.get_secret_value(), s.state_namespace, layout_for(fc, s.scoring())
            )
        return self._reader

    def __call__(self, params: dict[str, list[str]]) -> tuple[int, bytes, str]:
        keys = list(dict.fromkeys(params.get("key", [])))
        if not keys:
            return 400, orjson.dumps({"error": "give the key: /latest?key=K (may repeat)"}), JSON
        if len(keys) > MAX_KEYS:
            return 400, orjson.dumps({"error": f"at most {MAX_KEYS} keys per query"}), JSON
        with self._lock:
            fc = self.engine.forecaster
            try:
                records = self._store().peek(keys)
            except StreamLSTMError as e:
                return 503, orjson.dumps({"error": str(e)}), JSON
        out = latest_json(fc, keys, records)
        return (200 if out["forecasts"] else 404), orjson.dumps(out), JSON
