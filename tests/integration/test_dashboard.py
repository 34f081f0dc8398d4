"""`stream-lstm dashboard` on the real broker, looked at by a real browser (headless Chromium):
the API fills from both topics (from the beginning, then live), the page draws the charts, and
a screenshot is kept in test-artifacts/dashboard.png."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream_lstm.cli import main
from stream_lstm.runtime.events import ForecastOut, encode_event, encode_forecast
from stream_lstm.stack.procs import free_port
from tests.integration.helpers import produce, wait_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
H = 12
KEYS = ("sensor-a", "sensor-b")
FIRST, MORE = 72, 24  # events per key before the dashboard starts, and after (live)


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "Chromium is not installed (the dashboard test drives a headless browser): "
        "run `make system-deps` (installs Debian's `chromium` package)",
        pytrace=False,
    )


def truth(k: int, t: int) -> float:
    """A daily cycle per key, hour t."""
    return 20.0 + 8.0 * k + 6.0 * math.sin(2 * math.pi * (t + 5 * k) / 24)


def messages(start: int, stop: int) -> tuple[list[Any], list[Any]]:
    """Input events (with noise) and forecasts with 10/50/90 % quantiles for hours
    [start, stop) of every key, plus one key the dashboard must ignore."""
    rng = np.random.default_rng(start)
    events, forecasts = [], []
    for k, key in enumerate((*KEYS, "sensor-ignored")):
        for t in range(start, stop):
            ts = T0 + t * HOUR
            actual = truth(k, t) + float(rng.normal(0, 0.6))
            events.append((key.encode(), encode_event(key, ts, {"y": actual, "x": float(t)})))
            mid = [truth(k, t + h) + float(rng.normal(0, 0.3)) for h in range(1, H + 1)]
            spread = [1.28 * 0.6 * math.sqrt(h) for h in range(1, H + 1)]
            f = ForecastOut(
                key=key,
                ts=ts,
                model="test-model",
                interval="1h",
                interval_ms=HOUR,
                forecast={"y": mid},
                partition=0,
                offset=t,
                quantiles={
                    "y": {
                        "0.1": [m - s for m, s in zip(mid, spread, strict=True)],
                        "0.5": mid,
                        "0.9": [m + s for m, s in zip(mid, spread, strict=True)],
                    }
                },
            )
            forecasts.append((key.encode(), encode_forecast(f)))
    return events, forecasts


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def reachable(url: str) -> bool:
    try:
        get_json(url)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


@pytest.fixture
def dashboard_proc(
    bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, tuple[str, str], Path]]:
    inp = topic_factory("dash-in", partitions=2)
    out = topic_factory("dash-out", partitions=2)
    events, forecasts = messages(0, FIRST)
    produce(bootstrap, inp, events)
    produce(bootstrap, out, forecasts)
    port = free_port()
    log = tmp_path / "dashboard.log"
    cmd = [
        sys.executable, "-m", "stream_lstm", "dashboard",
        "--bootstrap", bootstrap, "--input-topic", inp, "--output-topic", out,
        "--keys", ",".join(KEYS), "--from-beginning", "--history", "200", "--port", str(port),
    ]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc, f"http://127.0.0.1:{port}/", (inp, out), log
    finally:
        stop_process(proc)


def run_chromium(args: list[str], profile: Path, timeout: float = 120) -> str:
    """Run headless Chromium in its own process group; whatever it leaves is killed by group."""
    cmd = [
        find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group Chromium started: renderers…
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0 or out, (
        f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    )
    return out.decode(errors="replace")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_dashboard_charts_actuals_and_forecasts_in_a_browser(
    bootstrap: str,
    dashboard_proc: tuple[subprocess.Popen[bytes], str, tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    proc, url, (inp, out), log = dashboard_proc
    find_chromium()  # fail early, with the fix, when the browser is missing

    def served(n: int) -> bool:
        assert proc.poll() is None, f"dashboard exited: {log.read_text()[-3000:]}"
        if not reachable(url + "api/keys"):
            return False
        got = [get_json(f"{url}api/series?key={k}") for k in KEYS]
        return all(
            len(s["actual"]["ts"]) == n and len(s["one_step"]["ts"]) == n and s["latest"]
            for s in got
        )

    wait_for(lambda: served(FIRST), 90, f"{FIRST} actuals and forecasts per key in the API")
    # live: what arrives after the start shows up too
    events, forecasts = messages(FIRST, FIRST + MORE)
    produce(bootstrap, inp, events)
    produce(bootstrap, out, forecasts)
    n = FIRST + MORE
    wait_for(lambda: served(n), 90, f"{n} actuals and forecasts per key in the API")

    keys = get_json(url + "api/keys")
    assert keys["keys"] == list(KEYS) and keys["target"] == "y"
    assert keys["counts"]["ignored"] > 0, "the key not asked for is read and left out"
    assert keys["counts"]["bad"] == 0
    s = get_json(url + "api/series?key=sensor-a")
    latest = s["latest"]
    assert latest["ts"] == T0 + (n - 1) * HOUR
    assert latest["h_ts"][0] == T0 + n * HOUR and len(latest["value"]) == H
    bands = zip(latest["lower"], latest["value"], latest["upper"], strict=True)
    assert all(lo < v < hi for lo, v, hi in bands)
    assert latest["levels"] == ["0.1", "0.9"]
    assert s["one_step_matched"] == n - 1  # every 1-step forecast but the newest has its actual
    assert s["one_step_mae"] < 2.0

    # the page, as a browser renders it: the marker says how many points were drawn
    dom = run_chromium(["--dump-dom", url], tmp_path / "chrome-dom")
    m = re.search(r'<body[^>]*\bdata-points="(\d+)"', dom)
    assert m, f"no data-points marker on <body>: {dom[:2000]}"
    per_key = n + n + 3 * H  # actuals, 1-step trail, latest forecast with lower and upper
    assert int(m.group(1)) == len(KEYS) * per_key, dom[:2000]
    status = re.search(r'<div id="status"[^>]*>([^<]*)</div>', dom)
    assert status and f"{len(KEYS) * per_key} points drawn" in status.group(1), dom[:2000]
    for k in KEYS:
        assert f'data-key="{k}"' in dom
    assert dom.count('class="uplot') >= len(KEYS), "one uPlot chart per key"

    shot = tmp_path / "dashboard.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,800", url], tmp_path / "chrome-shot")
    assert shot.is_file(), "Chromium wrote no screenshot"
    data = shot.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "dashboard.png")
    assert png_size(data) == (1280, 800)
    assert len(data) > 20_000, f"screenshot of {len(data)} bytes: a blank page?"
    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]  # [800, 1280, 3] floats in 0..1
    red = (pixels[..., 0] > 0.6) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert int(red.sum()) > 100, "the latest-forecast line (red) is not in the screenshot"

    # SIGTERM stops it cleanly
    proc.terminate()
    assert proc.wait(30) == 0, log.read_text()[-3000:]
    assert "dashboard stopped" in log.read_text()


def test_dashboard_errors(
    bootstrap: str, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    inp = topic_factory("dash-in")
    common = ["dashboard", "--port", "0", "--input-topic", inp]
    assert main([*common, "--bootstrap", bootstrap, "--output-topic", "no-such-topic-x1"]) == 2
    err = capsys.readouterr().err
    assert f"error: topic no-such-topic-x1 does not exist on {bootstrap}; create it first" in err
    assert "stream-lstm topics create" in err
    assert main([*common, "--bootstrap", bootstrap, "--output-topic", inp]) == 2
    assert "must be different" in capsys.readouterr().err
    # a port nobody listens on: a clear error (after the client's metadata timeout)
    dead = f"127.0.0.1:{free_port()}"
    assert main([*common, "--bootstrap", dead, "--output-topic", "f"]) == 1
    assert f"error: cannot reach Kafka at {dead}" in capsys.readouterr().err
