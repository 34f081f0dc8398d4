"""Security on the real parts: Kafka SASL pass-through, Redis passwords, ACL users and TLS
(`rediss://`), secrets kept out of logs and errors, and the metrics bind address."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from stream_lstm.config import default_cache_dir
from stream_lstm.stack.kafka import KafkaBroker, KafkaSpec
from stream_lstm.stack.procs import free_port
from stream_lstm.stack.redis import RedisServer, RedisSpec
from tests.integration.conftest import Services, unique
from tests.integration.faults import WorkerProc
from tests.integration.helpers import make_topics, produce, read_all, settings
from tests.integration.test_faults import _topics
from tests.integration.test_worker import SYNTH, events_of

SECRET = "s3cr3t-Pa55-" + unique("x")
ALICE = "alice-" + unique("pw")


def run_to_exit(w: WorkerProc, timeout: float = 60) -> int:
    assert w.proc is not None
    return w.proc.wait(timeout)


def feed_and_wait(
    w: WorkerProc,
    bootstrap: str,
    topic: str,
    out_topic: str,
    kafka_conf: dict[str, str] | None = None,
) -> None:
    """Produce 20 events and wait until the worker has forecast them all."""
    from stream_lstm.data.synthetic import synthetic_frame

    events = events_of(synthetic_frame(keys=2, rows=10, features=2, seed=1), SYNTH)
    if kafka_conf:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": bootstrap, **kafka_conf})
        for k, v in events:
            p.produce(topic, v, k)
        assert p.flush(30) == 0
    else:
        produce(bootstrap, topic, events)
    deadline = time.monotonic() + 60
    while w.metric("stream_lstm_forecasts_out_total") < len(events):
        assert time.monotonic() < deadline and w.alive(), w.log_text()[-3000:]
        time.sleep(0.2)


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that needs a password, with an ACL user `app` besides the default user."""
    srv = RedisServer(RedisSpec(run_dir=tmp_path / "redis", port=free_port(), password=SECRET))
    srv.start()
    srv.client().execute_command("ACL", "SETUSER", "app", "on", f">{SECRET}-app", "~*", "+@all")
    try:
        yield srv
    finally:
        srv.stop()


def test_redis_password_wrong_fails_fast_right_works_and_never_leaks(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    locked_redis: RedisServer,
) -> None:
    port = locked_redis.spec.port
    topics = make_topics(topic_factory, partitions=2)
    wrong = f"redis://:{SECRET}-wrong@127.0.0.1:{port}/0"
    w = WorkerProc(
        synth_model,
        services.bootstrap,
        wrong,
        topics,
        unique("g"),
        tmp_path,
        "--log-level",
        "DEBUG",
    ).start()
    t0 = time.monotonic()
    assert run_to_exit(w) == 1
    assert time.monotonic() - t0 < 30, "fails fast"
    log = w.log_text()
    assert f"error: Redis at redis://:***@127.0.0.1:{port}/0 refused the credentials" in log
    assert SECRET not in log

    missing = f"redis://127.0.0.1:{port}/0"
    w = WorkerProc(synth_model, services.bootstrap, missing, topics, unique("g"), tmp_path).start()
    assert run_to_exit(w) == 1
    assert "needs a password or ACL user in the URL" in w.log_text()

    for url in (
        f"redis://:{SECRET}@127.0.0.1:{port}/0",
        f"redis://app:{SECRET}-app@127.0.0.1:{port}/0",
    ):
        w = WorkerProc(
            synth_model,
            services.bootstrap,
            url,
            topics,
            unique("g"),
            tmp_path,
            "--log-level",
            "DEBUG",
        ).start()
        feed_and_wait(w, services.bootstrap, topics.input, topics.output)
        assert w.stop() == 0
        log = w.log_text()
        assert SECRET not in log, "the password never reaches the log"
        assert f"127.0.0.1:{port}" in log


