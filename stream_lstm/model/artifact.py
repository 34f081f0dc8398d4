"""Model artifacts: a directory of plain tensors and JSON, versioned by content, never unpickled.

    config.json        ModelConfig (all hyper-parameters, features, targets, T, H, interval)
    model.safetensors  the module's state_dict (torch parameter names)
    scaler.json        normalisation statistics (fitted on the training span)
    metrics.json       evaluation results and the data report (not part of the version)
    VERSION            sha256 of config.json + model.safetensors + scaler.json, 12 hex digits

Loading recomputes the version and refuses an artifact whose content no longer matches it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from stream_lstm.errors import ModelError
from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import ModelConfig

FILES = ("config.json", "model.safetensors", "scaler.json")


@dataclass
class Artifact:
    config: ModelConfig
    scaler: Scaler  # columns: features, then targets that are not features
    module: nn.Module
    version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def build_module(cfg: ModelConfig) -> nn.Module:
    if cfg.kind == "lstm":
        return LSTMForecaster(
            cfg.input_size,
            cfg.hidden_size,
            cfg.num_layers,
            cfg.dropout,
            cfg.horizon,
            cfg.n_targets,
            cfg.n_quantiles,
            cfg.learned_init,
        )
    return CNNLSTMAttention(
        cfg.input_size,
        cfg.time_step,
        cfg.conv_channels,
        cfg.conv_kernel,
        cfg.attention_size,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.dropout,
        cfg.horizon,
        cfg.n_targets,
        cfg.n_quantiles,
    )


def content_version(directory: Path) -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:12]


def save_artifact(
    directory: Path,
    config: ModelConfig,
    module: nn.Module,
    scaler: Scaler,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Write the artifact; returns its version."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(config.model_dump(mode="json"), indent=1, sort_keys=True)
    )
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": config.format})
    scaler.save(directory / "scaler.json")
    version = content_version(directory)
    (directory / "VERSION").write_text(version + "\n")
    write_metrics(directory, metrics or {})
    return version


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))


def load_artifact(directory: Path, device: str | torch.device = "cpu") -> Artifact:
    """Load and check an artifact; every problem is a ModelError that says what to fix."""
    if not directory.is_dir():
        raise ModelError(
            f"model directory {directory} does not exist (train one with `stream-lstm train`)"
        )
    missing = [n for n in (*FILES, "VERSION") if not (directory / n).is_file()]
    if missing:
        raise ModelError(f"{directory} is not a stream-lstm artifact: missing {missing}")
    try:
        config = ModelConfig.model_validate_json((directory / "config.json").read_text())
    except ValidationError as e:
        first = e.errors()[0]
        raise ModelError(
            f"{directory}/config.json is not a valid stream-lstm config: "
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    try:
        scaler = Scaler.from_json(json.loads((directory / "scaler.json").read_text()))
    except json.JSONDecodeError as e:
        raise ModelError(f"{directory}/scaler.json is not JSON: {e}") from None
    needed = list(dict.fromkeys([*config.features, *config.targets]))
    if [c for c in needed if c not in scaler.columns]:
        raise ModelError(f"{directory}/scaler.json lacks columns {needed}")
    recorded = (directory / "VERSION").read_text().strip()
    actual = content_version(directory)
    if recorded != actual:
        raise ModelError(
            f"{directory}: the content does not match its VERSION ({recorded} recorded, {actual} "
            "computed); the artifact was modified after it was written. Retrain or restore it."
        )
    try:
        tensors = load_file(str(directory / "model.safetensors"), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(
            f"{directory}/model.safetensors is not a safetensors file ({e}); stream-lstm never "
            "loads pickled weights"
        ) from None
    module = build_module(config)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{directory}/model.safetensors does not fit config.json: {e}") from None
    module.to(device).eval()
    metrics: dict[str, Any] = {}
    if (directory / "metrics.json").is_file():
        try:
            metrics = json.loads((directory / "metrics.json").read_text())
        except json.JSONDecodeError:
            metrics = {}
    return Artifact(config, scaler, module, actual, metrics, directory)
