"""The wheel and the examples: build the project's wheel, install it with
requirements/examples.lock into a clean virtual environment (what `make examples-env` does),
check the installed CLI and API from outside the repository, then run each example in
examples/ in that environment against the real broker and check every event's forecast
against ``Model.predict``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stream_lstm as sl
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import SeriesSpec
from stream_lstm.replay import iter_events
from tests.integration.conftest import Services, unique
from tests.integration.helpers import produce, read_all

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "examples.lock"
EXAMPLES = REPO / "examples"
KEYS, ROWS = 3, 100  # events: 3 keys x 100 rows of the synth data
RUN_TIMEOUT_S = 240


def _uv() -> str:
    uv = REPO / ".venv" / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (make venv installs it)")
    return found


def _clean_env() -> dict[str, str]:
    """The environment for subprocesses: nothing that would put the repository on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def examples_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment with the built wheel and requirements/examples.lock.

    The wheel is built from a copy of the sources, so the working tree gets no build/ or
    egg-info of this test's. uv's cache is on this file system: torch is linked, not copied."""
    uv = _uv()
    tmp = tmp_path_factory.mktemp("examples-env")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "stream_lstm", src / "stream_lstm",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )  # fmt: skip
    _run([uv, "build", "--wheel", "-q", "-o", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("stream_lstm-*.whl")
    env = tmp / "env"
    python = env / "bin" / "python"
    _run([uv, "venv", "-q", env, "--python", sys.executable], cwd=tmp)
    _run([uv, "pip", "install", "-q", "--python", python, "--no-deps", "-r", LOCK], cwd=tmp)
    _run([uv, "pip", "install", "-q", "--python", python, "--no-deps", wheel], cwd=tmp)
    _run([uv, "pip", "check", "--python", python], cwd=tmp)  # the wheel's requirements hold
    return env


def test_the_wheel_installs_the_cli_and_the_api(
    examples_env: Path, synth_model: Path, synth_data: Path, tmp_path: Path
) -> None:
    assert _run([examples_env / "bin" / "stream-lstm", "--version"], cwd=tmp_path).split() == [
        "stream-lstm",
        sl.__version__,
    ]
    code = (
        "import sys, pathlib, pandas as pd, stream_lstm as sl\n"
        "site = pathlib.Path(sl.__file__).resolve().parent\n"
        "assert 'site-packages' in site.parts, site\n"
        "assert (site / 'py.typed').exists() and (site / 'stack' / 'resources').is_dir()\n"
        "assert 'torch' not in sys.modules\n"
        "m = sl.load(sys.argv[1])\n"
        "f = m.online().update_frame(pd.read_csv(sys.argv[2]).head(30))\n"
        "assert all(isinstance(x, sl.Forecast) for x in f), f\n"
        "print(sl.__version__, m.version, site)\n"
    )
    out = _run([examples_env / "bin" / "python", "-c", code, synth_model, synth_data], tmp_path)
    version, model_version, site = out.split()
    assert version == sl.__version__ and model_version == sl.load(synth_model).version
    assert Path(site).is_relative_to(examples_env.resolve()), site
    assert not Path(site).is_relative_to(REPO), site


def _events(synth_data: Path) -> tuple[pd.DataFrame, list[tuple[bytes, bytes]]]:
    frame, _ = load_frame(synth_data, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"))
    frame = frame.sort_values(["key", "ts"]).groupby("key", sort=False).head(ROWS)
    assert frame["key"].nunique() == KEYS
    return frame, [(e.key.encode(), e.value) for e in iter_events(frame, ["f0", "f1"])]


def _command(example: str, env: Path, bootstrap: str, src: str, dst: str, model: Path) -> list[str]:
    python = str(env / "bin" / "python")
    args = ["--bootstrap", bootstrap, "--input", src, "--output", dst, "--model", str(model)]
    n = str(KEYS * ROWS)
    if example == "kafka":
        return [python, str(EXAMPLES / "kafka_forecaster.py"), *args, "--group", unique("g"),
                "--max-events", n, "--batch", "64", "--idle-timeout", "90"]  # fmt: skip
    if example == "quix":
        return [python, str(EXAMPLES / "quix_forecaster.py"), *args, "--group", unique("g"),
                "--max-events", n, "--idle-timeout", "90"]  # fmt: skip
    flow_args = ", ".join(repr(a) for a in [*args, "--until-end"])
    flow = f"{EXAMPLES / 'bytewax_forecaster.py'}:get_flow({flow_args})"
    return [python, "-m", "bytewax.run", flow]


def _run_example(cmd: list[str], cwd: Path) -> str:
    """Run an example to its end (it stops by itself); killed, with its group, if it does not."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{cmd[1]} did not stop in {RUN_TIMEOUT_S} s:\n{out}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{out}"
    return out


@pytest.mark.parametrize("example", ["kafka", "quix", "bytewax"])
def test_example_forecasts_every_event_as_predict_does(
    example: str,
    examples_env: Path,
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    frame, events = _events(synth_data)
    src, dst = topic_factory("ex-in", partitions=3), topic_factory("ex-out", partitions=3)
    produce(services.bootstrap, src, events)
    cmd = _command(example, examples_env, services.bootstrap, src, dst, synth_model)
    log = _run_example(cmd, tmp_path)
    assert "rejected" not in log, log

    msgs = read_all(services.bootstrap, dst, len(events), timeout_s=60)
    got = [json.loads(m.value() or b"") for m in msgs]
    assert [m.key() for m in msgs] == [g["key"].encode() for g in got]
    by_event = {(g["key"], g["ts"]): g for g in got}
    assert len(got) == len(by_event) == len(events), "one forecast per event, none twice"

    model = sl.load(synth_model)
    ref = model.predict(frame)
    ref["ts_ms"] = (ref["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")
    want = ref.sort_values("h").groupby(["key", "ts_ms"])["value"].agg(list)
    assert len(want) == len(events)
    for (key, ts), values in want.items():
        g = by_event.get((key, int(ts)))
        assert g is not None, f"no forecast for {key} at {ts}"
        assert g["model"] == model.version and g["interval_ms"] == model.config.interval_ms
        np.testing.assert_allclose(g["forecast"]["f0"], values, rtol=1e-5, atol=1e-5)
