"""Hot model reload: the workers switch to a new model version found at ``--model`` without a
restart, between ticks, after a whole commit cycle (see ``Engine.switch_model``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from stream_lstm.config import WorkerSettings
from stream_lstm.errors import ConfigError, ModelError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.commit import Offsets
from stream_lstm.runtime.engine import Engine
from stream_lstm.runtime.scoring import resolve_steps

log = logging.getLogger(__name__)


class ModelReloader:
    """Looks at the artifact's VERSION every ``model_poll_s`` and switches the engine."""

    def __init__(self, engine: Engine, device: torch.device) -> None:
        self.engine, self.device = engine, device
        self._next_poll = time.monotonic()
        self._refused = ""  # a version that does not fit these settings: not retried

    def maybe_reload(
        self, s: WorkerSettings, metrics: WorkerMetrics, commit: Callable[[Offsets], None]
    ) -> bool:
        """Every ``model_poll_s``: if the artifact at ``--model`` has a new VERSION, load it and
        switch the engine to it (between ticks; the driver holds the engine). An artifact that
        does not load (half copied, corrupt) or does not fit (other features, a horizon the
        score steps exceed) is logged, counted, and the current model stays."""
        now = time.monotonic()
        if s.model_poll_s <= 0 or now < self._next_poll:
            return False
        self._next_poll = now + s.model_poll_s
        try:
            version = (s.model / "VERSION").read_text().strip()
        except OSError:
            version = ""
        if version in (self.engine.forecaster.version, self._refused):
            return False
        try:
            new = Forecaster(load_artifact(s.model), self.device)
            check_model(s, new, self.engine.forecaster)
        except (ModelError, ConfigError) as e:
            self._refused = version if isinstance(e, ConfigError) else ""
            metrics.model_reload_failures.inc()
            log.error("model at %s not switched to: %s (keeping %s)", s.model, e,
                      self.engine.forecaster.version)  # fmt: skip
            return False
        old = self.engine.forecaster.version
        t0 = time.perf_counter()
        dropped = self.engine.switch_model(new, commit)
        metrics.model_switches.inc()
        log.info(
            "model switched %s → %s (%s, H=%d) in %.2f s: %d cached keys dropped; their states "
            "load again and rebuild from their stored windows",
            old, new.version, new.config.kind, new.config.horizon, time.perf_counter() - t0,
            dropped,
        )  # fmt: skip
        return True


def check_model(s: WorkerSettings, fc: Forecaster, current: Forecaster | None = None) -> None:
    """The model fits the settings (and, for a hot switch, the features the producers send)."""
    cfg = fc.config
    if s.features is not None and list(s.features) != list(cfg.features):
        raise ConfigError(
            f"--features {','.join(s.features)} does not match the model's features "
            f"{','.join(cfg.features)} (model {fc.version} in {s.model}); "
            "deploy a model trained on these features, or fix the setting"
        )
    if current is not None and list(cfg.features) != list(current.config.features):
        raise ConfigError(
            f"model {fc.version} reads features {','.join(cfg.features)}, the running model "
            f"{current.version} reads {','.join(current.config.features)}: producers send the "
            "latter, so a hot switch would dead-letter every event; restart the workers with "
            "the new model once producers send the new features"
        )
    try:
        resolve_steps(s.score_steps, cfg.horizon)
    except ValueError as e:
        raise ConfigError(f"--score-steps: {e} (model {fc.version})") from None
