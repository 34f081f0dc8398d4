"""Secrets kept out of logs and error messages: the one place that masks them.

Two functions, used by every caller that shows a URL or librdkafka settings:

- :func:`redact_url` masks the credentials of a URL (``redis://``, ``rediss://``, ``unix://`` or any
  other): the password of ``user:password@``, a whole userinfo without a colon (``token@host``),
  and the values of query or fragment parameters that name a secret (``?password=…``,
  ``&token=…``).
- :func:`redact_kafka` masks the values of librdkafka properties that can carry a secret
  (by pattern, so Java-style names and future properties are covered too), and redacts URLs in
  the others (``sasl.oauthbearer.token.endpoint.url``).

:func:`scrub` masks those secret values in the text of a client library's error message. All
are plain functions without dependencies, so the settings, the Kafka client and the state store
can use them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"

# librdkafka properties whose values are secrets (librdkafka's own _RK_SENSITIVE ones and more):
# passwords and passphrases (sasl.password, ssl.key.password, ssl.keystore.password,
# sasl.oauthbearer.assertion.private.key.passphrase), client secrets
# (sasl.oauthbearer.client.secret and its alias …client.credentials.client.secret), inline PEM
# keys and certificates (ssl.key.pem, ssl.certificate.pem, ssl.ca.pem, https.ca.pem,
# sasl.oauthbearer.assertion.private.key.pem), the OAUTHBEARER config and extensions (they carry
# tokens and extension_NAME=value pairs), ssl_key, Java-style keystore and truststore material
# (ssl.keystore.key, ssl.keystore.certificate.chain, ssl.truststore.certificates; their
# .location and .type are shown), JAAS configs, tokens, credentials and API keys.
_SECRET_KAFKA_KEY = re.compile(
    r"password|passwd|passphrase|(^|[._])pass([._]|$)|secret|credential|jaas|api[._-]?key"
    r"|token(?!\.endpoint\.url$)"
    r"|\.pem$|^ssl_key$"
    r"|^sasl\.oauthbearer\.(config|extensions)$"
    r"|^ssl\.(keystore|truststore)\.(?!location$|type$)"
)

# URL query/fragment parameters whose values are secrets: password=, pass=, pwd=, secret=,
# token=, access_token=, auth=, apikey=, api_key=, sasl_password=, credentials=, sig=, …
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|key|credential|^sig$|signature")


def is_secret_kafka_key(name: str) -> bool:
    """Whether librdkafka property ``name`` may carry a secret (its value is never shown)."""
    return _SECRET_KAFKA_KEY.search(name.strip().lower()) is not None


def redact_kafka(conf: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings as they may be logged: secret values masked, URLs in the other values
    redacted, objects (callbacks, the logger) left out."""
    shown: dict[str, Any] = {}
    for k, v in conf.items():
        if not isinstance(v, str | int | float | bool):
            continue
        if is_secret_kafka_key(k):
            shown[k] = MASK
        elif isinstance(v, str) and "://" in v:
            shown[k] = redact_url(v)
        else:
            shown[k] = v
    return shown


def scrub(text: str, conf: Mapping[str, Any]) -> str:
    """``text`` (a client library's error message) with the secret values of ``conf`` masked,
    in case the library quotes one."""
    for k, v in conf.items():
        if isinstance(v, str) and len(v) >= 3 and is_secret_kafka_key(k):
            text = text.replace(v, MASK)
    return text


def _redact_params(text: str) -> str:
    """``a=1&password=x`` → ``a=1&password=***`` (the separators and other values kept)."""
    out = []
    for part in re.split(r"([&;])", text):
        name, eq, _ = part.partition("=")
        secret = eq and _SECRET_PARAM.search(unquote(name).lower())
        out.append(f"{name}={MASK}" if secret else part)
    return "".join(out)


def redact_url(url: str) -> str:
    """A URL with its credentials masked, safe for logs and errors.

    ``redis://user:secret@host`` → ``redis://user:***@host``; ``redis://:secret@host`` →
    ``redis://:***@host``; ``redis://secret@host`` (userinfo without a colon, a password or token
    on its own) → ``redis://***@host``; ``redis://host/0?password=secret`` →
    ``redis://host/0?password=***``. Works for any scheme (``rediss://``, ``unix://``, …) and
    for ``user:secret@host:port`` without a scheme. A password with an unencoded ``/``, ``?``
    or ``#`` (which URL parsers misread as the start of the path, query or fragment) is masked
    up to the last ``@`` (over-masking a URL whose query holds an ``@``: safe for logs).
    """
    m = re.match(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//", url)
    if m and "@" in url[m.end() :]:
        userinfo, _, after = url[m.end() :].rpartition("@")
        if any(c in userinfo for c in "/?#"):
            user, colon, _ = userinfo.partition(":")
            shown = f"{user}:x" if colon and not any(c in user for c in "/?#") else "x"
            return redact_url(f"{url[: m.end()]}{shown}@{after}")
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.netloc:
        head = f"{parts.scheme}://" if parts.scheme else "//"
        userinfo, at, host = parts.netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
        else:
            netloc = host
        rest = parts.path
    else:  # no "//": "user:secret@host:port/0" or a bare path
        head, netloc = "", ""
        before = url.split("?", 1)[0].split("#", 1)[0]
        userinfo, at, rest = before.rpartition("@")
        rest = f"{MASK}@{rest}" if at else before
    if parts.query:
        rest += "?" + _redact_params(parts.query)
    if parts.fragment:
        rest += "#" + _redact_params(parts.fragment)
    return head + netloc + rest


def url_has_credentials(url: str) -> bool:
    """Whether ``url`` carries a password, token or other secret (anything redact_url masks)."""
    return redact_url(url) != url
