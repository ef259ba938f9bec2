"""Time-ordered identifiers (UUIDv7, RFC 9562) for call records and versions."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

# Random bits need not be secret, only unique: one generator seeded from the OS per process
# (a urandom call per id costs a system call on every logged call).
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))  # a child never repeats us

_lock = threading.Lock()
_last_ms = 0
_last_counter = 0


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """Return a UUIDv7: 48-bit Unix milliseconds, then a 12-bit counter and random bits.

    Identifiers made in one process are strictly increasing, also within one millisecond
    (the counter in ``rand_a`` is bumped, RFC 9562 method 1), so sorting by id sorts by time.
    """
    global _last_ms, _last_counter
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _last_counter += 1
            if _last_counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _last_counter = 0
        else:
            _last_counter = _random.getrandbits(11)  # leave headroom
        _last_ms = ms
        counter = _last_counter
        rand_b = _random.getrandbits(62)
    return _compose(ms, counter, rand_b)


def uuid7_at(ms: int) -> uuid.UUID:
    """A UUIDv7 of a given Unix time, outside this process's increasing sequence (back-dated records)."""
    with _lock:
        return _compose(ms, _random.getrandbits(12), _random.getrandbits(62))


def _compose(ms: int, counter: int, rand_b: int) -> uuid.UUID:
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b)


def uuid7_time_ms(value: uuid.UUID | str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7."""
    u = uuid.UUID(str(value))
    if u.version != 7:
        raise ValueError(f"{value} is a UUIDv{u.version}, not a UUIDv7")
    return u.int >> 80
