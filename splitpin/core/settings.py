"""Runtime settings: one frozen pydantic-settings model, overridable by environment.

Every variable is `SPLITPIN_<FIELD>`; nested fields use `__`, e.g.
`SPLITPIN_TOPICS__EVENTS=my.events` or `SPLITPIN_BROKER__PORT=19092`.
`KAFKA_BOOTSTRAP_SERVERS` is accepted as an alias for the bootstrap servers so the
same variable drives the tests, the CLI and docker-compose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitpin.defaults import GOVERNANCE_FILE
from splitpin.errors import ConfigError, describe_validation_error
from splitpin.schemas.governance import GovernanceConfig, load_governance

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout, when there is one: only the demo, sample builder and training use it."""


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "splitpin"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "splitpin"


class TopicNames(BaseModel):
    """Logical topic names; `Settings.topic()` applies the prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: str = Field(default="conversations.events", description="In: ConversationEvent.")
    replies: str = Field(default="conversations.replies", description="Reply revisions.")
    decisions: str = Field(default="routing.decisions", description="RoutingDecision.")
    validation_failures: str = Field(
        default="replies.validation-failures", description="ValidationFailure."
    )
    metrics: str = Field(default="routing.metrics", description="CostRecord per model call.")
    replies_audit: str = Field(
        default="replies.audit",
        description="AuditSample: an audited fast answer and whether the verifier agreed.",
    )
    metrics_windowed: str = Field(
        default="routing.metrics.windowed", description="Per tenant x model x minute."
    )
    dead_letter: str = Field(
        default="conversations.dead-letter", description="Malformed input, with reasons."
    )
    governance: str = Field(
        default="governance",
        description="Compacted: the applied governance config (key `current`), a held one "
        "(key `pending`).",
    )
    governance_audit: str = Field(
        default="governance.audit", description="GovernanceAudit: every applied or held change."
    )


class BrokerSettings(BaseModel):
    """The local Apache Kafka broker (KRaft, combined mode) run from Maven Central jars."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_version: str = Field(default="4.1.1", description="org.apache.kafka:kafka_2.13 version.")
    host: str = Field(default="127.0.0.1", description="Listen and advertise on this address.")
    port: int = Field(default=9092, ge=1, le=65535, description="Client (PLAINTEXT) port.")
    controller_port: int = Field(default=9093, ge=1, le=65535, description="KRaft controller.")
    state_dir: Path = Field(
        default_factory=lambda: _state_home() / "broker",
        description="Config, data (log.dirs), pid file and logs.",
    )
    jar_cache_dir: Path = Field(
        default_factory=lambda: _cache_home() / "kafka",
        description="Jars resolved from Maven Central, once per version.",
    )
    heap: str = Field(default="512m", description="JVM -Xmx.")
    start_timeout_s: float = Field(default=60.0, gt=0, description="Wait this long to answer.")
    sasl_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also listen with SASL_PLAINTEXT (mechanism PLAIN) on this port; the "
        "PLAINTEXT port stays for the controller and readiness checks.",
    )
    sasl_users: dict[str, str] = Field(
        default_factory=dict,
        description='User -> password accepted on the SASL port, e.g. \'{"splitpin":"pw"}\'.',
    )

    @field_validator("sasl_users")
    @classmethod
    def _jaas_safe(cls, users: dict[str, str]) -> dict[str, str]:
        """Names and passwords are written into a JAAS line of server.properties (read by
        Java as ISO-8859-1): printable ASCII only, without quotes, backslashes, `;` or `=`
        (the error never quotes a password)."""
        for name, password in users.items():
            for what, value in (("user name", name), ("password", password)):
                if not value or any(ch in '"\\;=' or not "!" <= ch <= "~" for ch in value):
                    shown = repr(name) if what == "user name" else f"of {name!r}"
                    msg = f"sasl_users: {what} {shown} is empty or not printable ASCII "
                    msg += "without quotes, backslashes, ';' or '='"
                    raise ValueError(msg)
        return users


