"""Where models run: the ``--device`` choice of training and the workers."""

from __future__ import annotations

import torch

from stream_lstm.errors import ConfigError


def pick_device(choice: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a clear error otherwise."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {choice} was asked for but no CUDA device is available")
        index = (
            int(choice.partition(":")[2] or 0) if choice[5:].isdigit() or choice == "cuda" else -1
        )
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(
                f"--device {choice}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(choice)
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {choice!r}")
