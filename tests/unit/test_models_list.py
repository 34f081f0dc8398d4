"""`stream-lstm models`: lists artifacts from their JSON files, with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stream_lstm.cli import main
from stream_lstm.commands.models import describe, find_artifacts
from stream_lstm.model.artifact import load_artifact


def test_lists_an_artifact_folder_with_version_shape_and_metrics(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models"
    shutil.copytree(tiny_model, folder / "a")
    (folder / "not-a-model").mkdir()
    assert find_artifacts([folder]) == [folder / "a"]
    assert find_artifacts([folder / "a"]) == [folder / "a"]
    row = describe(folder / "a")
    art = load_artifact(tiny_model)
    assert row["version"] == art.version
    assert row["kind"] == art.config.kind and row["horizon"] == art.config.horizon
    assert row["features"] == list(art.config.features)
    assert main(["models", "--json", str(folder)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [r["version"] for r in out] == [art.version]


def test_a_broken_artifact_is_reported_not_raised(tiny_model: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{not json")
    assert "unreadable" in describe(tmp_path / "b")["error"]


def test_a_missing_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
