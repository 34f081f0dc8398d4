"""Training, artifacts (round trip, no pickle, content-hash checks), predict, scaler on train only."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS, SeriesSpec
from stream_lstm.errors import ModelError
from stream_lstm.model.artifact import content_version, load_artifact
from stream_lstm.model.runtime import Forecaster, previous_rows
from stream_lstm.model.scaling import Scaler
from stream_lstm.training.predict import predict_frame
from stream_lstm.training.train import prepare
from tests.unit.conftest import SPEC, tiny_options


def test_training_reduces_loss_and_beats_persistence(tiny_model: Path) -> None:
    m = json.loads((tiny_model / "metrics.json").read_text())
    epochs = m["training"]["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert m["training"]["best_val_loss"] < epochs[0]["val_loss"]
    scores = m["evaluation"]["scores"]
    assert (
        scores["model"]["original"]["overall"]["mae"]
        < scores["persistence"]["original"]["overall"]["mae"]
    )
    assert (tiny_model / "plots" / "loss_curves.png").stat().st_size > 1000


def test_scaler_is_fitted_on_the_training_span_only(synth_csv: Path) -> None:
    prep = prepare(synth_csv, SPEC, tiny_options())
    frame = prep.frame
    train_rows = frame[frame[TS] < prep.points.val_start]
    assert prep.scaler.mean[0] == pytest.approx(train_rows["f0"].mean(), rel=1e-3)
    assert prep.scaler.mean[0] != pytest.approx(frame["f0"].mean(), rel=1e-6)


def test_per_key_scaler_falls_back_to_global_for_unseen_keys() -> None:
    df = pd.DataFrame({KEY: ["a", "a", "b", "b"], "x": [1.0, 3.0, 10.0, 30.0]})
    s = Scaler.fit(df, ["x"], "per-key", KEY)
    mean, _ = s.stats(["a", "b", "zzz"])
    assert mean[:, 0].tolist() == [2.0, 20.0, pytest.approx(11.0)]
    again = Scaler.from_json(json.loads(json.dumps(s.to_json())))
    assert again.stats(["b"])[0][0, 0] == 20.0


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_cnn_model"])
def test_artifact_round_trip_gives_the_same_forecasts(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(fixture)
    a = load_artifact(path)
    assert a.version == (path / "VERSION").read_text().strip()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == "stream-lstm/1" and cfg["kind"] in {"lstm", "cnn-lstm-attn"}
    x = np.random.default_rng(0).normal(size=(40, a.config.input_size)).astype(np.float32)
    y1 = Forecaster(a).run_sequence(x)
    y2 = Forecaster(load_artifact(path)).run_sequence(x)
    np.testing.assert_array_equal(y1, y2)
    assert y1.shape == (40, a.config.horizon, 1, 1)


def test_lstm_weights_keep_torch_names(tiny_model: Path) -> None:
    from safetensors.torch import load_file

    names = set(load_file(str(tiny_model / "model.safetensors")))
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1", "head.weight", "head.bias"} <= names
    # a plain runtime loads them directly; norm offset: the LSTM reads every input column
    # (features, their changes, calendar pairs: docs/artifact.md)
    cfg = load_artifact(tiny_model).config
    assert cfg.norm == "offset" and cfg.input_size == 2 * 2 + 2 * len(cfg.calendar)
    lstm = torch.nn.LSTM(cfg.input_size, 16, 2, batch_first=True)
    lstm.load_state_dict(
        {
            k[5:]: v
            for k, v in load_file(str(tiny_model / "model.safetensors")).items()
            if k.startswith("lstm.")
        }
    )


class _Trap:
    """Unpickling this makes a directory: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (str(self.marker),))


