"""`splitpin` command line: broker, topics, run, replay, schemas."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from splitpin import __version__
from splitpin.app.canary_cli import canary_app
from splitpin.app.governance_cli import governance_app
from splitpin.app.router_cli import router_app
from splitpin.core.redaction import check_secret_env, install_log_redaction
from splitpin.core.settings import Settings, load_settings
from splitpin.errors import ConfigError, SplitpinError, describe_validation_error

app = typer.Typer(
    help="Kafka-native routing layer for support-conversation language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"splitpin {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Kafka-native routing layer for support-conversation language models."""


broker_app = typer.Typer(help="Run a local Apache Kafka broker (KRaft) from Maven Central jars.")
topics_app = typer.Typer(help="Manage splitpin's Kafka topics.")
schemas_app = typer.Typer(help="JSON Schema files for every topic's records.")
config_app = typer.Typer(help="Check the governance config (config/governance.yaml).")
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(config_app, name="config")
app.add_typer(router_app, name="router")
app.add_typer(governance_app, name="governance")
app.add_typer(canary_app, name="canary")


def _settings() -> Settings:
    return load_settings()


@broker_app.command("start")
def broker_start(
    sasl_port: Annotated[
        int | None,
        typer.Option(
            help="Also listen with SASL_PLAINTEXT (PLAIN) here (SPLITPIN_BROKER__SASL_PORT)."
        ),
    ] = None,
    sasl_user: Annotated[
        list[str] | None,
        typer.Option(
            help="USER=PASSWORD accepted on the SASL port; repeatable. Prefer "
            'SPLITPIN_BROKER__SASL_USERS=\'{"user":"password"}\': a command line is visible to ps.'
        ),
    ] = None,
) -> None:
    """Start the broker (resolving jars and formatting storage on first use); wait until ready."""
    from splitpin.core.kafka.broker import LocalBroker

    settings = _settings().broker
    users = dict(settings.sasl_users)
    for item in sasl_user or []:
        name, sep, password = item.partition("=")
        if not sep:
            msg = f"--sasl-user expects USER=PASSWORD, got {name!r} without '='"
            raise ConfigError(msg)
        users[name] = password
    if sasl_port is not None or users != settings.sasl_users:
        try:
            settings = settings.model_validate(
                {**settings.model_dump(), "sasl_users": users}
                | ({"sasl_port": sasl_port} if sasl_port is not None else {})
            )
        except ValidationError as exc:
            raise ConfigError(describe_validation_error("broker", exc)) from exc
    typer.echo(LocalBroker(settings).start())


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after a grace period)."""
    from splitpin.core.kafka.broker import LocalBroker

    typer.echo(LocalBroker(_settings().broker).stop())


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the broker runs and answers; exit 1 when it does not."""
    from splitpin.core.kafka.broker import LocalBroker

    status = LocalBroker(_settings().broker).status()
    typer.echo(status.describe())
    if not status.answering:
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per topic (default: settings).")
    ] = None,
) -> None:
    """Create every topic in the design brief (existing ones are left as they are)."""
    from splitpin.core.kafka.admin import create_topics

    for line in create_topics(_settings(), partitions=partitions):
        typer.echo(line)


@topics_app.command("list")
def topics_list() -> None:
    """Show each splitpin topic with its partition count, or `missing`."""
    from splitpin.core.kafka.admin import describe_topics

    for line in describe_topics(_settings()):
        typer.echo(line)


