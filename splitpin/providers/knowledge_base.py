"""The embedded knowledge bases and the retriever that attaches their articles to requests.

Each knowledge base is one JSON-lines file, one article per line (format in
docs/knowledge_bases.md): the shipped ones are package data (`splitpin/providers/kb/`), a
tenant's own are named under `knowledge.bases` in the governance config. Files are
validated at load (a bad line is a ConfigError naming file:line) because a silently
skipped article would make answers wrong, not fail.

Article embeddings (MiniLM, title + text) are computed once per file content and embedder
and cached on disk (EmbeddingCache); retrieval is then a matrix-vector product. Ranking is
deterministic: scores are rounded before sorting and ties go to the lower doc number, so a
replay attaches the same sources in the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import io
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitpin.core.router.embedder import EMBEDDING_DIM, Embedder, EmbedderInfo
from splitpin.errors import ConfigError, describe_validation_error
from splitpin.providers.base import SourceDoc
from splitpin.schemas.governance import SHIPPED_KBS, KnowledgeConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

KB_PACKAGE = "splitpin.providers"
KB_DIR = "kb"
DEFAULT_KBS: tuple[str, ...] = SHIPPED_KBS
DOC_ID_PATTERN = r"^InternalDoc-\d+$"
"""Every KB's ids: the one form prompts ask models to cite and prompting.py parses and
neutralises. Tenants tell their bases apart by number range, not prefix."""
EMBEDDING_RECIPE = "title. text; v1"
"""Part of the embedding cache key: change it when `Article.embedding_text` changes."""
SMALL_TALK_KB = "smalltalk"
"""Greetings, thanks and the like: what the fleet answers from when no source is attached."""
RANK_DECIMALS = 6
"""Scores are rounded to this before ranking, so float noise never reorders near-ties."""
SCORE_DECIMALS = 4
"""`SourceDoc.score` as exported: stable bytes in requests and snapshots."""

_DOC_NUMBER = re.compile(r"^(.*?)(\d+)$")
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORD_TEXT = """a about after again all am an and any are as at be been before being but by can
    could did do does doing for from had has have having he her here how i if in into is it
    its just me more my myself no not now of off on once only or other our out over own same
    she should so some such than that the their them then there these they this those to too
    under until up very was we were what when where which while who why will with would you
    your yours yourself"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def doc_sort_key(doc_id: str) -> tuple[str, int, str]:
    """InternalDoc-2 before InternalDoc-12: the tie-break for equal scores."""
    match = _DOC_NUMBER.match(doc_id)
    if match is None:
        return (doc_id, -1, doc_id)
    return (match.group(1), int(match.group(2)), doc_id)


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words minus stopwords, a trailing plural 's' dropped: for lexical overlap."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or len(word) < 2:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return frozenset(words)


class ArticleLine(BaseModel):
    """One line of a knowledge-base file, exactly as written (docs/knowledge_bases.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=DOC_ID_PATTERN, description="InternalDoc-<N>, unique in the file.")
    title: str = Field(min_length=1)
    text: str = Field(min_length=1, description="The answer a reply may quote.")
    intent: str | None = Field(
        default=None, min_length=1, description="Optional label, unique in the file."
    )
    compliance: bool = Field(
        default=False, strict=True, description="true/false only: 'yes' is not coerced."
    )
    policy_notes: tuple[str, ...] = ()


class Article(BaseModel):
    """One loaded knowledge-base article: a file line plus the base it belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: str = Field(pattern=DOC_ID_PATTERN)
    kb: str = Field(min_length=1)
    intent: str | None = Field(
        default=None, min_length=1, description="banking77 label, '<flow> / <subflow>', ..."
    )
    title: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    policy_notes: tuple[str, ...] = ()
    compliance: bool = False

    @classmethod
    def from_line(cls, line: ArticleLine, kb: str) -> Article:
        return cls(
            doc_id=line.id,
            kb=kb,
            intent=line.intent,
            title=line.title,
            answer=line.text,
            policy_notes=line.policy_notes,
            compliance=line.compliance,
        )

    @property
    def source(self) -> str:
        return f"kb:{self.kb}/{self.doc_id}"

    @property
    def text(self) -> str:
        """What a prompt carries: the answer, then the policy notes a model must respect."""
        if not self.policy_notes:
            return self.answer
        notes = "\n".join(f"- {note}" for note in self.policy_notes)
        return f"{self.answer}\n\nPolicy notes:\n{notes}"

    @property
    def embedding_text(self) -> str:
        return f"{self.title}. {self.answer}"

    @property
    def lexical_text(self) -> str:
        """Words for lexical overlap: the intent's name is a concise description too."""
        return f"{self.intent or ''} {self.title} {self.answer}"

    def as_source(self, score: float) -> SourceDoc:
        return SourceDoc(
            doc_id=self.doc_id,
            title=self.title,
            text=self.text,
            source=self.source,
            score=round(float(score), SCORE_DECIMALS),
            compliance=self.compliance,
        )


