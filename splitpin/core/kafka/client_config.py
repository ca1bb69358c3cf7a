"""The one place Kafka client settings become a librdkafka configuration dict.

Every client splitpin creates (the flow's source and sink, producers, admin clients,
readers, replay, the demo, the benchmarks) starts from `client_config(settings)`, so a
managed Kafka (SASL/SSL, or any other librdkafka key) needs only `SPLITPIN_KAFKA__*`.

librdkafka reports a refused login asynchronously (an error callback, then metadata
requests that simply time out), so `AuthWatch` listens for it and `auth_failure` turns it
into a message naming the settings to check, never the password.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError

from splitpin.core.redaction import SECRETS
from splitpin.core.settings import KafkaClientSettings, Settings

CREDENTIAL_SETTINGS = "SPLITPIN_KAFKA__SASL_USERNAME / SPLITPIN_KAFKA__SASL_PASSWORD"
SECURITY_SETTINGS = "SPLITPIN_KAFKA__SECURITY_PROTOCOL / SPLITPIN_KAFKA__SASL_MECHANISM"

_SECRET_WORDS = ("password", "secret", "token")
"""An `extra` key containing one of these holds a secret: it is registered for redaction."""

_AUTH_CODES = frozenset(
    code
    for code in (
        getattr(KafkaError, "_AUTHENTICATION", None),
        getattr(KafkaError, "SASL_AUTHENTICATION_FAILED", None),
        getattr(KafkaError, "_SSL", None),
        getattr(KafkaError, "TOPIC_AUTHORIZATION_FAILED", None),
        getattr(KafkaError, "CLUSTER_AUTHORIZATION_FAILED", None),
    )
    if code is not None
)


def security_config(kafka: KafkaClientSettings) -> dict[str, Any]:
    """librdkafka keys for `kafka` (without bootstrap); secrets are registered for redaction."""
    config: dict[str, Any] = {}
    if kafka.security_protocol is not None:
        config["security.protocol"] = kafka.security_protocol
    if kafka.sasl_mechanism is not None:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        config["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        password = kafka.sasl_password.get_secret_value()
        SECRETS.register(password)
        config["sasl.password"] = password
    if kafka.ssl_ca_location is not None:
        config["ssl.ca.location"] = str(kafka.ssl_ca_location)
    for key, value in kafka.extra.items():
        if isinstance(value, str) and any(word in key.lower() for word in _SECRET_WORDS):
            SECRETS.register(value)
        config[key] = value
    return config


def client_config(settings: Settings) -> dict[str, Any]:
    """bootstrap.servers plus every security and extra key: the base of every client."""
    return {"bootstrap.servers": settings.bootstrap_servers, **security_config(settings.kafka)}


def is_auth_error(error: KafkaError) -> bool:
    """True for a refused login or TLS handshake, or a missing authorisation."""
    return error.code() in _AUTH_CODES


class AuthWatch:
    """An `error_cb` that remembers the first authentication failure a client reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: str | None = None

    def __call__(self, error: KafkaError) -> None:
        if is_auth_error(error):
            with self._lock:
                if self._error is None:
                    self._error = SECRETS.redact(str(error.str()))

    @property
    def error(self) -> str | None:
        """librdkafka's text of the failure (redacted), or None while none was seen."""
        with self._lock:
            return self._error


def auth_failure(bootstrap: str, reason: str) -> str:
    """The message for a refused login: says "authentication failed" and names the settings."""
    return (
        f"Kafka authentication failed at {bootstrap} ({SECRETS.redact(reason)}); check "
        f"{CREDENTIAL_SETTINGS} and {SECURITY_SETTINGS}"
    )