@app.command("run")
def run(
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Workers per process [env: SPLITPIN_WORKERS, BYTEWAX_WORKERS_PER_PROCESS; 1].",
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            "-i",
            help="This process's index in a cluster [env: SPLITPIN_PROCESS_ID, "
            "BYTEWAX_PROCESS_ID, or the StatefulSet pod ordinal; docs/operations.md#cluster].",
        ),
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option(
            "--addresses",
            "-a",
            help="host:port;host:port of all processes [env: SPLITPIN_ADDRESSES, "
            "BYTEWAX_ADDRESSES, a hostfile, or the StatefulSet's headless Service].",
        ),
    ] = None,
    hostfile: Annotated[
        Path | None,
        typer.Option(
            "--hostfile",
            dir_okay=False,
            help="A file with one host:port per process [env: BYTEWAX_HOSTFILE_PATH].",
        ),
    ] = None,
    no_recovery: Annotated[
        bool, typer.Option("--no-recovery", help="Run without snapshots (not for production).")
    ] = False,
    until_eof: Annotated[
        bool, typer.Option("--until-eof", help="Stop at the end of the input instead of tailing.")
    ] = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            envvar="SPLITPIN_RESET",
            help="Start without recovery state although the output topics hold this flow's "
            "records (re-processes every input from the beginning).",
        ),
    ] = False,
    canary: Annotated[
        Path | None,
        typer.Option(
            "--canary",
            exists=True,
            dir_okay=False,
            help="Run a canary of this candidate governance file instead: it mirrors a sample "
            "of the events topic's conversations and writes only to its canary.topic_prefix "
            "topics (docs/operations.md#canary).",
        ),
    ] = None,
) -> None:
    """Run the routing dataflow (with Bytewax recovery unless --no-recovery)."""
    from splitpin.app.cluster import resolve_cluster

    cluster = resolve_cluster(
        os.environ, process_id=process_id, addresses=addresses, hostfile=hostfile, workers=workers
    )
    if canary is not None:
        from splitpin.app.canary import run_canary

        if cluster.process_id is not None:
            msg = f"--canary runs in one process: drop the cluster settings ({cluster.source})"
            raise ConfigError(msg)
        run_canary(
            _settings(),
            canary,
            workers=cluster.workers,
            recovery=not no_recovery,
            tail=not until_eof,
            reset=reset,
        )
        return
    from splitpin.app.runner import run_flow

    run_flow(
        _settings(),
        workers=cluster.workers,
        process_id=cluster.process_id,
        addresses=list(cluster.addresses) if cluster.addresses else None,
        cluster_source=cluster.source,
        recovery=not no_recovery,
        tail=not until_eof,
        reset=reset,
    )


