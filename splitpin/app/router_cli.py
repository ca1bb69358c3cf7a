"""`splitpin router ...`: train the classifier's heads and evaluate them on labelled files.

Registered in splitpin/app/cli.py with `app.add_typer(router_app, name="router")`. Errors
print one `error: ...` line and exit 2 here too, so the sub-app behaves the same when
invoked on its own (tests) as under `splitpin`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from splitpin.app.cli_errors import command_line, fail
from splitpin.errors import SplitpinError

router_app = typer.Typer(
    help="The in-process classifier: train, calibrate and evaluate its heads.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _command_line() -> str:
    return command_line("splitpin.app.router_cli")


DataDirOption = Annotated[
    Path | None,
    typer.Option(help="Shared data folder (default: ../shared/data beside the repo)."),
]
"""`--data-dir` of the commands that read the labelled data."""


@router_app.command("train")
def train_command(
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Artifacts folder (default: classifier.artifacts_dir of the config)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Embedding cache (default: $XDG_CACHE_HOME/splitpin/router-embeddings)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
    calibrate_after: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Refit calibration.json for the new heads (the old one no longer loads).",
        ),
    ] = True,
    neighbour_vote: Annotated[
        bool,
        typer.Option(
            help="Mix the intent head with a vote of its 10 nearest training rows "
            "(not in the shipped heads; docs/local_fleet.md)."
        ),
    ] = False,
) -> None:
    """Fit the heads on banking77 and CLINC150 (validation splits only for selection)."""
    from splitpin.core.router.classifier import resolve_artifacts_dir
    from splitpin.core.router.train import DEFAULT_DATA_DIR, train
    from splitpin.core.settings import load_settings

    try:
        governance = load_settings().governance
        target = out or resolve_artifacts_dir(governance.classifier.artifacts_dir)
        manifest = train(
            data_dir or DEFAULT_DATA_DIR,
            target,
            classifier=governance.classifier,
            routing=governance.routing,
            command=_command_line(),
            cache_dir=cache_dir,
            progress=progress,
            echo=typer.echo,
            neighbour_vote=neighbour_vote,
        )
    except SplitpinError as exc:
        raise fail(exc) from exc
    sizes = ", ".join(
        f"{name} {(target / name).stat().st_size / 1024:.0f} KiB"
        for name in (*manifest["files"], "manifest.json")
    )
    typer.echo(f"wrote {target}: {sizes}")
    if calibrate_after:
        from splitpin.app.calibrate import calibrate

        try:
            calibrate(
                data_dir or DEFAULT_DATA_DIR,
                governance,
                out_dir=target,
                command=_command_line(),
                echo=typer.echo,
            )
        except SplitpinError as exc:
            raise fail(exc) from exc


@router_app.command("calibrate")
def calibrate_command(
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Heads folder to calibrate (default: classifier.artifacts_dir)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the reliability diagrams to this PNG.")
    ] = None,
) -> None:
    """Fit the fleet's confidence maps and the heads' temperatures on half of the held-out
    rows; write calibration.json beside the heads with ECE figures on the other half."""
    from splitpin.app.calibrate import calibrate
    from splitpin.core.router.train import DEFAULT_DATA_DIR
    from splitpin.core.settings import load_settings

    try:
        governance = load_settings().governance
        calibrate(
            data_dir or DEFAULT_DATA_DIR,
            governance,
            out_dir=out,
            command=_command_line(),
            plot=plot,
            echo=typer.echo,
        )
    except SplitpinError as exc:
        raise fail(exc) from exc


@router_app.command("eval")
def eval_command(
    file: Annotated[Path, typer.Argument(help="Labelled file (see --format).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="banking77: CSV `text,category`; clinc150: JSON object of [text, intent] lists.",
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="End with one JSON object on the last line.")
    ] = False,
    artifacts: Annotated[
        Path | None,
        typer.Option(help="Heads to evaluate (default: classifier.artifacts_dir of the config)."),
    ] = None,
) -> None:
    """Accuracy, macro-F1 (clinc150: in-scope accuracy, out-of-scope recall and precision)
    and per-message decision latency p50/p99."""
    from splitpin.core.router.classifier import Classifier
    from splitpin.core.router.evaluate import Format, evaluate, read_labelled
    from splitpin.core.settings import load_settings

    try:
        try:
            format_ = Format(fmt)
        except ValueError:
            typer.echo(f"error: --format must be banking77 or clinc150, not {fmt!r}", err=True)
            raise typer.Exit(2) from None
        pairs = read_labelled(file, format_)
        governance = load_settings().governance
        # Memo off: every message is classified, so the latency is the real cost.
        update: dict[str, object] = {"memo_size": 0}
        if artifacts is not None:
            update["artifacts_dir"] = artifacts.resolve()
        config = governance.classifier.model_copy(update=update)
        classifier = Classifier.load(config, governance.routing)
        report = evaluate(classifier, pairs, format_)
    except SplitpinError as exc:
        raise fail(exc) from exc
    typer.echo(f"file: {file}")
    for line in report.lines():
        typer.echo(line)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))


if __name__ == "__main__":
    router_app()
