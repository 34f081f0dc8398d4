"""A real Prometheus server (Debian's `prometheus`) scrapes a running worker and evaluates the
shipped alert rules (deploy/prometheus/rules/, with their `for:` waits cut to 0 s): bad input
fires StreamLstmDeadLetterRate, and a stopped worker fires StreamLstmWorkerDown."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.stack.procs import free_port
from tests.integration.conftest import Services
from tests.integration.helpers import make_topics, produce, running_worker, settings, wait_for
from tests.integration.test_worker import SYNTH, events_of

ROOT = Path(__file__).resolve().parents[2]


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: `make test` installs it (Debian's prometheus)"
        rules = (ROOT / "deploy/prometheus/rules/stream-lstm.yml").read_text()
        (workdir / "rules.yml").write_text(re.sub(r"for: \w+", "for: 0s", rules))
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{workdir / 'rules.yml'}]\n"
            "scrape_configs:\n"
            f"  - job_name: stream-lstm\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.port = free_port()
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())["data"]
        except OSError:
            return None

    def firing(self) -> set[str]:
        data = self.api("alerts") or {"alerts": []}
        return {a["labels"]["alertname"] for a in data["alerts"] if a["state"] == "firing"}

    def up(self) -> float | None:
        data = self.api("query", query='up{job="stream-lstm"}')
        if not data or not data["result"]:
            return None
        return float(data["result"][0]["value"][1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def test_prometheus_scrapes_the_worker_and_the_shipped_rules_fire(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    prometheus_factory: Callable[[str], Prometheus],
) -> None:
    topics = make_topics(topic_factory, partitions=2)
    good = events_of(synthetic_frame(keys=20, rows=40, features=2, seed=3), SYNTH)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        prom = prometheus_factory(f"127.0.0.1:{w.worker.metrics_port}")
        wait_for(lambda: prom.up() == 1.0, 60, "Prometheus scraping the worker")
        assert prom.firing() == set(), "no alert on a healthy, idle worker"
        # a stream where 1 event in 5 is not JSON, over several scrapes
        for i in range(6):
            batch = good[i * 100 : (i + 1) * 100]
            bad = [(b"k", b"not json %d" % j) for j in range(25)]
            produce(services.bootstrap, topics.input, batch + bad)
            time.sleep(1.0)
        wait_for(lambda: "StreamLstmDeadLetterRate" in prom.firing(), 60, "the dead-letter alert")
        assert "StreamLstmNoForecasts" not in prom.firing()
    # the worker is stopped: its target goes down and the down alert fires
    wait_for(lambda: "StreamLstmWorkerDown" in prom.firing(), 60, "the worker-down alert")