# librdkafka properties that carry secrets; with security.protocol=PLAINTEXT librdkafka accepts
# and ignores them, so the worker runs on the plain session broker with all of them set
OAUTH = "oauth-" + unique("tok")
KAFKA_SECRETS = {
    "sasl.oauthbearer.config": f"principal=alice extension_traceId={OAUTH}-ext",
    "sasl.oauthbearer.client.secret": f"{OAUTH}-client",
    "ssl.key.pem": f"-----BEGIN PRIVATE KEY-----\n{OAUTH}-pem\n-----END PRIVATE KEY-----",
    "ssl.key.password": f"{OAUTH}-keypass",
    "ssl.keystore.password": f"{OAUTH}-storepass",
    "sasl.password": f"{OAUTH}-sasl",
}


def test_secrets_in_url_queries_and_kafka_options_never_reach_the_log(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    locked_redis: RedisServer,
) -> None:
    port = locked_redis.spec.port
    topics = make_topics(topic_factory, partitions=2)
    flags = [x for k, v in KAFKA_SECRETS.items() for x in ("--kafka-option", f"{k}={v}")]

    def no_secret_in(log: str) -> None:
        assert SECRET not in log, "the Redis password never reaches the log"
        assert OAUTH not in log, "no secret Kafka option reaches the log"
        assert "'sasl.oauthbearer.config': '***'" in log and "'ssl.key.pem': '***'" in log

    # the password in the URL's query, wrong: a clear error that shows the URL masked
    wrong = f"redis://127.0.0.1:{port}/0?password={SECRET}-wrong"
    w = WorkerProc(synth_model, services.bootstrap, wrong, topics, unique("g"), tmp_path,
                   *flags, "--log-level", "DEBUG").start()  # fmt: skip
    assert run_to_exit(w) == 1
    log = w.log_text()
    assert f"error: Redis at redis://127.0.0.1:{port}/0?password=*** refused the credentials" in log
    no_secret_in(log)

    # a client refusing the settings prints them: masked
    w = WorkerProc(synth_model, services.bootstrap, wrong, topics, unique("g"), tmp_path,
                   *flags, "--producer-option", "linger.ms=soon").start()  # fmt: skip
    assert run_to_exit(w) == 2
    log = w.log_text()
    assert "error: invalid Kafka producer settings" in log
    no_secret_in(log)

    # right: the worker runs (state written with the password from the query) and logs none
    for url in (
        f"redis://127.0.0.1:{port}/0?password={SECRET}",
        f"redis://127.0.0.1:{port}/0?username=app&password={SECRET}-app",
    ):
        w = WorkerProc(synth_model, services.bootstrap, url, topics, unique("g"), tmp_path,
                       *flags, "--log-level", "DEBUG").start()  # fmt: skip
        feed_and_wait(w, services.bootstrap, topics.input, topics.output)
        assert w.stop() == 0
        log = w.log_text()
        no_secret_in(log)
        assert f"state in Redis redis://127.0.0.1:{port}/0?" in log and "password=***" in log
    assert locked_redis.client().dbsize() > 0


