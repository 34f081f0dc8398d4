"""`stream-lstm demo`'s flow on the session's stack: train, replay, worker, live view."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from stream_lstm.data.datasets import preset
from stream_lstm.demo import DemoOptions, run_demo
from tests.integration.conftest import Services


@pytest.mark.parametrize("redis_mode", ["node", "cluster"])
def test_demo_runs_end_to_end(
    redis_mode: str, request: pytest.FixtureRequest, services: Services, tmp_path: Path
) -> None:
    cluster = request.getfixturevalue("redis_cluster") if redis_mode == "cluster" else None
    stack = SimpleNamespace(
        bootstrap=services.bootstrap, redis_url=services.redis_url, cluster=cluster
    )
    opts = DemoOptions(
        preset=preset("pedestrian"), model_dir=tmp_path / "model", epochs=1, show_steps=12, rate=0
    )
    console = Console(record=True, width=120)
    assert run_demo(stack, opts, console) == 0  # type: ignore[arg-type]
    text = console.export_text()
    assert "training an lstm" in text
    assert "forecasts out, stopped" in text
    assert "MAE over the shown span: model h=1" in text
    assert (tmp_path / "model" / "VERSION").exists()
    if cluster is not None:  # demo --redis-cluster: the worker's state went to the cluster
        on = [
            sum(1 for _ in cluster.client(m.port).scan_iter("slstm:demo-*:{s*}:*"))
            for m in cluster.masters()
        ]
        assert sum(on) >= 4, on
