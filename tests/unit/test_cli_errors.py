"""The command line recorded in manifests and audit records re-runs what was typed."""

from __future__ import annotations

import shlex
import sys

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st

from splitpin.app.cli_errors import command_line, fail
from splitpin.errors import ConfigError

args = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))


@given(prog=st.sampled_from(["/usr/local/bin/splitpin", "splitpin"]), rest=args)
def test_the_recorded_command_splits_back_into_the_same_arguments(
    prog: str, rest: list[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [prog, *rest])
        recorded = shlex.split(command_line("splitpin.app.router_cli"))
    assert recorded == ["splitpin", *rest]


@given(rest=args)
def test_a_module_run_as_a_file_is_recorded_in_its_module_form(rest: list[str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["/src/splitpin/app/router_cli.py", *rest])
        recorded = shlex.split(command_line("splitpin.app.router_cli"))
    assert recorded == ["python", "-m", "splitpin.app.router_cli", *rest]


@given(rest=args)
def test_python_dash_m_splitpin_is_recorded_as_such(rest: list[str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["/venv/lib/site-packages/splitpin/__main__.py", *rest])
        recorded = shlex.split(command_line("splitpin.app.router_cli"))
    assert recorded == ["python", "-m", "splitpin", *rest]


def test_a_failure_is_one_error_line_and_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = fail(ConfigError("routing.fast_max_tokens: must be positive"))
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2
    assert capsys.readouterr().err == "error: routing.fast_max_tokens: must be positive\n"
