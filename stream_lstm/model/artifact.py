"""Model artifacts: a directory of plain tensors and JSON, versioned by content, never unpickled.

    config.json        ModelConfig (all hyper-parameters, features, targets, T, H, interval)
    model.safetensors  the module's state_dict (torch parameter names)
    scaler.json        normalisation statistics (fitted on the training span)
    metrics.json       evaluation results and the data report (not part of the version)
    VERSION            sha256 of config.json + model.safetensors + scaler.json, 12 hex digits

Loading recomputes the version and refuses an artifact whose content no longer matches it: that
detects corrupt files and half-written or half-copied artifacts. VERSION is an unkeyed hash, not a
signature: whoever can write the directory can write a matching VERSION too (docs/artifact.md).
Every file is written with the same mode (0o666 minus the umask), and an unreadable file is a
ModelError that says what to check, never a raw OSError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from stream_lstm.errors import ConfigError, ModelError, read_error
from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import ModelConfig

log = logging.getLogger(__name__)
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
            levels=len(cfg.features) if cfg.reads_changes else 0,
            read_levels=cfg.norm == "offset",
            target_features=cfg.target_features,
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
        levels=len(cfg.features) if cfg.norm == "revin" else 0,
        target_features=cfg.target_features,
    )


def _hash(contents: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update(contents[name])
    return h.hexdigest()[:12]


def content_version(directory: Path) -> str:
    """The version the files in ``directory`` hash to (a :class:`ModelError` if one is
    unreadable)."""
    return _hash({name: _read(directory / name) for name in FILES})


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise read_error(path, e) from None


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same directory and a rename
    (readers see the old file or the new one, never part of it). The file is created afresh with
    mode 0o666 minus the umask, as any new file (0644 under the usual umask 022), whatever the
    mode of the file it replaces: every artifact file gets the same mode, so a worker running as
    another user than the trainer can read them all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_dir(directory: Path) -> None:
    """Fail fast, before any data is loaded or any training runs, unless ``directory`` is a
    directory this process can write the artifact into, or can be created as one. Creates
    nothing (a temporary file is made and removed in the nearest existing directory)."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(
            f"cannot write the model artifact to {directory}: {reason}; give --out a directory "
            f"that this user (uid {os.geteuid()}) can write, or a new one inside such a directory"
        )

    target = directory
    while True:
        try:
            st = os.stat(target)
            break
        except FileNotFoundError:
            if os.path.islink(target):
                raise fail(f"{target} is a broken symbolic link") from None
        except NotADirectoryError:
            pass  # a file on the way: found as the nearest existing path, refused below
        except PermissionError:
            raise fail(f"{target} cannot be looked up (permission denied on a parent)") from None
        except OSError as e:
            raise fail(f"{target}: {e.strerror or e}") from None
        if target.parent == target:
            raise fail("no parent directory exists")
        target = target.parent
    if not stat.S_ISDIR(st.st_mode):
        if target == directory:
            raise fail("it is a file, not a directory")
        raise fail(f"{target} is a file, not a directory")
    checked = [target]
    for name in (*FILES, "VERSION", "metrics.json", "plots") if target == directory else ():
        p = directory / name
        try:
            is_dir = stat.S_ISDIR(os.stat(p).st_mode)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise fail(f"{p} cannot be looked up ({e.strerror or e})") from None
        if name != "plots" and is_dir:
            raise fail(f"{p} is a directory where the artifact writes a file")
        if name == "plots":
            if not is_dir:
                raise fail(f"{p} is a file where the artifact writes its plots directory")
            checked.append(p)
    for d in checked:
        try:
            with tempfile.TemporaryFile(dir=d, prefix=".stream-lstm-write-check-"):
                pass
        except OSError as e:
            raise fail(f"{d} is not writable ({e.strerror or e})") from None


def save_artifact(
    directory: Path,
    config: ModelConfig,
    module: nn.Module,
    scaler: Scaler,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Write the artifact (every file with the same mode: see :func:`write_file`); returns its
    version. An OS error (not writable, disk full) is a :class:`ModelError` naming the path."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    cfg = json.dumps(config.model_dump(mode="json"), indent=1, sort_keys=True)
    contents = {
        "config.json": cfg.encode(),
        "model.safetensors": save_tensors(tensors, metadata={"format": config.format}),
        "scaler.json": json.dumps(scaler.to_json(), indent=1).encode(),
    }
    version = _hash(contents)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            write_file(directory / name, data)
        write_file(directory / "VERSION", (version + "\n").encode())
        write_metrics(directory, metrics or {})
    except OSError as e:
        raise ModelError(
            f"cannot write the model artifact to {directory}: {e.strerror or e} "
            f"({e.filename or directory}); check that it is a directory this user can write "
            "and that there is space"
        ) from None
    return version


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    write_file(directory / "metrics.json", json.dumps(metrics, indent=1, default=str).encode())


def _check_files(directory: Path) -> None:
    """The directory and each artifact file exist, are what they should be, and can be looked
    up; the files themselves are read afterwards (never opened here: a FIFO would block)."""
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelError(
            f"model directory {directory} does not exist (train one with `stream-lstm train`)"
        ) from None
    except OSError as e:
        raise read_error(directory, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ModelError(f"{directory} is not a directory: give the artifact directory")
    missing, odd = [], []
    for name in (*FILES, "VERSION"):
        path = directory / name
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            missing.append(name + (" (a broken symbolic link)" if path.is_symlink() else ""))
            continue
        except PermissionError as e:  # the directory cannot be searched
            raise read_error(directory, e) from None
        except OSError as e:
            raise read_error(path, e) from None
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            odd.append(f"{name} is {kind}")
    if missing:
        raise ModelError(f"{directory} is not a stream-lstm artifact: missing {missing}")
    if odd:
        raise ModelError(f"{directory} is not a stream-lstm artifact: {'; '.join(odd)}")


def load_artifact(directory: Path, device: str | torch.device = "cpu") -> Artifact:
    """Load and check an artifact; every problem is a ModelError that says what to fix.

    Each file is read once: the version is computed from the same bytes that are then parsed,
    so a file replaced between the check and the load cannot slip through."""
    _check_files(directory)
    contents = {name: _read(directory / name) for name in FILES}
    recorded = _read(directory / "VERSION").decode(errors="replace").strip()
    try:
        config = ModelConfig.model_validate_json(contents["config.json"])
    except ValidationError as e:
        first = e.errors()[0]
        raise ModelError(
            f"{directory}/config.json is not a valid stream-lstm config: "
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from None
    try:
        scaler = Scaler.from_json(json.loads(contents["scaler.json"]))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{directory}/scaler.json is not JSON: {e}") from None
    needed = list(dict.fromkeys([*config.features, *config.targets]))
    if [c for c in needed if c not in scaler.columns]:
        raise ModelError(f"{directory}/scaler.json lacks columns {needed}")
    actual = _hash(contents)
    if recorded != actual:
        raise ModelError(
            f"{directory}: the content does not match its VERSION ({recorded} recorded, {actual} "
            "computed): a file is corrupt, incompletely written or copied, or was modified "
            "after the artifact was written. Retrain, or copy the artifact again."
        )
    try:
        tensors = load_tensors(contents["model.safetensors"])
    except (SafetensorError, ValueError) as e:
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
    try:
        metrics = json.loads((directory / "metrics.json").read_bytes())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:  # not part of the version: the model still loads
        log.warning("%s/metrics.json ignored: %s", directory, e)
    return Artifact(config, scaler, module, actual, metrics, directory)