def parse_articles(lines: Iterable[str], origin: str, kb_name: str) -> tuple[Article, ...]:
    """Validate every line (blank lines skipped); ConfigError naming `origin:line` if bad."""
    articles: list[Article] = []
    seen_ids: dict[str, int] = {}
    seen_intents: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{origin}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            msg = f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
            raise ConfigError(msg) from exc
        try:
            article = Article.from_line(ArticleLine.model_validate(raw), kb_name)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(where, exc)) from exc
        if article.doc_id in seen_ids:
            msg = f"{where}: id {article.doc_id} repeats line {seen_ids[article.doc_id]}"
            raise ConfigError(msg)
        if article.intent is not None:
            if article.intent in seen_intents:
                first = seen_intents[article.intent]
                msg = f"{where}: intent {article.intent!r} repeats line {first}"
                raise ConfigError(msg)
            seen_intents[article.intent] = lineno
        seen_ids[article.doc_id] = lineno
        articles.append(article)
    if not articles:
        msg = f"{origin}: no articles"
        raise ConfigError(msg)
    return tuple(articles)


@dataclass(frozen=True)
class KnowledgeBase:
    """One knowledge base: its articles, their embeddings and the lexical index over them."""

    name: str
    articles: tuple[Article, ...]
    embeddings: FloatArray  # (n, 384) unit rows, in `articles` order
    content_sha256: str  # of the file's bytes: names the local models' version
    words: tuple[frozenset[str], ...] = field(init=False)
    idf: Mapping[str, float] = field(init=False)
    _by_id: Mapping[str, int] = field(init=False)
    _by_intent: Mapping[str, int] = field(init=False)
    _intent_sources: Mapping[str, SourceDoc] = field(init=False)
    sort_keys: tuple[tuple[str, int, str], ...] = field(init=False)
    """`doc_sort_key` of each article, in `articles` order: computed once, not per query."""
    intent_labels: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        if self.embeddings.shape != (len(self.articles), EMBEDDING_DIM):
            msg = f"knowledge base {self.name}: embeddings do not match its articles"
            raise ValueError(msg)
        words = tuple(content_words(a.lexical_text) for a in self.articles)
        df: Counter[str] = Counter(w for ws in words for w in ws)
        n = len(self.articles)
        object.__setattr__(self, "words", words)
        object.__setattr__(
            self, "idf", {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in sorted(df.items())}
        )
        object.__setattr__(self, "_by_id", {a.doc_id: i for i, a in enumerate(self.articles)})
        by_intent = {a.intent: i for i, a in enumerate(self.articles) if a.intent is not None}
        object.__setattr__(self, "_by_intent", by_intent)
        intent_sources = {name: self.articles[i].as_source(1.0) for name, i in by_intent.items()}
        object.__setattr__(self, "_intent_sources", intent_sources)
        object.__setattr__(self, "sort_keys", tuple(doc_sort_key(a.doc_id) for a in self.articles))
        labels = frozenset(a.intent for a in self.articles if a.intent)
        object.__setattr__(self, "intent_labels", labels)

    @classmethod
    def from_bytes(
        cls,
        name: str,
        data: bytes,
        origin: str,
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
    ) -> KnowledgeBase:
        """Parse and index one file; embeddings come from `cache` when it holds a sound
        entry for these bytes and this embedder, else are computed (and stored)."""
        articles = parse_bytes(data, origin, name)
        digest = hashlib.sha256(data).hexdigest()
        key = None if cache is None else cache.key(digest, embedder.info)
        embeddings = None if cache is None or key is None else cache.get(key, len(articles))
        if embeddings is None:
            embeddings = embedder.embed([a.embedding_text for a in articles])
            if cache is not None and key is not None:
                cache.put(key, embeddings)
        return cls(name=name, articles=articles, embeddings=embeddings, content_sha256=digest)

    def index_of(self, doc_id: str) -> int | None:
        return self._by_id.get(doc_id)

    def article(self, doc_id: str) -> Article | None:
        i = self._by_id.get(doc_id)
        return None if i is None else self.articles[i]

    def article_for_intent(self, intent: str) -> Article | None:
        i = self._by_intent.get(intent)
        return None if i is None else self.articles[i]

    def intent_source(self, intent: str) -> SourceDoc | None:
        """The article labelled with `intent` as a score-1 source, built once per base (a
        frozen model: every event with a sure intent asks for it, some twice)."""
        return self._intent_sources.get(intent)

    def idf_weight(self, word: str) -> float:
        """Unseen words weigh as much as the rarest: they count against coverage."""
        return self.idf.get(word, math.log(1 + len(self.articles)) + 1.0)


