"""`LruMemo` against a plain reference: the same keys remembered, in the same order, for
any sequence of reads and writes, and never more than its size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from splitpin.core.lru import LruMemo

keys = st.integers(0, 6)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.lists(keys, max_size=4)),
        st.tuples(st.just("put"), st.lists(st.tuples(keys, st.integers()), max_size=4)),
    ),
    max_size=40,
)


@given(size=st.integers(0, 5), script=ops)
def test_it_behaves_as_a_least_recently_used_list(size: int, script: list[tuple]) -> None:
    memo: LruMemo[int, int] = LruMemo(size)
    reference: list[tuple[int, int]] = []  # oldest first
    for op, args in script:
        if op == "get":
            expected = []
            for key in args:
                hit = next((pair for pair in reference if pair[0] == key), None)
                if hit is not None:
                    reference.remove(hit)
                    reference.append(hit)
                expected.append(None if hit is None else hit[1])
            assert memo.get_many(args) == expected
        elif size > 0:
            for key, value in args:
                reference = [pair for pair in reference if pair[0] != key] + [(key, value)]
            reference = reference[-size:]
            memo.put_many(args)
        else:
            memo.put_many(args)
        assert len(memo) == len(reference) <= size
    assert memo.get_many([k for k, _ in reference]) == [v for _, v in reference]
