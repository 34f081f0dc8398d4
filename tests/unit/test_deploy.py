"""Deployment files parse with the real tools that can run here (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(cmd[0])
    assert exe, (
        f"{cmd[0]} is missing: `make test` installs it (deploy/local/ensure-debian-packages.sh)"
    )
    return subprocess.run([exe, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, check=False)


def test_compose_file_is_valid_and_has_the_whole_stack() -> None:
    res = run("docker-compose", "-f", "docker-compose.yml", "config", "-q")
    assert res.returncode == 0, res.stderr
    services = set(
        run("docker-compose", "-f", "docker-compose.yml", "config", "--services").stdout.split()
    )
    assert {"kafka", "redis", "worker", "prometheus", "grafana"} <= services


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # proves the check above can fail: a service with an unknown key
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: x\n    restartt: always\n")
    res = run("docker-compose", "-f", str(bad), "config", "-q")
    assert res.returncode != 0
    assert "restartt" in res.stderr


def test_prometheus_config_is_valid() -> None:
    res = run("promtool", "check", "config", "deploy/prometheus/prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
