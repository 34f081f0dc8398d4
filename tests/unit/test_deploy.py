"""Deployment files parse with the real tools that can run here (no Docker engine needed):
docker-compose, promtool (config, rules, rule unit tests), the dashboard's queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(cmd[0], path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
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
    assert {"kafka", "redis", "worker-1", "worker-2", "replay", "prometheus", "grafana"} <= services


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


RULES = "deploy/prometheus/rules/stream-lstm.yml"


def test_alert_rules_are_valid() -> None:
    res = run("promtool", "check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 rules found" in res.stdout


def test_alert_rules_fire_on_their_series_and_stay_silent_otherwise() -> None:
    res = run("promtool", "test", "rules", "deploy/prometheus/tests/stream-lstm.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    # the same tests against rules whose dead-letter threshold was raised to 10 %: must fail
    rules = (ROOT / RULES).read_text().replace("> 0.01", "> 0.10")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "stream-lstm.yml").write_text(rules)
    (tmp_path / "tests").mkdir()
    test = (ROOT / "deploy/prometheus/tests/stream-lstm.test.yml").read_text()
    (tmp_path / "tests" / "t.yml").write_text(test)
    res = run("promtool", "test", "rules", str(tmp_path / "tests" / "t.yml"))
    assert res.returncode != 0
    assert "StreamLstmDeadLetterRate" in res.stdout + res.stderr


def _dashboard_queries() -> list[str]:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/stream-lstm.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_queries_parse_and_use_only_metrics_the_worker_exports(tmp_path: Path) -> None:
    from stream_lstm.metrics import WorkerMetrics

    queries = _dashboard_queries()
    assert len(queries) >= 10
    # promtool parses each query as a recording rule's expression
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(json.dumps(rules))
    res = run("promtool", "check", "rules", str(f))
    assert res.returncode == 0, res.stdout + res.stderr
    # every name a collector exports (with _total, _bucket, _info … suffixes), labelled or not
    registry = WorkerMetrics().registry
    exported = set(registry._names_to_collectors) | {
        fam.name + suffix
        for fam in registry.collect()
        for suffix in ("", "_bucket", "_sum", "_count")
    }
    used = {m for q in queries for m in re.findall(r"stream_lstm_[a-z_]+", q)}
    assert used <= exported, f"dashboard uses metrics the worker does not export: {used - exported}"


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    files = sorted(str(p) for p in (ROOT / "deploy/k8s").glob("*.yaml"))
    assert len(files) >= 4
    res = run("kubernetes-validate", "--strict", *files)
    assert res.returncode == 0, res.stdout + res.stderr
    kinds = set(re.findall(r"passed for resource (\w+)/", res.stdout + res.stderr))
    assert {"deployment", "service", "configmap", "horizontalpodautoscaler"} <= kinds


def test_kubernetes_validation_can_fail(tmp_path: Path) -> None:
    text = (ROOT / "deploy/k8s/deployment.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("containerPort: 9464", "containerPort: nine"))
    res = run("kubernetes-validate", "--strict", str(bad))
    assert res.returncode != 0


def test_images_and_pods_run_as_the_same_non_root_user() -> None:
    docker = (ROOT / "deploy/Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", docker, re.M)
    assert user and user[-1] != ("0", "0"), "the image's last USER must be a numeric non-root one"
    k8s = (ROOT / "deploy/k8s/deployment.yaml").read_text()
    assert f"runAsUser: {user[-1][0]}" in k8s and "runAsNonRoot: true" in k8s


def _compose() -> dict[str, Any]:
    res = run("docker-compose", "-f", "docker-compose.yml", "config")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = yaml.safe_load(res.stdout)
    return doc


def test_the_models_volume_is_mounted_where_the_image_creates_it_for_its_user() -> None:
    """A named volume is created as a copy of the image's directory at its mount point, owner
    included; a mount point the image lacks is created root-owned, and the trainer (the image's
    non-root user) could not write the model the workers wait for."""
    services = _compose()["services"]
    mounts = {
        name: {
            v.split(":")[1]: v.split(":")[2] if v.count(":") > 1 else "rw"
            for v in svc.get("volumes", [])
            if v.split(":")[0] == "models"
        }
        for name, svc in services.items()
    }
    (target,) = mounts["trainer"]
    assert mounts["trainer"][target] == "rw"
    assert {s for s, m in mounts.items() if m} == {"trainer", "worker-1", "worker-2"}
    assert mounts["worker-1"] == mounts["worker-2"] == {target: "ro"}
    out = services["trainer"]["command"][services["trainer"]["command"].index("--out") + 1]
    model = services["worker-1"]["environment"]["STREAM_LSTM_MODEL"]
    assert out == model and model.startswith(target + "/")

    docker = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    final = docker[docker.rindex("\nFROM ") :]  # the image's stage
    user = re.findall(r"^USER (\d+):(\d+)$", final, re.M)[-1]
    created = [
        i
        for i, line in enumerate(final.splitlines())
        if line.startswith("RUN ")
        and re.search(rf"\bmkdir -p (\S+ )*{re.escape(target)}( |&|$)", line)
        and re.search(rf"\bchown {user[0]}:{user[1]} (\S+ )*{re.escape(target)}( |&|$)", line)
    ]
    assert created, f"deploy/Dockerfile must create {target} owned by {user[0]}:{user[1]}"
    last_user = max(i for i, line in enumerate(final.splitlines()) if line.startswith("USER "))
    assert created[0] < last_user, "created after USER: chown would run as the non-root user"
