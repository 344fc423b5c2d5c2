"""ULIDs: 26 Crockford base-32 characters, time-sortable, strictly increasing in a process."""

from __future__ import annotations

import random

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


def test_new_ids_sort_by_time_and_increase_within_a_millisecond() -> None:
    at = 1_796_000_000.123
    first = ids.new_id(at)
    assert len(first) == 26 and set(first) <= set(CROCKFORD)
    assert first[:10] == reference(int(at * 1000), 0)[:10]
    made = [ids.new_id(at) for _ in range(1000)]  # the same millisecond
    assert made == sorted(made) and len(set(made)) == len(made) and made[0] > first
    assert ids.new_id(at + 0.002) > made[-1]
