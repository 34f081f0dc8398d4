"""``config.json`` of a model artifact: every hyper-parameter and the data contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT = "stream-lstm/1"
KINDS = ("lstm", "cnn-lstm-attn")
# normalisation that follows drift (docs/accuracy.md): ``revin`` for windowed kinds, ``offset``
# or ``diff`` for the stateful kind; ``none``: the training-span standardisation only
NORMS = ("none", "revin", "diff", "offset")


class ModelConfig(BaseModel):
    """Everything needed to rebuild the network and to turn events into its inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["stream-lstm/1"] = "stream-lstm/1"
    kind: Literal["lstm", "cnn-lstm-attn"] = "lstm"
    features: list[str] = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    calendar: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    time_step: int = Field(ge=1)
    horizon: int = Field(ge=1)
    interval_ms: int = Field(gt=0)
    hidden_size: int = Field(default=64, ge=1)
    num_layers: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    learned_init: bool = False
    quantiles: list[float] = Field(default_factory=list)
    conv_channels: int = Field(default=32, ge=1)
    conv_kernel: int = Field(default=3, ge=1)
    attention_size: int = Field(default=32, ge=1)
    scaling: Literal["global", "per-key"] = "global"
    # columns modelled as log(1 + max(x, 0)) before standardisation (counts, volumes)
    log1p: list[str] = Field(default_factory=list)
    # ``revin`` (windowed kinds): each window's features are normalised by the window's own
    # mean and spread, and the forecasts of targets that are features are mapped back with them
    # (reversible instance normalisation). ``offset`` (the stateful kind): the inputs carry each
    # event's levels and their changes since the key's previous event, and targets that are
    # features are forecast as offsets from the event's own values, so a level that moves after
    # training is followed without retraining; ``diff``: the same, the LSTM reading the changes
    # only (no level at all).
    norm: Literal["none", "revin", "diff", "offset"] = "none"
    # provenance, for `stream-lstm models` and reproducibility (not used for inference)
    training: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {self.quantiles}")
        if self.quantiles and sorted(set(self.quantiles)) != self.quantiles:
            raise ValueError(f"quantiles must be sorted and distinct, got {self.quantiles}")
        if self.quantiles and 0.5 not in self.quantiles:
            raise ValueError("quantiles must include 0.5 (the point forecast)")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features must be distinct")
        if self.norm == "revin" and self.kind == "lstm":
            raise ValueError("norm 'revin' is for windowed kinds; the stateful lstm uses 'offset'")
        if self.reads_changes and self.kind != "lstm":
            raise ValueError(f"norm {self.norm!r} is for the stateful lstm; windowed: 'revin'")
        unknown = [c for c in self.log1p if c not in self.features and c not in self.targets]
        if unknown:
            raise ValueError(f"log1p columns {unknown} are neither features nor targets")
        return self

    @property
    def input_size(self) -> int:
        """Columns of the encoded inputs: the scaled features, their changes since the key's
        previous event (:attr:`reads_changes` only), then the calendar encodings."""
        per = 2 if self.reads_changes else 1
        return per * len(self.features) + 2 * len(self.calendar)

    @property
    def reads_changes(self) -> bool:
        """Whether the inputs carry each feature's change since the key's previous event, and
        the targets that are features are forecast as offsets (``offset``, ``diff``)."""
        return self.norm in ("offset", "diff")

    @property
    def target_features(self) -> list[int]:
        """Index among the features of each target (-1: the target is not a feature)."""
        return [self.features.index(t) if t in self.features else -1 for t in self.targets]

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_quantiles(self) -> int:
        return max(1, len(self.quantiles))

    @property
    def stateful(self) -> bool:
        """True when the model carries (h, c) between events; False for windowed models."""
        return self.kind == "lstm"

    @property
    def point_index(self) -> int:
        """Index of the point forecast (the median) along the quantile axis."""
        return self.quantiles.index(0.5) if self.quantiles else 0
