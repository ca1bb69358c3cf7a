"""The flow's classify step: whole micro-batches, a memo, and results as if one by one."""

from __future__ import annotations

from collections.abc import Sequence

from splitpin.core.router.classifier import Classification, Classifier
from splitpin.operators.classify import MemoizedClassifier

TEXTS = [
    "where is my card?",
    "hi",
    "My card was stolen yesterday. Please block it. Also, what is the exchange rate?",
    "Dear team,\n\nI was charged twice.\n\nThanks,\nPriya",
    "where is my card?",
    "I want to dispute a payment, it was not me",
    "hi",
]


class Counting:
    """The real classifier, counting the texts it is asked for."""

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.asked: list[str] = []

    def classify_batch(self, texts: Sequence[str]) -> list[Classification]:
        self.asked.extend(texts)
        return self.inner.classify_batch(texts)


def test_whole_batches_classify_as_one_by_one_and_repeats_are_free(
    classifier: Classifier,
) -> None:
    alone = [classifier.classify(text) for text in TEXTS]
    counting = Counting(classifier)
    memo = MemoizedClassifier(counting, memo_size=100)  # type: ignore[arg-type]
    assert memo.classify(TEXTS) == alone
    assert sorted(counting.asked) == sorted(set(TEXTS))  # each distinct text once
    assert memo.classify(list(reversed(TEXTS))) == list(reversed(alone))
    assert len(counting.asked) == len(set(TEXTS))  # the second batch came from the memo
