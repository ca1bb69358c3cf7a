"""The docs stay true to the code: links resolve, shown commands exist, every topic is
documented, paths named in docs exist, and no stale "not built" status survives.

Docs are what a consumer or operator trusts without reading the code; these checks fail
when a command is renamed, a topic added, a file moved or a section retitled.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from splitpin.app.cli import app
from splitpin.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
REPO_TOP: tuple[str, ...] = ("flows/", "operators/", "schemas/", "splitpin/", "config/")
REPO_TOP += ("tests/", "docs/", "bench/", "data/", "deploy/")

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.MULTILINE)
STALE = re.compile(r"not\s+(yet\s+)?built|not yet \(issue|nothing calls a model", re.IGNORECASE)
SHELL_BREAKS = re.compile(r"\s(?:\||&&|;|>|#)\s.*$|\s#.*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(title) for _, title in HEADING.findall(text)}


def code_snippets(path: Path) -> Iterator[str]:
    """Lines of fenced blocks and inline code spans: where commands are shown."""
    text = path.read_text(encoding="utf-8")
    for block in FENCE.findall(text):
        yield from block.splitlines()[1:-1]
    for span in INLINE_CODE.findall(FENCE.sub("", text)):
        yield span.replace("\\|", "|")


def cli_invocations(snippet: str) -> Iterator[list[str]]:
    """`splitpin ...` (also `python -m splitpin ...`, `VAR=1 splitpin ...`) as words,
    without shell comments, pipes or redirections."""
    words = SHELL_BREAKS.sub("", snippet.strip()).split()
    for i, word in enumerate(words):
        if word != "splitpin" or i + 1 == len(words):
            continue
        before = words[:i]
        if all("=" in w or w in {"$", "python", "python3", "-m"} for w in before):
            yield words[i + 1 :]


def check_invocation(words: list[str]) -> str | None:
    """Why `splitpin <words>` is not a command of the CLI with those options, else None."""
    # Typer vendors its own click: walk the command tree by duck typing (groups have a
    # `commands` map, every command its `params`).
    command: Any = typer.main.get_command(app)
    path = ["splitpin"]
    for raw in words:
        word = raw.strip("[]")
        if not word or word.isupper() or "/" in word or "." in word:
            continue  # placeholders (FILE, PATH, N) and argument values
        if word.startswith("-"):
            names = {n for p in command.params for n in getattr(p, "opts", [])}
            names |= {n for p in command.params for n in getattr(p, "secondary_opts", [])}
            names.add("--help")
            option = word.split("=", 1)[0]
            if option not in names:
                return f"{' '.join(path)} has no option {option}"
            continue
        if hasattr(command, "commands"):
            alternatives = word.split("|")
            for name in alternatives:
                if name not in command.commands:
                    return f"{' '.join(path)} has no command {name!r}"
            command = command.commands[alternatives[0]]
            path.append(word)
    if hasattr(command, "commands") and not any(w.startswith("-") for w in words):
        return f"{' '.join(path)} needs a sub-command"
    return None


def test_docs_are_found() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "topics.md", "architecture.md", "operations.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_shown_commands_exist(doc: Path) -> None:
    wrong = [
        f"`splitpin {' '.join(words)}`: {why}"
        for snippet in code_snippets(doc)
        for words in cli_invocations(snippet)
        if (why := check_invocation(words)) is not None
    ]
    assert wrong == []


def test_commands_are_found_in_the_docs() -> None:
    """The extraction itself works: the README shows these, and a wrong one is caught."""
    shown = {" ".join(w) for s in code_snippets(ROOT / "README.md") for w in cli_invocations(s)}
    assert {"--version", "run --reset", "topics create"} <= {c.split("  ")[0] for c in shown}
    assert any(c.startswith("config init") for c in shown)
    assert check_invocation(["config", "initialise"]) is not None
    assert check_invocation(["run", "--rest"]) is not None
    assert check_invocation(["broker", "start|halt"]) is not None
    assert check_invocation(["router", "eval", "FILE", "--format", "clinc150", "[--json]"]) is None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_modules_shown_exist(doc: Path) -> None:
    """`python -m splitpin.x.y` must name a module that still exists after a move."""
    modules = {
        m
        for snippet in code_snippets(doc)
        for m in re.findall(r"python3?(?:\.\d+)? -m (splitpin[\w.]*)", snippet)
    }
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []


def test_every_topic_has_a_section() -> None:
    topics_md = ROOT / "docs" / "topics.md"
    headings = [t for level, t in HEADING.findall(topics_md.read_text()) if len(level) == 2]
    topics = Settings.model_construct().all_topics().values()
    assert len(topics) >= 7
    missing = [t for t in topics if not any(f"`{t}`" in h for h in headings)]
    assert missing == []


def test_every_record_schema_is_linked_from_topics() -> None:
    text = (ROOT / "docs" / "topics.md").read_text(encoding="utf-8")
    linked = {Path(target).name for target in LINK.findall(text)}
    schemas = {p.name for p in (ROOT / "schemas" / "json").glob("*.schema.json")}
    assert schemas - {"governance-config.schema.json"} - linked == set()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_paths_named_exist(doc: Path) -> None:
    """A `flows/...`, `splitpin/...` (etc.) path in backticks names a real file or folder."""
    stale = [
        span
        for span in INLINE_CODE.findall(FENCE.sub("", doc.read_text(encoding="utf-8")))
        if span.startswith(REPO_TOP)
        and not re.search(r"[<>*{}\s|]", span)
        and not (ROOT / span.split("#")[0].rstrip(":")).exists()
    ]
    assert stale == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_stale_status(doc: Path) -> None:
    assert STALE.findall(doc.read_text(encoding="utf-8")) == []


def test_slug_matches_github() -> None:
    assert slug("Start-up, shutdown and recovery checks") == "start-up-shutdown-and-recovery-checks"
    assert slug("`routing.metrics.windowed`: per tenant") == "routingmetricswindowed-per-tenant"
    assert slug("Input contract and dead letters") == "input-contract-and-dead-letters"
