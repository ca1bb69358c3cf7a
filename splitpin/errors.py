"""The root of splitpin's exception tree.

    SplitpinError
    ├── ConfigError          invalid settings or governance file (names the field)
    ├── BrokerError          the local Kafka broker could not be resolved/started/stopped
    ├── DeliveryError        a record could not be delivered to Kafka; the flow must stop
    │                        and resume from its last snapshot rather than lose it
    └── StartupError         `splitpin run` refuses to start: brokers silent, topics missing,
                             recovery state lost or damaged (names the setting or file)

No librdkafka or SDK exception escapes the Kafka layer: it is translated into one of these.
"""

from pydantic import ValidationError


class SplitpinError(Exception):
    """Base class for every error splitpin raises on purpose."""


class ConfigError(SplitpinError):
    """Configuration is invalid; the message names the offending field."""


class BrokerError(SplitpinError):
    """The local broker could not be resolved, started or stopped."""


class DeliveryError(SplitpinError):
    """Kafka did not acknowledge a record within the bounded flush."""


class StartupError(SplitpinError):
    """The flow cannot start safely; the message names the setting, topic or file to fix."""


def describe_validation_error(source: str, exc: ValidationError) -> str:
    """One line per bad field, dotted path first, so the operator knows what to fix."""
    lines = [f"invalid {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
