"""Offline tiktoken: both encodings load without network, from hash-checked files."""

from __future__ import annotations

from pathlib import Path

import pytest

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
