"""What every `splitpin` sub-app does at its edge: one `error: ...` line and exit 2 for a
SplitpinError, and the command line as typed for records that say who changed what.

Shared so a sub-app behaves the same invoked on its own (tests) as under `splitpin`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from splitpin.errors import SplitpinError


def fail(exc: SplitpinError) -> typer.Exit:
    """Print the error as one line on stderr; `raise fail(exc) from exc` exits 2."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def command_line(module: str) -> str:
    """The command as typed (`splitpin router train ...`), so a manifest or audit record
    can be re-run: `python -m splitpin ...` as such, and a sub-app run as a file in its
    module form (`python -m splitpin.app.router_cli ...`)."""
    path = Path(sys.argv[0]) if sys.argv else Path("splitpin")
    if path.name == "__main__.py":  # python -m <package>
        head = ["python", "-m", path.parent.name]
    elif path.suffix == ".py":
        head = ["python", "-m", module]
    else:
        head = [path.name]
    return shlex.join([*head, *sys.argv[1:]])
