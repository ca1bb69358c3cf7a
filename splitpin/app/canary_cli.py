"""`splitpin canary report|watch`: compare the canary topology with the primary."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer

from splitpin.errors import ConfigError

canary_app = typer.Typer(help="Compare a canary topology (splitpin run --canary) with the primary.")

PREFIX_HELP = "The canary's topic prefix (default: the governance config's canary.topic_prefix)."


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        msg = f"not an ISO 8601 time: {text!r}"
        raise ConfigError(msg) from exc
    if moment.tzinfo is None:
        msg = f"give a UTC offset in {text!r} (e.g. 2026-12-05T00:00Z)"
        raise ConfigError(msg)
    return moment


@canary_app.command("report")
def canary_report(
    since: Annotated[
        str | None, typer.Option(help="ISO time: events published from then on.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: events published before.")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='JSONL gold labels: {"event_id", "doc_id"?, "intent"?} per line.',
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot here.")] = None,
    prefix: Annotated[str | None, typer.Option(help=PREFIX_HELP)] = None,
) -> None:
    """Join both topologies' outputs by reply_id over the sampled conversations; the figures
    per route and a verdict (PROMOTE / HOLD) against canary.promotion. Exit 1 on HOLD."""
    from splitpin.app.canary_report import load_labels, read_comparison, render, to_json
    from splitpin.core.settings import load_settings

    comparison = read_comparison(
        load_settings(),
        since=_when(since),
        until=_when(until),
        labels=load_labels(labels) if labels else None,
        prefix=prefix,
    )
    if json:
        typer.echo(orjson.dumps(to_json(comparison)).decode())
    else:
        typer.echo(render(comparison))
    if plot is not None:
        from splitpin.app.canary_report import plot as write_plot

        path = write_plot(comparison, plot)
        if not json:
            typer.echo(f"plot written to {path.resolve()}")
    if not comparison.promote:
        raise typer.Exit(1)


@canary_app.command("watch")
def canary_watch(
    prefix: Annotated[str | None, typer.Option(help=PREFIX_HELP)] = None,
) -> None:
    """Follow both reply topics; per window (canary.comparison_window_s) publish the
    comparison on `<canary prefix>comparison` and as splitpin_canary_* gauges."""
    from splitpin.app.canary_report import watch
    from splitpin.core.settings import load_settings

    watch(load_settings(), prefix=prefix, echo=typer.echo)


@canary_app.command("promote")
def canary_promote(
    candidate: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="The canary's governance file.")
    ],
    since: Annotated[
        str | None, typer.Option(help="ISO time: events published from then on.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: events published before.")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="JSONL gold labels, as for report."),
    ] = None,
    prefix: Annotated[str | None, typer.Option(help=PREFIX_HELP)] = None,
    force: Annotated[
        bool, typer.Option(help="Apply a model swap outside a maintenance window.")
    ] = False,
) -> None:
    """Put CANDIDATE in force for the primary only if the canary report's verdict is PROMOTE
    (exit 1 otherwise, naming the failed criteria); a model swap is held outside a
    maintenance window (exit 3) unless --force. The change is audited like any apply."""
    from splitpin.app.canary_report import load_labels, read_comparison, render
    from splitpin.app.governance_cli import HELD_EXIT, _command_line
    from splitpin.app.promotion import promote
    from splitpin.core.router.classifier import check_artifacts
    from splitpin.core.settings import load_settings
    from splitpin.schemas.governance import load_governance

    settings = load_settings()
    config = load_governance(candidate)
    check_artifacts(config.classifier, config.routing)
    comparison = read_comparison(
        settings,
        since=_when(since),
        until=_when(until),
        labels=load_labels(labels) if labels else None,
        prefix=prefix,
    )
    typer.echo(render(comparison))
    result = promote(settings, config, comparison, command=_command_line(), force=force)
    if result.outcome is None:
        typer.echo(f"not promoted: {', '.join(result.failed)} failed")
        raise typer.Exit(1)
    outcome = result.outcome
    typer.echo(f"{outcome.action}: {outcome.from_version} -> {outcome.to_version}")
    typer.echo(outcome.message)
    if outcome.action == "held":
        raise typer.Exit(HELD_EXIT)