def parse_bytes(data: bytes, origin: str, kb_name: str) -> tuple[Article, ...]:
    """A whole file's bytes: UTF-8, then `parse_articles`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{origin}: not UTF-8 ({exc})"
        raise ConfigError(msg) from exc
    return parse_articles(text.splitlines(), origin, kb_name)


def default_cache_dir() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "splitpin" / "embeddings"
    )


class EmbeddingCache:
    """Article embeddings on disk, keyed by the file's sha256 and the embedder's identity.

    An entry is an .npz of the matrix, the sha256 of its bytes and its own key. It is used
    only if it loads without pickle, names this key (not a file copied under another
    name), has the expected shape and dtype, its bytes hash to the stored digest and its
    rows are finite unit vectors; anything else counts as corrupt and is recomputed and
    overwritten. (This guards against damage, not against someone who can write the
    cache directory: that is the user's own.) Writes are atomic (temp file + rename) and a
    cache that cannot be written only costs the next start-up the embedding time.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = default_cache_dir() if directory is None else directory
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    @staticmethod
    def key(content_sha256: str, info: EmbedderInfo) -> str:
        identity = json.dumps(
            {"content": content_sha256, "embedder": dataclasses.asdict(info)}, sort_keys=True
        )
        return hashlib.sha256(f"{identity}\n{EMBEDDING_RECIPE}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def get(self, key: str, rows: int) -> FloatArray | None:
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except OSError as exc:
            log.warning("embedding cache entry %s unreadable (%s): recomputing", path, exc)
            self.corrupt += 1
            return None
        try:  # from memory: a failed parse leaves no file open
            with np.load(io.BytesIO(raw), allow_pickle=False) as entry:  # zip CRCs checked
                embeddings = np.asarray(entry["embeddings"])
                digest = str(entry["sha256"])
                stored_key = str(entry["key"])
        except Exception as exc:  # numpy's header parser raises SyntaxError, TokenError, ...
            log.warning("embedding cache entry %s unreadable (%s): recomputing", path, exc)
            self.corrupt += 1
            return None
        if stored_key != key or not self._sound(embeddings, digest, rows):
            log.warning("embedding cache entry %s does not check out: recomputing", path)
            self.corrupt += 1
            return None
        self.hits += 1
        return embeddings

    @staticmethod
    def _sound(embeddings: npt.NDArray[np.generic], digest: str, rows: int) -> bool:
        if embeddings.dtype != np.float32 or embeddings.shape != (rows, EMBEDDING_DIM):
            return False
        if hashlib.sha256(embeddings.tobytes()).hexdigest() != digest:
            return False
        norms = np.linalg.norm(embeddings, axis=1)
        return bool(np.all(np.isfinite(embeddings)) and np.allclose(norms, 1.0, atol=1e-3))

    def put(self, key: str, embeddings: FloatArray) -> None:
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        digest = hashlib.sha256(matrix.tobytes()).hexdigest()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    np.savez(out, embeddings=matrix, sha256=np.array(digest), key=np.array(key))
                Path(tmp).replace(self.path(key))
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot write embedding cache %s (%s): continuing", self.directory, exc)


def rank(scores: Sequence[float], doc_ids: Sequence[str]) -> list[int]:
    """Indices by descending rounded score, ties by doc number: deterministic everywhere."""
    rounded = [round(float(s), RANK_DECIMALS) for s in scores]
    return sorted(range(len(doc_ids)), key=lambda i: (-rounded[i], doc_sort_key(doc_ids[i])))


def top_ranked(
    scores: Sequence[float], sort_keys: Sequence[tuple[str, int, str]], k: int
) -> list[int]:
    """`rank(scores, doc_ids)[:k]`, given the doc ids' `doc_sort_key`s: the same order
    (heapq.nsmallest equals sorted()[:k]), without sorting a whole base for k articles."""
    rounded = [round(float(s), RANK_DECIMALS) for s in scores]
    return heapq.nsmallest(k, range(len(rounded)), key=lambda i: (-rounded[i], sort_keys[i]))


def _package_kb(name: str) -> tuple[bytes, str]:
    """The packaged file, found next to this module.

    Not importlib.resources: in an editable install made before `providers` became a
    regular package, it resolves as a namespace package whose path includes the
    installer's hook, and `resources.files("providers")` fails on Python 3.11.
    """
    path = Path(__file__).resolve().parent / KB_DIR / f"{name}.jsonl"
    origin = f"{KB_PACKAGE}/{KB_DIR}/{name}.jsonl"
    try:
        return path.read_bytes(), origin
    except OSError as exc:
        msg = f"cannot read knowledge base {origin}: {exc}"
        raise ConfigError(msg) from exc


def _read_kb(path: Path) -> tuple[bytes, str]:
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        msg = f"cannot read knowledge base {path}: {exc}"
        raise ConfigError(msg) from exc


def check_kb_files(knowledge: KnowledgeConfig) -> dict[str, int]:
    """Parse every configured KB file without embedding it (`config validate`): the
    article count per base, or ConfigError naming file:line."""
    counts: dict[str, int] = {}
    for name, path in knowledge.bases.items():
        data, origin = _read_kb(path)
        counts[name] = len(parse_bytes(data, origin, name))
    return counts


class KnowledgeBases(Mapping[str, KnowledgeBase]):
    """The loaded knowledge bases by name, with the embedder that indexed them."""

    def __init__(self, embedder: Embedder, bases: Mapping[str, KnowledgeBase]) -> None:
        self.embedder = embedder
        self._bases = dict(bases)

    @classmethod
    def load(
        cls,
        embedder: Embedder,
        names: Sequence[str] = DEFAULT_KBS,
        *,
        directory: Path | None = None,
        files: Mapping[str, Path] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> KnowledgeBases:
        """`names` from package data, or from `directory/<name>.jsonl` when given (tests),
        then every `files` entry (a tenant's own bases); embeddings through `cache`."""
        bases: dict[str, KnowledgeBase] = {}
        for name in names:
            if directory is None:
                data, origin = _package_kb(name)
            else:
                data, origin = _read_kb(directory / f"{name}.jsonl")
            bases[name] = KnowledgeBase.from_bytes(name, data, origin, embedder, cache)
        for name, path in (files or {}).items():
            data, origin = _read_kb(path)
            bases[name] = KnowledgeBase.from_bytes(name, data, origin, embedder, cache)
        return cls(embedder, bases)

    @classmethod
    def for_config(
        cls, embedder: Embedder, knowledge: KnowledgeConfig, cache: EmbeddingCache | None = None
    ) -> KnowledgeBases:
        """The shipped bases and the config's own, embeddings cached under
        $XDG_CACHE_HOME/splitpin/embeddings unless another cache is given."""
        cache = EmbeddingCache() if cache is None else cache
        bases = cls.load(embedder, files=knowledge.bases, cache=cache)
        log.info(
            "knowledge bases %s loaded (embedding cache: %d hits, %d misses, %d corrupt)",
            ", ".join(bases),
            cache.hits,
            cache.misses,
            cache.corrupt,
        )
        return bases

    def __getitem__(self, name: str) -> KnowledgeBase:
        try:
            return self._bases[name]
        except KeyError:
            msg = f"unknown knowledge base {name!r}; loaded: {sorted(self._bases)}"
            raise ConfigError(msg) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._bases)

    def __len__(self) -> int:
        return len(self._bases)

    def resolve(self, source: SourceDoc) -> tuple[KnowledgeBase, int] | None:
        """The loaded knowledge base and article index an attached source refers to
        (`kb:<name>/<doc_id>`), if any."""
        prefix, _, rest = source.source.partition(":")
        kb_name, _, doc_id = rest.partition("/")
        if prefix != "kb" or kb_name not in self._bases or doc_id != source.doc_id:
            return None
        kb = self._bases[kb_name]
        index = kb.index_of(doc_id)
        return None if index is None else (kb, index)


class Retriever:
    """Cosine similarity between the query and every article of one knowledge base."""

    def __init__(self, bases: KnowledgeBases) -> None:
        self._bases = bases

    def retrieve(self, kb_name: str, query_text: str, top_k: int) -> tuple[SourceDoc, ...]:
        """The top_k articles nearest the query, best first, as sources to attach."""
        self._bases[kb_name]  # ConfigError before embedding if the name is unknown
        query = self._bases.embedder.embed([" ".join(query_text.split())])[0]
        return self.retrieve_by_embedding(kb_name, query, top_k)

    def intent_source(self, kb_name: str, intent: str) -> SourceDoc | None:
        """The article labelled with `intent`, as a source (score 1: chosen by the router's
        intent, not by similarity), or None when the base has none."""
        return self._bases[kb_name].intent_source(intent)

    def intents(self, kb_name: str) -> frozenset[str]:
        """Every intent label the base's articles carry."""
        return self._bases[kb_name].intent_labels

    def retrieve_by_embedding(
        self, kb_name: str, query: FloatArray, top_k: int
    ) -> tuple[SourceDoc, ...]:
        if top_k < 1:
            msg = f"top_k must be at least 1, got {top_k}"
            raise ValueError(msg)
        kb = self._bases[kb_name]
        scores = kb.embeddings @ query
        order = top_ranked(scores.tolist(), kb.sort_keys, top_k)
        return tuple(kb.articles[i].as_source(float(scores[i])) for i in order)
