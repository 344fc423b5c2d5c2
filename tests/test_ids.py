"""ULIDs: 26 Crockford base-32 characters, time-sortable, strictly increasing in a process."""

from __future__ import annotations

import random
import time

import pytest

from tether import ids

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference(ms: int, rand: int) -> str:
    """The ULID of (ms, rand), digit by digit from the most significant: the spec's layout."""
    value = (ms % (1 << 50)) << 80 | rand
    return "".join(CROCKFORD[(value >> (5 * k)) & 31] for k in range(25, -1, -1))


def test_the_encoding_matches_the_reference_layout() -> None:
    rng = random.Random(15)
    cases = [(0, 0), ((1 << 48) - 1, (1 << 80) - 1), (1, 1), (1 << 47, 1 << 79)]
    cases += [(rng.randrange(1 << 48), rng.randrange(1 << 80)) for _ in range(2000)]
    for ms, rand in cases:
        assert ids.encode_ulid(ms, rand) == reference(ms, rand), (ms, rand)


def test_new_ids_sort_by_time_and_increase_within_a_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ids made earlier in this process with an injected clock (other tests' manual
    # clocks run years ahead) pin the time part ahead, to stay increasing: start afresh.
    monkeypatch.setattr(ids, "_last_ms", -1)
    monkeypatch.setattr(ids, "_last_rand", 0)
    before = int(time.time() * 1000)
    made = [ids.new_id() for _ in range(1000)]  # many in the same millisecond
    after = int(time.time() * 1000)
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    ms = [sum(CROCKFORD.index(ch) << (5 * (9 - k)) for k, ch in enumerate(i[:10])) for i in made]
    assert before <= ms[0] <= ms[-1] <= after
