"""Time-sortable identifiers (ULIDs).

A ULID is 48 bits of milliseconds since the epoch followed by 80 random bits,
written as 26 Crockford base-32 characters. Ids made later sort later, so the
primary-key index doubles as a creation-order index; ids made in the same
millisecond by this process are kept strictly increasing.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_MAX = (1 << 80) - 1

_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(now: float | None = None) -> str:
    """Return a new ULID; ``now`` (seconds) overrides the time part."""
    global _last_ms, _last_rand
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        if ms <= _last_ms:
            # Same (or earlier, if the clock stepped back) millisecond: stay monotonic.
            ms = _last_ms
            rand = _last_rand + 1
            if rand > _RANDOM_MAX:
                ms += 1
                rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)
