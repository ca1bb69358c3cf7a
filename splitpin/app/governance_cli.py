"""`splitpin governance ...`: diff two configs, apply, status, rollback.

Registered in splitpin/app/cli.py with `app.add_typer(governance_app, name="governance")`.
Errors print one `error: ...` line and exit 2 here too, so the sub-app behaves the same when
invoked on its own (tests) as under `splitpin`. A held change exits 3, so scripts notice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from splitpin.app.cli_errors import command_line, fail
from splitpin.core import governance_store as store
from splitpin.core.settings import load_settings
from splitpin.errors import SplitpinError
from splitpin.schemas.governance import load_governance

HELD_EXIT = 3
"""`apply` exit status when the change is held for a maintenance window."""

governance_app = typer.Typer(
    help="Versioned governance changes: diff, apply (maintenance windows), status, rollback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _command_line() -> str:
    return command_line("splitpin.app.governance_cli")


@governance_app.command("diff")
def diff_command(
    old: Annotated[Path, typer.Argument(help="The config now in force (or any base).")],
    new: Annotated[Path, typer.Argument(help="The candidate.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """What changing OLD into NEW does: each changed setting as `path: old -> new`; `*`
    marks a model or version swap (applied only inside a maintenance window)."""
    try:
        before, after = load_governance(old), load_governance(new)
    except SplitpinError as exc:
        raise fail(exc) from exc
    changes = store.diff(before, after)
    if as_json:
        payload = {
            "from": before.version_id(),
            "to": after.version_id(),
            "swapped_roles": store.swapped_roles(changes),
            "changes": [change.model_dump(mode="json") for change in changes],
        }
        typer.echo(json.dumps(payload, sort_keys=True))
        return
    typer.echo(f"{before.version_id()} -> {after.version_id()}: {len(changes)} change(s)")
    for line in store.render_changes(changes):
        typer.echo(line)


@governance_app.command("apply")
def apply_command(
    path: Annotated[Path, typer.Argument(help="The governance file to put in force.")],
    force: Annotated[
        bool, typer.Option(help="Apply a model swap outside a maintenance window.")
    ] = False,
) -> None:
    """Put PATH in force on the governance topic (flows pick it up at their next start);
    a model or version swap outside a maintenance window is held as pending (exit 3)."""
    from splitpin.core.router.classifier import check_artifacts

    try:
        candidate = load_governance(path)
        # Everything `run` would reject in it, before any flow restarts under it.
        check_artifacts(candidate.classifier, candidate.routing)
        outcome = store.apply_config(
            load_settings(), candidate, command=_command_line(), force=force
        )
    except SplitpinError as exc:
        raise fail(exc) from exc
    typer.echo(f"{outcome.action}: {outcome.from_version} -> {outcome.to_version}")
    typer.echo(outcome.message)
    for line in store.render_changes(outcome.changes):
        typer.echo(line)
    if outcome.action == "held":
        raise typer.Exit(HELD_EXIT)


@governance_app.command("rollback")
def rollback_command() -> None:
    """Return to the version before the current one (not window-gated: the escape hatch)."""
    try:
        outcome = store.rollback(load_settings(), command=_command_line())
    except SplitpinError as exc:
        raise fail(exc) from exc
    typer.echo(f"{outcome.action}: {outcome.from_version} -> {outcome.to_version}")
    for line in store.render_changes(outcome.changes):
        typer.echo(line)


@governance_app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The version in force (and the one before it), a held change, the last audit records."""
    try:
        settings = load_settings()
        records = store.read_records(settings)
        audits = store.read_audit(settings)[-5:]
    except SplitpinError as exc:
        raise fail(exc) from exc
    current = records.get(store.CURRENT_KEY)
    pending = store.still_pending(records)
    if as_json:
        payload = {
            "current": current.version if current else None,
            "name": current.name if current else None,
            "previous": current.previous_version if current else None,
            "pending": pending.version if pending else None,
            "file": settings.governance.version_id(),
        }
        typer.echo(json.dumps(payload, sort_keys=True))
        return
    if current is None:
        typer.echo(
            f"no version applied yet: flows use {settings.governance_file} "
            f"({settings.governance.version_id()})"
        )
    else:
        label = f" ({current.name})" if current.name else ""
        typer.echo(
            f"current: {current.version}{label}, applied {current.applied_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        typer.echo(f"previous: {current.previous_version or '-'}")
    if pending is not None:
        typer.echo(f"pending: {pending.version} (held; `governance apply` it inside a window)")
    for audit in audits:
        typer.echo(
            f"{audit.at:%Y-%m-%d %H:%M:%S} {audit.action}: {audit.from_version} -> "
            f"{audit.to_version} by `{audit.command}`"
        )


if __name__ == "__main__":
    governance_app()