class KafkaClientSettings(BaseModel):
    """Security and any other librdkafka setting for every Kafka client splitpin creates.

    `splitpin.core.kafka.client_config.client_config` turns this into the client dict; the
    password stays a SecretStr so no dump, repr or log line shows it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        default=None, description="librdkafka security.protocol (default: PLAINTEXT)."
    )
    sasl_mechanism: str | None = Field(
        default=None, description="sasl.mechanism, e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512."
    )
    sasl_username: str | None = Field(default=None, description="sasl.username.")
    sasl_password: SecretStr | None = Field(
        default=None, description="sasl.password; never logged or shown."
    )
    ssl_ca_location: Path | None = Field(
        default=None, description="ssl.ca.location: CA bundle to verify the brokers."
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description='Any other librdkafka client key, as JSON: \'{"client.dns.lookup":'
        '"use_all_dns_ips"}\'. Applied last, to every client.',
    )

    @field_validator("extra")
    @classmethod
    def _not_owned(
        cls, extra: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        """Keys with their own setting are refused here, so each has one source of truth."""
        owned = {
            "bootstrap.servers": "SPLITPIN_BOOTSTRAP_SERVERS",
            "security.protocol": "SPLITPIN_KAFKA__SECURITY_PROTOCOL",
            "sasl.mechanism": "SPLITPIN_KAFKA__SASL_MECHANISM",
            "sasl.mechanisms": "SPLITPIN_KAFKA__SASL_MECHANISM",
            "sasl.username": "SPLITPIN_KAFKA__SASL_USERNAME",
            "sasl.password": "SPLITPIN_KAFKA__SASL_PASSWORD",
            "ssl.ca.location": "SPLITPIN_KAFKA__SSL_CA_LOCATION",
            "logger": "splitpin's own logger",
            "error_cb": "splitpin's own error callback",
        }
        clashes = [f"{key} (use {owned[key]})" for key in extra if key in owned]
        if clashes:
            msg = f"extra: set {', '.join(clashes)}, not through extra"
            raise ValueError(msg)
        return extra


class Settings(BaseSettings):
    """Everything a splitpin process needs to know at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITPIN_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("SPLITPIN_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Comma-separated host:port list of Kafka brokers.",
    )
    topic_prefix: str = Field(default="", description="Prepended to every topic name.")
    topics: TopicNames = Field(default_factory=TopicNames)
    partitions: int = Field(default=3, ge=1, description="Partitions per topic on create.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas per topic on create.")

    recovery_dir: Path = Field(
        default=Path(".splitpin/recovery"), description="Bytewax snapshot partitions (SQLite)."
    )
    recovery_partitions: int = Field(
        default=1, ge=1, description="Partitions created on first run; fixed afterwards."
    )
    snapshot_interval_s: float = Field(default=2.0, gt=0, description="Epoch/snapshot length.")
    governance_poll_s: float = Field(
        default=5.0,
        ge=0,
        description="How often `splitpin run` checks the governance topic; on a new version "
        "it lets the sink's batch finish and re-executes itself, resuming from the last "
        "snapshot under the new version. 0: only at start-up.",
    )
    backup_interval_s: float = Field(
        default=0.0, ge=0, description="Keep superseded snapshots this long (for backups)."
    )

    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0 disables the endpoint.")
    canary_recovery_dir: Path = Field(
        default=Path(".splitpin/canary-recovery"),
        description="`splitpin run --canary`: the canary's own snapshots (never the primary's).",
    )
    canary_metrics_port: int = Field(
        default=9465, ge=0, le=65535, description="`splitpin run --canary`: its metrics port."
    )
    max_event_bytes: int = Field(
        default=64 * 1024, ge=256, description="Larger events dead-letter."
    )
    source_batch_size: int = Field(default=200, ge=1, description="Max records per poll.")
    sink_flush_timeout_s: float = Field(
        default=30.0, gt=0, description="A batch not acknowledged by then stops the flow."
    )
    delivery_timeout_ms: int = Field(
        default=30_000, ge=1_000, description="librdkafka delivery.timeout.ms for producers."
    )
    max_future_skew_s: float = Field(
        default=86_400.0,
        gt=0,
        description="Events whose sent_at is later than their Kafka timestamp by more than "
        "this are dead-lettered (event_time_skew).",
    )
    max_past_skew_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Events whose sent_at is earlier than their Kafka timestamp by more than "
        "this are dead-lettered (event_time_skew). `splitpin replay --restamp` moves recorded "
        "traffic to now.",
    )
    dead_letter_max_bytes: int = Field(
        default=512 * 1024,
        ge=4096,
        description="A dead letter never exceeds this encoded; a larger raw value is truncated "
        "(its size and sha256 kept). Must stay under the producer's and broker's "
        "message.max.bytes.",
    )
    answering: bool = Field(
        default=True,
        description="Answer dispatched events with the model roles (replies, costs, audit). "
        "false: a routing-only deployment that publishes decisions and refusals but calls "
        "no model and writes no reply.",
    )
    call_threads: int = Field(
        default=2,
        ge=1,
        description="Threads for the blocking part of model calls (the local fleet's "
        "retrieval and responders, prompt preparation). More than the cores only take the "
        "GIL from the worker thread and delay decisions.",
    )
    switch_interval_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Python's GIL switch interval in the flow process (sys.setswitchinterval; "
        "Python's default is 5): how long the worker thread may wait for the GIL while a "
        "call thread computes, each time it takes it back.",
    )
    on_processing_error: Literal["dead_letter", "stop"] = Field(
        default="dead_letter",
        description="A stage that raises for one record: dead-letter it (processing_error) "
        "and go on, or stop the flow.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Level of splitpin's own log lines on stderr."
    )
    startup_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="`splitpin run` exits non-zero unless the brokers answer and every topic "
        "exists within this long.",
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="After SIGINT/SIGTERM the flow waits this long for the sink's batch in "
        "progress to be acknowledged, then exits (non-zero if it was not); the restart "
        "resumes from the last snapshot, so nothing is lost either way.",
    )
    log_repeat_window_s: float = Field(
        default=10.0,
        gt=0,
        description="Repeats of a Kafka client log line within this window are counted and "
        "summarised in one line instead of printed.",
    )

    governance_path: Path | None = Field(
        default=None,
        description="Model roles, pins, prices, thresholds; default: the governance file "
        "shipped in the package (config/governance.yaml in a checkout; `splitpin config "
        "init` writes an editable copy).",
    )
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    kafka: KafkaClientSettings = Field(default_factory=KafkaClientSettings)

    def topic(self, name: str) -> str:
        """The physical topic for a logical name in `TopicNames`."""
        return self.topic_prefix + str(getattr(self.topics, name))

    def all_topics(self) -> dict[str, str]:
        """Logical name -> physical topic for every topic the flow uses."""
        return {name: self.topic(name) for name in TopicNames.model_fields}

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment in which a child `splitpin` process loads exactly these settings.

        Inherited SPLITPIN_* and KAFKA_BOOTSTRAP_SERVERS values are dropped so none of
        them can override what is set here. The broker section is left out: it concerns
        `splitpin broker`, not the processes that talk to a broker.
        """
        inherited = os.environ if base is None else base
        env = {
            name: value
            for name, value in inherited.items()
            if not name.startswith("SPLITPIN_") and name != "KAFKA_BOOTSTRAP_SERVERS"
        }
        for name, value in self.model_dump(exclude={"broker"}).items():
            if value is None:
                continue
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    if subvalue is None:
                        continue
                    if isinstance(subvalue, SecretStr):  # the child needs the real value
                        subvalue = subvalue.get_secret_value()
                    elif isinstance(subvalue, dict):
                        subvalue = json.dumps(subvalue)
                    env[f"SPLITPIN_{name.upper()}__{sub.upper()}"] = str(subvalue)
            else:
                env[f"SPLITPIN_{name.upper()}"] = str(value)
        return env

    @property
    def governance_file(self) -> Path:
        """The governance file in force: the configured one, else the packaged default."""
        return self.governance_path or GOVERNANCE_FILE

    @cached_property
    def governance(self) -> GovernanceConfig:
        return load_governance(self.governance_file)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, naming the field on any error."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error("settings", exc)) from exc