def test_pickle_in_place_of_safetensors_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    marker = tmp_path / "unpickled"
    (bad / "model.safetensors").write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    with pytest.raises(ModelError, match="does not match its VERSION"):
        load_artifact(bad)  # the content hash catches it first
    # even with a matching VERSION, the file is never unpickled
    (bad / "VERSION").write_text(content_version(bad))
    with pytest.raises(ModelError, match=r"not a safetensors file.*never loads pickled"):
        load_artifact(bad)
    assert not marker.exists()
    pickle.loads((bad / "model.safetensors").read_bytes())  # the trap works when unpickled
    assert marker.is_dir()


def test_the_content_hash_detects_corruption_and_partial_copies_but_is_not_a_signature(
    tiny_model: Path, tmp_path: Path
) -> None:
    """What README's guarantee and docs/artifact.md say VERSION does, and does not, protect."""
    original = load_artifact(tiny_model)
    weights = (tiny_model / "model.safetensors").read_bytes()
    corrupt = bytearray(weights)
    corrupt[-1] ^= 0x01  # one bit of the last tensor's data: still a valid safetensors file
    refused = {
        "one corrupted weight byte": bytes(corrupt),
        "a partial copy": weights[: len(weights) // 2],
        "an empty file": b"",
    }
    for what, data in refused.items():
        bad = shutil.copytree(tiny_model, tmp_path / what)
        (bad / "model.safetensors").write_bytes(data)
        with pytest.raises(ModelError, match=r"does not match its VERSION .*corrupt, incompletely"):
            load_artifact(bad)  # VERSION as written by the trainer

    # not a signature: whoever can write the directory can also write a matching VERSION, and
    # changed weights then load (the defence is write access to the model path, README)
    forged = shutil.copytree(tiny_model, tmp_path / "forged")
    (forged / "model.safetensors").write_bytes(bytes(corrupt))
    (forged / "VERSION").write_text(content_version(forged) + "\n")
    loaded = load_artifact(forged)
    assert loaded.version != original.version
    a, b = original.module.state_dict(), loaded.module.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])], "the changed weights were loaded"

    # a copy in progress over an older artifact: the new VERSION next to the old files
    mixed = shutil.copytree(tiny_model, tmp_path / "mixed")
    shutil.copy(forged / "VERSION", mixed / "VERSION")
    with pytest.raises(ModelError, match=rf"\({loaded.version} recorded, {original.version} comp"):
        load_artifact(mixed)


def test_wrong_format_and_missing_files_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_artifact(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="is not a stream-lstm artifact: missing"):
        load_artifact(empty)
    bad = tmp_path / "fmt"
    shutil.copytree(tiny_model, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["format"] = "other/9"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="not a valid stream-lstm config: format"):
        load_artifact(bad)


def test_predict_is_deterministic_and_covers_every_row(tiny_model: Path, synth_csv: Path) -> None:
    frame, _ = load_frame(synth_csv, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"))
    fc = Forecaster(load_artifact(tiny_model))
    a = predict_frame(fc, frame)
    b = predict_frame(Forecaster(load_artifact(tiny_model)), frame)
    pd.testing.assert_frame_equal(a, b)
    H = fc.config.horizon
    assert len(a) == len(frame) * H
    assert list(a.columns) == ["key", "ts", "target", "h", "value"]
    assert sorted(a["h"].unique()) == list(range(1, H + 1))
    # the forecast after a key's row equals running that key alone from its first row
    k0 = frame[frame[KEY] == "k0"]
    v = k0[["f0", "f1"]].to_numpy()
    x = fc.inputs(v, k0[TS].to_numpy(), k0[KEY].tolist(), previous_rows(v))
    alone = fc.to_original(fc.run_sequence(x), k0[KEY].tolist())[:, :, 0, 0]
    got = a[a["key"] == "k0"]["value"].to_numpy().reshape(len(k0), H)
    np.testing.assert_allclose(got, alone, rtol=1e-6)


def test_rows_with_missing_features_get_no_forecast(tiny_model: Path, synth_csv: Path) -> None:
    frame, _ = load_frame(synth_csv, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"))
    frame.loc[5, "f1"] = np.nan
    out = predict_frame(Forecaster(load_artifact(tiny_model)), frame)
    assert len(out) == (len(frame) - 1) * 6
