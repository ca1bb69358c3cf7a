"""Kafka client settings reach every client, and the SASL password never shows.

`client_config(settings)` is the one translation of `Settings.kafka` into librdkafka keys;
a source scan checks that no client splitpin creates is built from a literal dict that
leaves it out (today's bug: settings hard-coded in four places). The password is a
secret: not in dumps, reprs, validation errors or the refused-login message, and a
password with a stray newline stops start-up naming the variable.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from unittest import mock

import pytest
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from splitpin.core.kafka.broker import render_server_properties
from splitpin.core.kafka.client_config import (
    CREDENTIAL_SETTINGS,
    AuthWatch,
    auth_failure,
    client_config,
    security_config,
)
from splitpin.core.kafka.producer import producer_config
from splitpin.core.redaction import REDACTED, SECRETS, check_secret_env
from splitpin.core.settings import REPO_ROOT, BrokerSettings, KafkaClientSettings, Settings
from splitpin.errors import ConfigError
from tests.unit.test_broker_config import parse_properties

passwords = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_categories=("C", "Z")),
    min_size=8,
    max_size=40,
)
# The local broker's JAAS line: printable ASCII without the characters that would break it.
broker_passwords = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='"\\;='),
    min_size=8,
    max_size=40,
)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=16)
OWNED = {
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "logger",
    "error_cb",
}
extra_keys = st.from_regex(r"[a-z]{2,8}(\.[a-z]{2,8}){1,3}", fullmatch=True).filter(
    lambda key: key not in OWNED and not any(w in key for w in ("password", "secret", "token"))
)
extra_values = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz_0123456789", max_size=12),
    st.integers(0, 10**6),
    st.booleans(),
)
kafka_sections = st.builds(
    KafkaClientSettings,
    security_protocol=st.sampled_from([None, "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
    sasl_mechanism=st.sampled_from([None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    sasl_username=st.none() | names,
    sasl_password=st.none() | passwords.map(SecretStr),
    ssl_ca_location=st.none() | st.just(Path("/etc/ssl/certs/ca.pem")),
    extra=st.dictionaries(extra_keys, extra_values, max_size=4),
)


@given(kafka=kafka_sections, bootstrap=st.sampled_from(["b1:9092", "b1:9096,b2:9096"]))
@settings(max_examples=150)
def test_every_setting_becomes_its_librdkafka_key(
    kafka: KafkaClientSettings, bootstrap: str
) -> None:
    config = client_config(Settings(bootstrap_servers=bootstrap, kafka=kafka))
    expected: dict[str, object] = {"bootstrap.servers": bootstrap, **kafka.extra}
    for field, key in (
        ("security_protocol", "security.protocol"),
        ("sasl_mechanism", "sasl.mechanism"),
        ("sasl_username", "sasl.username"),
    ):
        if getattr(kafka, field) is not None:
            expected[key] = getattr(kafka, field)
    if kafka.sasl_password is not None:
        expected["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_ca_location is not None:
        expected["ssl.ca.location"] = str(kafka.ssl_ca_location)
    assert config == expected
    # The producer keeps every security key and the bootstrap it was given.
    produced = producer_config(bootstrap, 10_000, **security_config(kafka))
    assert produced.items() >= config.items()


@given(password=passwords, filler=st.text(max_size=20))
@settings(max_examples=100)
def test_the_password_is_registered_and_never_shown(password: str, filler: str) -> None:
    kafka = KafkaClientSettings(sasl_username="u", sasl_password=SecretStr(password))
    security_config(kafka)
    text = f"{filler}sasl.password={password}{filler} {password!r}"
    assert password not in SECRETS.redact(text)
    # What a dump or repr shows does not depend on the password at all.
    other = KafkaClientSettings(sasl_username="u", sasl_password=SecretStr(password + "x"))
    for show in (repr, str, KafkaClientSettings.model_dump_json):
        assert show(kafka) == show(other)
    assert repr(Settings(kafka=kafka)) == repr(Settings(kafka=other))
    message = auth_failure("b:9096", f"SASL authentication error with {password}")
    assert password not in message
    assert "authentication failed" in message
    assert "SPLITPIN_KAFKA__SASL_PASSWORD" in message


@given(password=passwords, extra=st.dictionaries(extra_keys, extra_values, max_size=3))
@settings(max_examples=50)
def test_a_child_process_loads_the_same_kafka_settings(
    password: str, extra: dict[str, str | int | bool]
) -> None:
    """`splitpin run` as a child (demo, tests) must get the real password, not '**********'."""
    kafka = KafkaClientSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="splitpin",
        sasl_password=SecretStr(password),
        extra=extra,
    )
    env = Settings(kafka=kafka).child_env({})
    assert env["SPLITPIN_KAFKA__SASL_PASSWORD"] == password
    with mock.patch.dict(os.environ, env, clear=True):
        child = Settings()
    assert child.kafka == kafka


def test_the_environment_names_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITPIN_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SPLITPIN_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SPLITPIN_KAFKA__SASL_USERNAME", "svc-splitpin")
    monkeypatch.setenv("SPLITPIN_KAFKA__SASL_PASSWORD", "pw-from-env-1")
    monkeypatch.setenv("SPLITPIN_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("SPLITPIN_KAFKA__EXTRA", '{"client.dns.lookup":"use_all_dns_ips"}')
    assert security_config(Settings().kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-splitpin",
        "sasl.password": "pw-from-env-1",
        "ssl.ca.location": "/etc/ca.pem",
        "client.dns.lookup": "use_all_dns_ips",
    }


@pytest.mark.parametrize("key", sorted(OWNED))
def test_extra_cannot_override_a_key_with_its_own_setting(key: str) -> None:
    with pytest.raises(ValidationError, match="not through extra") as info:
        KafkaClientSettings(extra={key: "hidden-value-9"})
    assert "hidden-value-9" not in str(info.value.errors(include_input=False))


def test_an_extra_secret_is_redacted_too() -> None:
    security_config(KafkaClientSettings(extra={"ssl.key.password": "key-pass-77"}))
    assert "key-pass-77" not in SECRETS.redact("bad ssl.key.password key-pass-77")


@pytest.mark.parametrize("junk", ["\n", " ", "\r\n", "\x00"])
def test_a_password_with_whitespace_stops_start_up_naming_the_variable(junk: str) -> None:
    password = "right-pass-123" + junk
    with pytest.raises(ConfigError) as info:
        check_secret_env({"SPLITPIN_KAFKA__SASL_PASSWORD": password})
    assert "SPLITPIN_KAFKA__SASL_PASSWORD" in str(info.value)
    assert "right-pass-123" not in str(info.value)


def test_auth_watch_keeps_the_first_refused_login_only() -> None:
    SECRETS.register("leaked-pass-42")
    watch = AuthWatch()
    watch(KafkaError(KafkaError._TRANSPORT, "broker down"))
    watch(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    before = watch.error
    assert before is None
    watch(KafkaError(KafkaError._AUTHENTICATION, "Invalid username or password leaked-pass-42"))
    watch(KafkaError(KafkaError._AUTHENTICATION, "second"))
    error = watch.error
    assert error is not None
    assert error == f"Invalid username or password {REDACTED}"
    assert CREDENTIAL_SETTINGS in auth_failure("b:1", error)


@given(
    users=st.dictionaries(names, broker_passwords, min_size=1, max_size=3),
    port=st.integers(1024, 65535),
)
@settings(max_examples=50)
def test_the_local_broker_accepts_its_sasl_users(users: dict[str, str], port: int) -> None:
    broker = BrokerSettings(port=1, controller_port=2, sasl_port=port, sasl_users=users)
    props = parse_properties(render_server_properties(broker, Path("/d")))
    assert f"SASL_PLAINTEXT://127.0.0.1:{port}" in props["listeners"].split(",")
    assert f"SASL_PLAINTEXT://127.0.0.1:{port}" in props["advertised.listeners"].split(",")
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    jaas = props["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    for name, password in users.items():
        assert f'user_{name}="{password}"' in jaas
    assert jaas.endswith(";")


def test_no_sasl_listener_unless_asked() -> None:
    props = parse_properties(render_server_properties(BrokerSettings(), Path("/d")))
    assert "SASL" not in props["listeners"]
    assert not any(key.startswith(("sasl.", "listener.name.")) for key in props)


@pytest.mark.parametrize(
    "bad", ['pa"ss-word', "pass;word1", "pass word1", "pass\\word", "pässword1", "pw\x7fxxxxx", ""]
)
def test_a_password_that_would_break_the_jaas_line_is_refused_unquoted(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        BrokerSettings(sasl_users={"alice": bad})
    assert "alice" in str(info.value.errors(include_input=False))
    if bad:
        assert bad not in str(info.value.errors(include_input=False)[0]["msg"])


# -- every client takes the settings ----------------------------------------------------

CLIENTS = {"Consumer", "Producer", "AdminClient", "KafkaSource"}
SOURCES = ("splitpin", "flows", "operators", "bench")


def _client_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for folder in SOURCES:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", None))
                    if name in CLIENTS:
                        calls.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", node))
    return calls


def _carries_settings(call: ast.Call) -> bool:
    """The config is not a closed literal: a dict with a `**` splat, a call, a name, or (for
    KafkaSource) an add_config with a splat."""
    if any(kw.arg == "add_config" for kw in call.keywords):
        config = next(kw.value for kw in call.keywords if kw.arg == "add_config")
        return isinstance(config, ast.Dict) and None in config.keys
    if not call.args:
        return False
    config = call.args[0]
    return not isinstance(config, ast.Dict) or None in config.keys


def test_no_kafka_client_is_built_from_a_closed_literal_config() -> None:
    calls = _client_calls()
    assert len(calls) >= 8, "the scan should find splitpin's Kafka clients"
    closed = [where for where, call in calls if not _carries_settings(call)]
    assert closed == [], f"clients built without client_config(settings): {closed}"
