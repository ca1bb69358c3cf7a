"""Features and heads in numpy: n-grams, TF-IDF, int8 weights, reproducible artifacts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpin.core.router.heads import (
    LinearHead,
    TextFeaturizer,
    char_ngrams,
    dequantize_int8,
    load_npz,
    normalize,
    quantize_int8,
    save_npz,
    word_ngrams,
)


def test_normalize_collapses_whitespace() -> None:
    assert normalize("  my\tcard \n is  lost ") == "my card is lost"


def test_word_ngrams_are_lowercased_unigrams_and_bigrams() -> None:
    assert word_ngrams("Lost my CARD") == ["lost", "my", "card", "lost my", "my card"]
    # Single characters are not words (as scikit-learn's default token pattern).
    assert word_ngrams("a b") == []


def test_char_ngrams_stay_inside_words() -> None:
    grams = char_ngrams("ab cd", 2, 3)
    assert grams == [" a", "ab", "b ", " ab", "ab ", " c", "cd", "d ", " cd", "cd "]
    assert not any("b c" in g for g in grams)


def test_featurizer_fit_is_deterministic_and_blocks_are_unit_norm() -> None:
    texts = ["my card is lost", "my card was stolen", "where is my card", "lost card"]
    a = TextFeaturizer.fit(texts, max_words=5, max_chars=20, min_df=2)
    b = TextFeaturizer.fit(list(reversed(texts)), max_words=5, max_chars=20, min_df=2)
    assert a.word_vocab == b.word_vocab and a.char_vocab == b.char_vocab
    assert "card" in a.word_vocab and "my card" in a.word_vocab
    assert len(a.word_vocab) <= 5 and len(a.char_vocab) <= 20

    row = a.transform("my card is lost")
    assert np.all(np.diff(row.indices) > 0)
    n_words = len(a.word_vocab)
    words = row.values[row.indices < n_words]
    chars = row.values[row.indices >= n_words]
    assert np.isclose(np.linalg.norm(words), 1.0) and np.isclose(np.linalg.norm(chars), 1.0)
    # A rarer n-gram weighs more: "lost" is in 2 documents, "card" in all 4.
    value = dict(zip(row.indices.tolist(), row.values.tolist(), strict=True))
    assert value[a.word_vocab.index("lost")] > value[a.word_vocab.index("card")]


def test_featurizer_of_unknown_text_is_empty() -> None:
    f = TextFeaturizer.fit(["card card", "card"], max_words=10, max_chars=10, min_df=1)
    row = f.transform("zzz qqq")
    assert row.indices.size == 0 and row.values.size == 0


def test_int8_round_trip_error_is_below_half_a_step() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(50, 7)).astype(np.float32)
    w[:, 3] = 0.0
    q, scale = quantize_int8(w)
    back = dequantize_int8(q, scale)
    assert q.dtype == np.int8
    assert np.all(np.abs(back - w) <= scale[None, :] / 2 + 1e-6)
    assert np.all(back[:, 3] == 0.0)


def test_linear_head_softmax() -> None:
    head = LinearHead(
        labels=("a", "b"),
        w_emb=np.array([[1.0, -1.0], [0.0, 0.0]], dtype=np.float32),
        w_txt=np.array([[0.0, 4.0]], dtype=np.float32),
        bias=np.zeros(2, dtype=np.float32),
    )
    f = TextFeaturizer(["card"], [], np.ones(1, np.float32), np.ones(0, np.float32))
    emb = np.array([1.0, 0.0], dtype=np.float32)
    p = head.proba(emb, f.transform("nothing"))
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(np.exp(1) / (np.exp(1) + np.exp(-1)))
    # The n-gram "card" (value 1 after normalisation) adds 4 to class b's logit: 1 vs 3.
    p_card = head.proba(emb, f.transform("card"))
    assert p_card[1] == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3)))


def test_npz_is_byte_reproducible(tmp_path: Path) -> None:
    arrays = {"w": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.ones(3, np.int8)}
    save_npz(tmp_path / "a.npz", arrays)
    save_npz(tmp_path / "b.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_npz(tmp_path / "a.npz")
    assert set(loaded) == {"w", "b"}
    assert np.array_equal(loaded["w"], arrays["w"]) and loaded["w"].dtype == np.float16


def _reference_row(featurizer: TextFeaturizer, text: str) -> tuple[list[int], list[float]]:
    """TF-IDF as written once, n-gram by n-gram: what the remembered word columns replace."""
    out_cols: list[int] = []
    out_vals: list[float] = []
    blocks = (
        (word_ngrams(text), featurizer.word_vocab, featurizer.word_idf, 0),
        (char_ngrams(text), featurizer.char_vocab, featurizer.char_idf, len(featurizer.word_vocab)),
    )
    for grams, vocab, idf, offset in blocks:
        index = {g: offset + i for i, g in enumerate(vocab)}
        counts = Counter(index[g] for g in grams if g in index)
        if not counts:
            continue
        cols = np.array(sorted(counts), dtype=np.int32)
        tf = np.array([counts[int(c)] for c in cols], dtype=np.float32)
        vals = (1.0 + np.log(tf)) * idf[cols - offset]
        vals = (vals / float(np.sqrt(np.dot(vals, vals)))).astype(np.float32)
        out_cols += cols.tolist()
        out_vals += vals.tolist()
    return out_cols, out_vals


_CORPUS = [
    "my card was stolen yesterday",
    "how do I top up my card by bank transfer",
    "the exchange rate for euros looks wrong",
    "Card card CARD payment declined",
]


@settings(max_examples=150, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["card", "my", "top", "up", "euros", "Card", "stolen", "zz", "a"])
        | st.text(min_size=1, max_size=8),
        max_size=25,
    )
)
def test_transform_is_bit_identical_to_counting_each_ngram(words: list[str]) -> None:
    featurizer = TextFeaturizer.fit(_CORPUS * 2, max_words=50, max_chars=200)
    text = normalize(" ".join(words))
    for _ in range(2):  # cold, then with every word's columns remembered
        row = featurizer.transform(text)
        cols, vals = _reference_row(featurizer, text)
        assert row.indices.tolist() == cols
        assert row.values.tobytes() == np.asarray(vals, dtype=np.float32).tobytes()