@app.command("replay")
def replay(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL of events.")],
    rate: Annotated[
        float | None, typer.Option(help="Events per second (default: as fast as possible).")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Target topic (default: events topic).")] = None,
    restamp: Annotated[
        bool,
        typer.Option(
            help="Shift every sent_at by one offset so the earliest event is now (gaps kept): "
            "recorded traffic would otherwise be dead-lettered as event_time_skew."
        ),
    ] = False,
) -> None:
    """Publish a JSONL file of ConversationEvents, keyed by conversation_id."""
    from datetime import UTC, datetime

    from splitpin.app.replay import replay_file

    now = datetime.now(UTC) if restamp else None
    result = replay_file(_settings(), path, rate=rate, topic=topic, restamp_to=now)
    typer.echo(result.describe())


@app.command("demo")
def demo(
    plot: Annotated[Path, typer.Option(help="Where to write the latency plot (PNG).")] = Path(
        "demo-latency.png"
    ),
    rate: Annotated[float, typer.Option(help="Sample events published per second.")] = 10.0,
) -> None:
    """Run the whole path on the sample traffic: summary table and latency plot (starts a
    broker if needed)."""
    from splitpin.app.demo import run_demo

    run_demo(_settings(), echo=typer.echo, plot_path=plot, rate=rate)


@config_app.command("validate")
def config_validate(
    path: Annotated[
        Path | None, typer.Argument(help="Governance file (default: settings' governance_path).")
    ] = None,
) -> None:
    """Validate a governance file; exit 2 naming the field on any error (everything `run`
    rejects in it, including intents the classifier's trained artifacts do not know and
    a bad line of a knowledge-base file under knowledge.bases, named file:line)."""
    from splitpin.core.router.classifier import check_artifacts
    from splitpin.providers.knowledge_base import check_kb_files
    from splitpin.schemas.governance import load_governance

    target = path or _settings().governance_file
    config = load_governance(target)
    check_artifacts(config.classifier, config.routing)
    for name, count in check_kb_files(config.knowledge).items():
        typer.echo(f"knowledge base {name}: {count} articles ({config.knowledge.bases[name]})")
    pinned = ", ".join(f"{name}={role.pinned_id}" for name, role in sorted(config.roles.items()))
    typer.echo(f"{target}: valid ({pinned})")


@config_app.command("check")
def config_check(
    path: Annotated[
        Path | None, typer.Argument(help="Governance file (default: settings' governance_path).")
    ] = None,
    remote: Annotated[
        bool, typer.Option("--remote", help="Ask each provider endpoint for its models.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Validate the file, then with --remote list each remote endpoint's models and flag
    pinned versions it does not serve (exit 1); a role without its key is skipped."""
    import dataclasses

    import orjson

    from splitpin.core.router.classifier import check_artifacts
    from splitpin.providers.registry import check_remote
    from splitpin.schemas.governance import load_governance

    target = path or _settings().governance_file
    config = load_governance(target)
    check_artifacts(config.classifier, config.routing)
    checks = check_remote(config, os.environ) if remote else []
    failed = any(c.status in ("missing_pins", "error") for c in checks)
    if as_json:
        report = {
            "file": str(target),
            "ok": not failed,
            "endpoints": [dataclasses.asdict(c) for c in checks],
        }
        typer.echo(orjson.dumps(report).decode())
    else:
        typer.echo(f"{target}: valid" + ("" if remote else " (pass --remote to ask providers)"))
        for c in checks:
            roles = ", ".join(f"{role}={pin}" for role, pin in c.pins.items())
            typer.echo(f"{c.provider} {c.base_url} ({c.key_variable}): {c.status}: {c.message}")
            typer.echo(f"  roles: {roles}")
    if failed:
        raise typer.Exit(1)


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write the editable copy.")] = Path(
        "governance.yaml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write an editable copy of the default governance config (then point
    SPLITPIN_GOVERNANCE_PATH at it)."""
    from splitpin.defaults import GOVERNANCE_FILE

    if path.exists() and not force:
        msg = f"{path} exists; pass --force to overwrite it"
        raise ConfigError(msg)
    path.write_bytes(GOVERNANCE_FILE.read_bytes())
    typer.echo(f"{path}: written; use it with SPLITPIN_GOVERNANCE_PATH={path.resolve()}")


@schemas_app.command("export")
def schemas_export(
    out_dir: Annotated[
        Path, typer.Option(help="Where to write (a folder of the working directory by default).")
    ] = Path("schemas/json"),
) -> None:
    """Write a JSON Schema file per wire model so consumers can validate records."""
    from splitpin.schemas.export import export_json_schemas

    for path in export_json_schemas(out_dir):
        typer.echo(str(path))


SPLITPIN_LOGGERS = ("splitpin", "flows", "operators", "providers", "schemas")


def _configure_logging() -> None:
    """Other libraries at WARNING; splitpin's own code at SPLITPIN_LOG_LEVEL; librdkafka's
    routine retries (warnings) quiet and its repeated errors counted, not printed."""
    from splitpin.core.kafka.logs import limit_repeats

    try:
        settings = load_settings()
        level, window_s = logging.getLevelName(settings.log_level), settings.log_repeat_window_s
    except SplitpinError:  # the command itself reports the bad setting
        level, window_s = logging.WARNING, Settings.model_fields["log_repeat_window_s"].default
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in SPLITPIN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    librdkafka = logging.getLogger("splitpin.core.kafka.librdkafka")
    librdkafka.setLevel(logging.WARNING if level <= logging.DEBUG else logging.ERROR)
    limit_repeats(window_s, librdkafka)
    # Which backend answers each model role is worth a line at every start.
    logging.getLogger("splitpin.providers.setup").setLevel(min(level, logging.INFO))
    # Every registered secret (API keys) is removed from every record the handlers write.
    install_log_redaction()


def main() -> None:
    """Entry point: SplitpinError becomes a one-paragraph message and exit status 2."""
    _configure_logging()
    try:
        check_secret_env(os.environ)  # a key with a stray newline: exit 2 naming the variable
        app()
    except SplitpinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from exc
