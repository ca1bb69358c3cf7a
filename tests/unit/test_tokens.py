"""Offline tiktoken: both encodings load without network, from hash-checked files."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core import tokens
from splitpin.errors import ConfigError


def test_known_counts() -> None:
    assert tokens.count_tokens("hello world", "cl100k_base") == 2
    assert tokens.count_tokens("hello world", "o200k_base") == 2
    # Special-token text from a customer is counted, never interpreted.
    assert tokens.count_tokens("<|endoftext|>", "cl100k_base") > 1


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown token encoding"):
        tokens.encoding("gpt2")


def test_cache_seeding_replaces_a_corrupted_file(tmp_path: Path) -> None:
    tokens._seed_cache("cl100k_base", tmp_path)
    [seeded] = list(tmp_path.iterdir())
    good = seeded.read_bytes()
    seeded.write_bytes(b"tampered")
    tokens._seed_cache("cl100k_base", tmp_path)
    assert seeded.read_bytes() == good


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.text(max_size=300), min_size=1, max_size=30),
    name=st.sampled_from(sorted(tokens.EXPECTED_SHA256)),
)
def test_remembered_counts_are_exact_and_the_memo_stays_bounded(
    texts: list[str], name: str
) -> None:
    """Counting twice (the second from the memo) gives the encoder's own count, and the
    memo never holds more characters than its budget, however the texts come."""
    saved = tokens.MEMO_CHARS, tokens._memo, tokens._memo_chars
    tokens.MEMO_CHARS, tokens._memo, tokens._memo_chars = 600, OrderedDict(), 0
    try:
        encoder = tokens.encoding(name)
        for text in [*texts, *reversed(texts)]:
            expected = len(encoder.encode(text, disallowed_special=()))
            assert tokens.count_tokens(text, name) == expected
            assert tokens._memo_chars == sum(len(t) for _, t in tokens._memo) <= 600
    finally:
        tokens.MEMO_CHARS, tokens._memo, tokens._memo_chars = saved
