"""The embedded knowledge bases and the retriever that attaches their articles to requests.

Each knowledge base is one JSON-lines file shipped as package data (`splitpin/providers/kb/<name>.jsonl`),
one article per line. Files are validated at load (a bad line is a ConfigError naming
file:line) because a silently skipped article would make answers wrong, not fail.

Article embeddings (MiniLM, title + answer) are computed once at load; retrieval is then a
matrix-vector product. Ranking is deterministic: scores are rounded before sorting and ties
go to the lower doc number, so a replay attaches the same sources in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitpin.core.router.embedder import EMBEDDING_DIM, Embedder
from splitpin.errors import ConfigError, describe_validation_error
from splitpin.providers.base import SourceDoc

FloatArray = npt.NDArray[np.float32]

KB_PACKAGE = "splitpin.providers"
KB_DIR = "kb"
DEFAULT_KBS: tuple[str, ...] = ("banking77", "abcd", "smalltalk")
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


class Article(BaseModel):
    """One knowledge-base article, exactly as a line of the JSON-lines file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: str = Field(pattern=r"^InternalDoc-\d+$")
    kb: str = Field(min_length=1)
    intent: str = Field(min_length=1, description="banking77 label, or '<flow> / <subflow>'.")
    title: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    policy_notes: tuple[str, ...] = ()
    compliance: bool = False

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
        return f"{self.intent} {self.title} {self.answer}"

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
            article = Article.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(where, exc)) from exc
        if article.kb != kb_name:
            msg = f"{where}: kb is {article.kb!r}, this file is knowledge base {kb_name!r}"
            raise ConfigError(msg)
        if article.doc_id in seen_ids:
            msg = f"{where}: doc_id {article.doc_id} repeats line {seen_ids[article.doc_id]}"
            raise ConfigError(msg)
        if article.intent in seen_intents:
            msg = f"{where}: intent {article.intent!r} repeats line {seen_intents[article.intent]}"
            raise ConfigError(msg)
        seen_ids[article.doc_id] = lineno
        seen_intents[article.intent] = lineno
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
        object.__setattr__(self, "_by_intent", {a.intent: i for i, a in enumerate(self.articles)})

    @classmethod
    def from_bytes(cls, name: str, data: bytes, origin: str, embedder: Embedder) -> KnowledgeBase:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"{origin}: not UTF-8 ({exc})"
            raise ConfigError(msg) from exc
        articles = parse_articles(text.splitlines(), origin, name)
        embeddings = embedder.embed([a.embedding_text for a in articles])
        digest = hashlib.sha256(data).hexdigest()
        return cls(name=name, articles=articles, embeddings=embeddings, content_sha256=digest)

    def index_of(self, doc_id: str) -> int | None:
        return self._by_id.get(doc_id)

    def article(self, doc_id: str) -> Article | None:
        i = self._by_id.get(doc_id)
        return None if i is None else self.articles[i]

    def article_for_intent(self, intent: str) -> Article | None:
        i = self._by_intent.get(intent)
        return None if i is None else self.articles[i]

    def idf_weight(self, word: str) -> float:
        """Unseen words weigh as much as the rarest: they count against coverage."""
        return self.idf.get(word, math.log(1 + len(self.articles)) + 1.0)


def rank(scores: Sequence[float], doc_ids: Sequence[str]) -> list[int]:
    """Indices by descending rounded score, ties by doc number: deterministic everywhere."""
    rounded = [round(float(s), RANK_DECIMALS) for s in scores]
    return sorted(range(len(doc_ids)), key=lambda i: (-rounded[i], doc_sort_key(doc_ids[i])))


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
    ) -> KnowledgeBases:
        """From package data, or `directory/<name>.jsonl` when given (tests, overrides)."""
        bases: dict[str, KnowledgeBase] = {}
        for name in names:
            if directory is None:
                data, origin = _package_kb(name)
            else:
                path = directory / f"{name}.jsonl"
                try:
                    data, origin = path.read_bytes(), str(path)
                except OSError as exc:
                    msg = f"cannot read knowledge base {path}: {exc}"
                    raise ConfigError(msg) from exc
            bases[name] = KnowledgeBase.from_bytes(name, data, origin, embedder)
        return cls(embedder, bases)

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

    def retrieve_by_embedding(
        self, kb_name: str, query: FloatArray, top_k: int
    ) -> tuple[SourceDoc, ...]:
        if top_k < 1:
            msg = f"top_k must be at least 1, got {top_k}"
            raise ValueError(msg)
        kb = self._bases[kb_name]
        scores = kb.embeddings @ query
        order = rank(scores.tolist(), [a.doc_id for a in kb.articles])[:top_k]
        return tuple(kb.articles[i].as_source(float(scores[i])) for i in order)
