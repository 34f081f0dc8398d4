"""`stream-lstm train / evaluate / predict` end to end on a small file, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stream_lstm.cli import main

COLS = ["--key-col", "key", "--time-col", "ts"]


def test_train_evaluate_predict(
    synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    rc = main(
        ["train", "--data", str(synth_csv), *COLS, "--features", "f0,f1", "--targets", "f0",
         "--time-step", "12", "--horizon", "6", "--hidden-size", "8", "--epochs", "2",
         "--model", "cnn-lstm-attn", "--quantiles", "0.1,0.5,0.9", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "seasonal naive" in printed and "persistence" in printed
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "scaler.json",
        "metrics.json",
        "VERSION",
    }
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "cnn-lstm-attn" and cfg["quantiles"] == [0.1, 0.5, 0.9]
    assert cfg["data"]["key_col"] == "key"

    assert main(["evaluate", "--model", str(out), "--data", str(synth_csv), "--split", "all"]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["split"] == "all" and ev["origins"] > 0
    assert set(ev["coverage"]) == {"p10-p90"}

    pred = tmp_path / "p.csv"
    assert main(["predict", "--model", str(out), "--data", str(synth_csv), "--out", str(pred)]) == 0
    df = pd.read_csv(pred)
    rows = len(pd.read_csv(synth_csv))
    assert len(df) == rows * 6 * 3
    assert list(df.columns) == ["key", "ts", "target", "h", "quantile", "value"]
    med = df[df["quantile"] == 0.5]["value"].to_numpy()
    lo = df[df["quantile"] == 0.1]["value"].to_numpy()
    assert len(med) == len(lo) == rows * 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--time-col", "ts", "--features", "f0", "--targets", "f0"],
            "--out / STREAM_LSTM_TRAIN_OUT: Field required",
        ),
        (
            ["train", "--out", "X", "--time-col", "ts", "--features", "f0", "--targets", "f0"],
            "give the data with --data PATH or --dataset NAME",
        ),
        (
            ["train", "--out", "X", "--data", "{csv}", "--features", "f0", "--targets", "f0"],
            "--time-col is required",
        ),
        (
            [
                "train",
                "--out",
                "X",
                "--data",
                "{csv}",
                "--time-col",
                "ts",
                "--features",
                "nope",
                "--targets",
                "f0",
            ],
            "column(s) ['nope'] not found",
        ),
        (
            [
                "train",
                "--out",
                "X",
                "--data",
                "{csv}",
                "--time-col",
                "ts",
                "--features",
                "f0",
                "--targets",
                "f0",
                "--loss",
                "pinball",
            ],
            "--loss pinball needs --quantiles",
        ),
        (
            [
                "train",
                "--out",
                "X",
                "--data",
                "{csv}",
                "--time-col",
                "ts",
                "--features",
                "f0",
                "--targets",
                "f0",
                "--epochs",
                "0",
            ],
            "--epochs / STREAM_LSTM_TRAIN_EPOCHS",
        ),
        (
            [
                "train",
                "--out",
                "X",
                "--data",
                "{csv}",
                "--time-col",
                "ts",
                "--features",
                "f0",
                "--targets",
                "f0",
                "--timezone",
                "Mars/Olympus",
            ],
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            ["predict", "--model", "{tmp}/none", "--data", "{csv}", "--out", "p.csv"],
            "does not exist (train one with `stream-lstm train`)",
        ),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    argv: list[str],
    message: str,
    synth_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.replace("{csv}", str(synth_csv)).replace("{tmp}", str(tmp_path)) for a in argv]
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_dataset_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "nope", "--out", "x"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        ("predict", "{file}/p.csv", "is a file, not a directory"),
        ("predict", "{dir}", "must end in .csv or .parquet"),
        ("predict", "{dir}/sub.csv", "it is a directory; give a file name"),
        ("evaluate", "{file}/e.json", "is a file, not a directory"),
        ("evaluate", "{dir}/sub.csv", "it is a directory; give a file name"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    command: str,
    out: str,
    message: str,
    tiny_model: Path,
    synth_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "d" / "sub.csv").mkdir(parents=True)
    target = out.replace("{file}", str(tmp_path / "a-file")).replace("{dir}", str(tmp_path / "d"))

    def not_reached(*_: object, **__: object) -> None:
        raise AssertionError("the output is checked before the data is read")

    monkeypatch.setattr("stream_lstm.data.loading.load_frame", not_reached)
    argv = [command, "--model", str(tiny_model), "--data", str(synth_csv), "--out", target]
    assert main([*argv, "--split", "all"] if command == "evaluate" else argv) == 2
    assert message in capsys.readouterr().err