def _tls_material(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    f = {
        n: d / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext.cnf")
    }
    f["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]),
        "-days", "1", "-subj", "/CN=stream-lstm test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["server.key"]), "-out", str(f["server.csr"]),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(f["server.csr"]), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
        "-CAcreateserial", "-out", str(f["server.crt"]), "-days", "1", "-extfile", str(f["ext.cnf"]))  # fmt: skip
    return f


def test_rediss_tls_with_password(
    services: Services, topic_factory: Callable[..., str], synth_model: Path, tmp_path: Path
) -> None:
    tls = _tls_material(tmp_path / "tls")
    tls_port = free_port()
    srv = RedisServer(
        RedisSpec(
            run_dir=tmp_path / "redis-tls",
            port=free_port(),
            password=SECRET,
            extra_args=(
                "--tls-port",
                str(tls_port),
                "--tls-cert-file",
                str(tls["server.crt"]),
                "--tls-key-file",
                str(tls["server.key"]),
                "--tls-ca-cert-file",
                str(tls["ca.crt"]),
                "--tls-auth-clients",
                "no",
            ),
        )
    )
    srv.start()
    try:
        url = f"rediss://:{SECRET}@127.0.0.1:{tls_port}/0?ssl_ca_certs={tls['ca.crt']}&ssl_cert_reqs=required"
        assert redis.Redis.from_url(url).ping()
        topics = make_topics(topic_factory, partitions=2)
        w = WorkerProc(synth_model, services.bootstrap, url, topics, unique("g"), tmp_path).start()
        feed_and_wait(w, services.bootstrap, topics.input, topics.output)
        assert w.stop() == 0
        assert SECRET not in w.log_text()
        assert srv.client().dbsize() > 0, "state was written over TLS"
    finally:
        srv.stop()


@pytest.fixture
def sasl_broker(tmp_path: Path) -> Iterator[tuple[KafkaBroker, str]]:
    """A broker with a SASL_PLAINTEXT listener (user alice) beside its plain one."""
    bp, cp, sp = free_port(), free_port(), free_port()
    jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="{ALICE}";'
    listeners = (
        f"PLAINTEXT://127.0.0.1:{bp},CONTROLLER://127.0.0.1:{cp},SASL_PLAINTEXT://127.0.0.1:{sp}"
    )
    broker = KafkaBroker(
        KafkaSpec(
            run_dir=tmp_path / "kafka-sasl",
            cache_dir=default_cache_dir(),
            broker_port=bp,
            controller_port=cp,
            heap="256m",
            extra_properties=(
                ("listeners", listeners),
                ("advertised.listeners", listeners),
                (
                    "listener.security.protocol.map",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
                ),
                ("sasl.enabled.mechanisms", "PLAIN"),
                ("listener.name.sasl_plaintext.plain.sasl.jaas.config", jaas),
            ),
        )
    )
    broker.start()
    try:
        yield broker, f"127.0.0.1:{sp}"
    finally:
        broker.stop()


def test_kafka_sasl_settings_reach_every_client(
    services: Services, synth_model: Path, tmp_path: Path, sasl_broker: tuple[KafkaBroker, str]
) -> None:
    broker, sasl_bootstrap = sasl_broker
    topics = _topics(broker.spec.bootstrap, partitions=2)  # created over the plain listener
    conf = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
    }
    flags = [x for k, v in conf.items() for x in ("--kafka-option", f"{k}={v}")]

    w = WorkerProc(synth_model, sasl_bootstrap, services.redis_url, topics, unique("g"), tmp_path,
                   *flags, "--kafka-option", f"sasl.password={ALICE}-wrong").start()  # fmt: skip
    assert run_to_exit(w) == 2
    log = w.log_text()
    assert f"error: Kafka at {sasl_bootstrap} refused the credentials" in log
    assert ALICE not in log

    w = WorkerProc(synth_model, sasl_bootstrap, services.redis_url, topics, unique("g"), tmp_path,
                   *flags, "--kafka-option", f"sasl.password={ALICE}", "--log-level", "DEBUG").start()  # fmt: skip
    feed_and_wait(w, sasl_bootstrap, topics.input, topics.output, {**conf, "sasl.password": ALICE})
    assert w.stop() == 0
    log = w.log_text()
    assert ALICE not in log, "sasl.password never reaches the log"
    assert "'sasl.password': '***'" in log
    # the consumer, the producer and the admin client all went through SASL: the forecasts and
    # the committed offsets are on the broker
    got = read_all(broker.spec.bootstrap, topics.output, 20)
    assert len(got) == 20


def test_metrics_bind_to_loopback_by_default_and_as_configured(
    services: Services, topic_factory: Callable[..., str], synth_model: Path
) -> None:
    from stream_lstm.drivers.confluent import Worker

    topics = make_topics(topic_factory, partitions=1)
    for addr, expect in ((None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")):
        kw = {"metrics_addr": addr} if addr else {}
        s = settings(synth_model, services.bootstrap, services.redis_url, topics, unique("g"), **kw)
        w = Worker(s)
        w.start()
        try:
            assert w.parts.health is not None
            assert w.parts.health.httpd.server_address[0] == expect
        finally:
            w.request_stop()
            w.run()
    dockerfile = (Path(__file__).parents[2] / "deploy" / "Dockerfile").read_text()
    assert "STREAM_LSTM_METRICS_ADDR=0.0.0.0" in dockerfile, (
        "the image serves metrics on all interfaces"
    )
