"""Secrets never shown: the one URL redactor and the one librdkafka-settings redactor, and the
places that show settings (the worker's options line, client errors, option parsing) use them."""

from __future__ import annotations

import logging

import pytest

from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.errors import ConfigError
from stream_lstm.redact import (
    MASK,
    is_secret_kafka_key,
    redact_kafka,
    redact_url,
    scrub,
    url_has_credentials,
)

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # userinfo: user:password, :password, a password (or token) on its own
        ("redis://:hunter2-Zq9@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://app:hunter2-Zq9@cache.example:6380/1", "rediss://app:***@cache.example:6380/1"),
        ("redis://hunter2-Zq9@h:6379/0", "redis://***@h:6379/0"),
        ("redis://app:@h/0", "redis://app:***@h/0"),
        ("redis://:p@ss-hunter2-Zq9@h/0", "redis://:***@h/0"),  # an unescaped @ in the password
        ("redis://:hunter2-Zq9@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("unix://:hunter2-Zq9@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        # query parameters that carry a secret; the others and their order are kept
        ("redis://127.0.0.1:6379/0?password=hunter2-Zq9", "redis://127.0.0.1:6379/0?password=***"),
        (
            "rediss://h:6380/0?ssl_cert_reqs=required&password=hunter2-Zq9&db=2",
            "rediss://h:6380/0?ssl_cert_reqs=required&password=***&db=2",
        ),
        (
            "unix:///run/redis.sock?db=0&password=hunter2-Zq9",
            "unix:///run/redis.sock?db=0&password=***",
        ),
        (
            "redis://h/0?pass=hunter2-Zq9;token=hunter2-Zq9&secret=hunter2-Zq9",
            "redis://h/0?pass=***;token=***&secret=***",
        ),
        ("redis://h/0?sasl_password=hunter2-Zq9", "redis://h/0?sasl_password=***"),
        ("redis://h/0?Password=hunter2-Zq9", "redis://h/0?Password=***"),
        ("redis://h/0?pass%77ord=hunter2-Zq9", "redis://h/0?pass%77ord=***"),  # "password", quoted
        ("redis://u:hunter2-Zq9@h/0?password=hunter2-Zq9", "redis://u:***@h/0?password=***"),
        (
            "https://idp.example/token?client_secret=hunter2-Zq9#access_token=hunter2-Zq9&x=1",
            "https://idp.example/token?client_secret=***#access_token=***&x=1",
        ),
        (
            "https://h/p?api_key=hunter2-Zq9&apikey=hunter2-Zq9",
            "https://h/p?api_key=***&apikey=***",
        ),
        ("user:hunter2-Zq9@h:6379", "***@h:6379"),  # no scheme
        # unencoded / ? # in a password (URL parsers take them for the path, query, fragment)
        ("redis://u:hunter2-Zq9/pa/ss@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://u:hunter2#Zq9@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:hunter2?Zq9@h/0?password=hunter2-Zq9", "redis://:***@h/0?password=***"),
        ("redis://hunter2-Zq9/x@h/0", "redis://***@h/0"),
        # nothing to hide: unchanged
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h/0?db=1&ssl_cert_reqs=none", "redis://h/0?db=1&ssl_cert_reqs=none"),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
        ("rediss://[::1]:6380/0", "rediss://[::1]:6380/0"),
        # unparseable: nothing of it is shown
        ("redis://:hunter2-Zq9@[::1/0", "<unparseable url>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)
    assert url_has_credentials(url) == (url != shown)


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.truststore.password",
        "ssl.key.pem",
        "ssl.certificate.pem",
        "ssl.ca.pem",
        "https.ca.pem",
        "ssl_key",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.extensions",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.jaas.config",
        "ssl.keystore.key",
        "ssl.keystore.certificate.chain",
        "ssl.truststore.certificates",
        "sasl.oauthbearer.token",
        "SASL.PASSWORD",
    ],
)
def test_secret_kafka_properties(key: str) -> None:
    assert is_secret_kafka_key(key)
    assert redact_kafka({key: SECRET, "client.id": "c"}) == {key: MASK, "client.id": "c"}


