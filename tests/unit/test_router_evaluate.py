"""`splitpin router eval`: metric math on known label lists, file readers, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitpin.app.router_cli import router_app
from splitpin.core.router.evaluate import (
    LabelledFileError,
    accuracy,
    macro_f1,
    out_of_scope_metrics,
    read_banking77_csv,
    read_clinc150_json,
)

# --- metrics ---------------------------------------------------------------------------


def test_accuracy() -> None:
    assert accuracy(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        accuracy(["a", "b"], ["a"])


def test_macro_f1_by_hand() -> None:
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", "b"]
    # a: tp1 fp0 fn1 -> 2/3; b: tp2 fp1 fn0 -> 4/5
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # A label only ever predicted counts with F1 0 (as scikit-learn's default).
    assert macro_f1(["a", "a"], ["a", "z"]) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1(["a"], ["a"]) == 1.0


def test_out_of_scope_metrics_by_hand() -> None:
    gold = ["x", "y", "y", "oos", "oos", "oos"]
    pred = ["x", "oos", "y", "oos", "oos", "z"]
    m = out_of_scope_metrics(gold, pred)
    assert m["in_scope_accuracy"] == pytest.approx(2 / 3)  # "y" called oos is wrong
    assert m["oos_recall"] == pytest.approx(2 / 3)
    assert m["oos_precision"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


# --- readers ---------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_banking77_csv_reader(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "b.csv",
        'text,category\n"I lost my card, help",lost_or_stolen_card\nrate?,exchange_rate\n\n',
    )
    assert read_banking77_csv(path) == [
        ("I lost my card, help", "lost_or_stolen_card"),
        ("rate?", "exchange_rate"),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("sentence,label\nhi,greeting\n", r":1: header is"),
        ("text,category\nok,card_arrival\na,b,c\n", r":3: expected 2 fields"),
        ("text,category\nok,card_arrival\nno label,\n", r":3: field `category` is empty"),
        ("text,category\n", "no labelled rows"),
    ],
)
def test_banking77_csv_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(LabelledFileError, match=message):
        read_banking77_csv(path)


def test_clinc150_json_reader_reads_every_list(tmp_path: Path) -> None:
    data = {"val": [["what is my balance", "balance"]], "oos_val": [["sing", "oos"]]}
    path = _write(tmp_path / "c.json", json.dumps(data))
    assert read_clinc150_json(path) == [("what is my balance", "balance"), ("sing", "oos")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"val": "nope"}', r"field 'val' must be a list"),
        ('{"val": [["a", "b"], ["only text"]]}', r"val\[1\] must be \[text, intent\]"),
        ('{"val": [["a", 3]]}', r"val\[0\] must be"),
        ('{"val": [["a", "b"]],\n "x": [}', r":2:\d+: invalid JSON"),
        ("{}", "no \\[text, intent\\] pairs"),
    ],
)
def test_clinc150_json_errors_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "bad.json", content)
    with pytest.raises(LabelledFileError, match=message):
        read_clinc150_json(path)


# --- the CLI, with the shipped artifacts ------------------------------------------------

runner = CliRunner()


def test_eval_banking77_end_to_end(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "b.csv",
        "text,category\n"
        "My card was stolen yesterday,lost_or_stolen_card\n"
        "What is the exchange rate for euros?,exchange_rate\n"
        "hello,exchange_rate\n",
    )
    result = runner.invoke(router_app, ["eval", str(path), "--format", "banking77", "--json"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("accuracy") for line in lines)
    assert any("decision latency" in line for line in lines)
    report = json.loads(lines[-1])
    assert report["messages"] == 3
    # "hello" is settled by a rule (intent "none"), so it is the one miss.
    assert report["accuracy"] == pytest.approx(0.6667)
    assert report["rule_hits"] == 1
    assert (
        report["latency_ms"]["p50"] > 0
        and report["latency_ms"]["p99"] >= report["latency_ms"]["p50"]
    )
    assert set(report) >= {"accuracy", "macro_f1", "latency_ms", "format"}


def test_eval_clinc150_end_to_end(tmp_path: Path) -> None:
    data = {
        "val": [["can you tell me a joke", "tell_joke"], ["thanks!", "thank_you"]],
        "oos_val": [["who won the world cup in 1998", "oos"]],
    }
    path = _write(tmp_path / "c.json", json.dumps(data))
    result = runner.invoke(router_app, ["eval", str(path), "--format", "clinc150", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["messages"] == 3
    assert {"in_scope_accuracy", "oos_recall", "oos_precision", "accuracy", "macro_f1"} <= set(
        report
    )
    assert report["in_scope_accuracy"] == 1.0 and report["oos_recall"] == 1.0


def test_eval_malformed_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", "text,category\nfine,card_arrival\na,b,c\n")
    result = runner.invoke(router_app, ["eval", str(path), "--format", "banking77"])
    assert result.exit_code == 2
    assert "bad.csv:3: expected 2 fields" in result.stderr


def test_eval_unknown_format_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "text,category\nfine,card_arrival\n")
    result = runner.invoke(router_app, ["eval", str(path), "--format", "snips"])
    assert result.exit_code == 2
    assert "banking77 or clinc150" in result.stderr