@pytest.mark.parametrize(
    "key",
    [
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "ssl.ca.location",
        "ssl.key.location",
        "ssl.certificate.location",
        "ssl.keystore.location",
        "ssl.keystore.type",
        "ssl.truststore.location",
        "sasl.oauthbearer.method",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.token.endpoint.url",
        "session.timeout.ms",
        "linger.ms",
        "client.id",
    ],
)
def test_other_kafka_properties_are_shown(key: str) -> None:
    assert not is_secret_kafka_key(key)
    assert redact_kafka({key: "v"}) == {key: "v"}


def test_redact_kafka_redacts_urls_in_values_and_drops_objects() -> None:
    conf = {
        "sasl.oauthbearer.token.endpoint.url": f"https://svc:{SECRET}@idp.example/token",
        "bootstrap.servers": "b1:9092,b2:9092",
        "logger": logging.getLogger("librdkafka"),
        "on_delivery": lambda *a: None,
        "linger.ms": 2,
    }
    assert redact_kafka(conf) == {
        "sasl.oauthbearer.token.endpoint.url": "https://svc:***@idp.example/token",
        "bootstrap.servers": "b1:9092,b2:9092",
        "linger.ms": 2,
    }


def test_scrub_masks_secret_values_quoted_by_a_client() -> None:
    conf = {"sasl.password": SECRET, "sasl.mechanism": "PLAIN"}
    text = f'Invalid value "{SECRET}" for "sasl.password"; mechanism PLAIN'
    assert scrub(text, conf) == 'Invalid value "***" for "sasl.password"; mechanism PLAIN'


def test_worker_shows_every_option_map_through_the_one_redactor() -> None:
    s = build_settings(
        WorkerSettings,
        model="m",
        kafka_options=[f"sasl.oauthbearer.config=principal=a extension_t={SECRET}"],
        consumer_options=[f"ssl.key.pem={SECRET}", "session.timeout.ms=7000"],
        producer_options=[f"sasl.oauthbearer.client.secret={SECRET}"],
    )
    shown = s.kafka_shown()
    assert shown == {
        "sasl.oauthbearer.config": MASK,
        "ssl.key.pem": MASK,
        "session.timeout.ms": "7000",
        "sasl.oauthbearer.client.secret": MASK,
    }
    assert SECRET not in repr(s), "the option maps stay out of the settings' repr"


def test_a_malformed_secret_option_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        build_settings(WorkerSettings, model="m", kafka_options=[f"sasl.password:{SECRET}"])
    assert SECRET not in str(e.value)
    assert "--kafka-option / STREAM_LSTM_KAFKA_OPTIONS" in str(e.value)
    with pytest.raises(ConfigError, match="expected key=value, got 'nonsense'"):
        build_settings(WorkerSettings, model="m", kafka_options=["nonsense"])


def test_client_errors_show_the_settings_without_secrets() -> None:
    from stream_lstm.drivers.kafka_client import cluster_metadata, make_consumer, make_producer

    options = {"sasl.password": SECRET, "ssl.key.pem": SECRET, "socket.timeout.ms": "abc"}
    for make in (
        lambda: make_producer("127.0.0.1:1", options, lambda err, msg: None),
        lambda: make_consumer("127.0.0.1:1", "g", options),
        lambda: cluster_metadata("127.0.0.1:1", options),
    ):
        with pytest.raises(ConfigError) as e:
            make()  # librdkafka refuses socket.timeout.ms=abc when the client is made
        text = str(e.value)
        assert "Invalid value for configuration property" in text
        assert "'sasl.password': '***'" in text and "'ssl.key.pem': '***'" in text
        assert SECRET not in text


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:hunter2-Zq9/pa/ss@127.0.0.1:6379/0",  # once: "Port could not be cast …"
        "redis://u:hunter2#Zq9@127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?Password=hunter2-Zq9",  # once: a TypeError traceback
        "redis://127.0.0.1:6379/0?authtoken=hunter2-Zq9",
    ],
)
def test_a_redis_url_redis_py_cannot_use_is_a_configuration_error_without_its_secret(
    url: str,
) -> None:
    from stream_lstm.errors import ConfigError
    from stream_lstm.stores.record import Layout
    from stream_lstm.stores.redis import RedisStateStore

    with pytest.raises(ConfigError) as e:  # no network: refused before any connection
        RedisStateStore(url, "ns", Layout("v", 1, 1, 1, 1)).connect()
    assert SECRET not in str(e.value)
    assert e.value.exit_code == 2
