"""Per-key and per-tenant limits: requests and tokens per minute, concurrent calls (pure).

Nothing here does I/O or reads the time itself: the clock is injected, so the rules are
tested without waiting. One :class:`Limiter` lives in a gateway replica, on its event loop.

The rules:

- a call must fit its key's limits and its tenant's (all of the tenant's keys together);
- requests and tokens per minute are token buckets that hold a minute's worth and refill
  evenly (``limit / 60`` per second): a full minute's worth may come at once, then calls
  are spaced out;
- a call is admitted while its subject has a request left (at least one), a token left
  (at least one: the budget is not spent) and a free concurrent slot; the request and the
  slot are taken on admission, the slot given back when the call ends;
- tokens are the prompt plus completion tokens of the call's usage, charged when the call
  ends. Nothing is reserved before: the gateway has no tokenizer for the caller's model,
  and ``max_tokens`` is often unset or far above what is used, so reserving it would
  refuse calls that fit. A budget can therefore be overdrawn by the calls already in
  progress when it runs out (at most ``concurrent_calls`` of them); it is then in debt, and
  calls wait until it has refilled past zero;
- a refusal says which limit and for how long (``retry_after``: seconds until that budget
  has room again; 1 s for a concurrency limit, whose slots free up when calls end).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protege.config import RateLimits

CONCURRENCY_RETRY_SECONDS = 1.0  # a slot frees when a call ends, which no one can foretell


@dataclass(frozen=True)
class Limits:
    """One subject's effective limits (None: no limit)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_calls: int | None = None

    @property
    def unlimited(self) -> bool:
        return (self.requests_per_minute, self.tokens_per_minute, self.concurrent_calls) == (None, None, None)


UNLIMITED = Limits()


def effective(default: RateLimits, override: RateLimits | None) -> Limits:
    """``default`` with the fields ``override`` sets in their place (an explicit null lifts a limit)."""
    values = default.model_dump()
    if override is not None:
        values.update({name: getattr(override, name) for name in override.model_fields_set})
    return Limits(**values)


@dataclass(frozen=True)
class Subject:
    """Who a limit applies to: ``kind`` is "key" or "tenant"; ``label`` is what a refusal names."""

    kind: str
    id: str
    label: str


@dataclass(frozen=True)
class Refusal:
    subject: Subject
    limit: str  # requests_per_minute, tokens_per_minute or concurrent_calls
    value: int
    retry_after: float  # seconds

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (what ``retry-after`` carries)."""
        return str(max(1, math.ceil(self.retry_after - 1e-9)))


class RateLimited(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.subject.label}: {refusal.limit} {refusal.value}")
        self.refusal = refusal


@dataclass
class _Bucket:
    """Holds up to ``capacity``, refills ``capacity`` per minute; may run below zero (debt)."""

    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.capacity / 60)
        self.at = max(self.at, now)

    def wait(self, need: float) -> float:
        """Seconds until the level reaches ``need`` (0 when it has)."""
        return 0.0 if self.level >= need else (need - self.level) * 60 / self.capacity

    def resized(self, capacity: float, now: float) -> _Bucket:
        self.refill(now)
        return _Bucket(capacity, min(self.level, capacity), now)


@dataclass
class _State:
    """One subject's live counters, kept across limit changes."""

    limits: Limits
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    in_flight: int = 0

    def apply(self, limits: Limits, now: float) -> None:
        """Take new limits: a bucket keeps its level (at most the new capacity), a new one starts full."""
        self.requests = _resize(self.requests, limits.requests_per_minute, now)
        self.tokens = _resize(self.tokens, limits.tokens_per_minute, now)
        self.limits = limits


def _resize(bucket: _Bucket | None, capacity: int | None, now: float) -> _Bucket | None:
    if capacity is None:
        return None
    if bucket is None:
        return _Bucket(capacity, capacity, now)
    return bucket.resized(capacity, now) if bucket.capacity != capacity else bucket


@dataclass
class Lease:
    """An admitted call: its tokens are charged with :meth:`spend`, its slots freed by :meth:`release`."""

    _states: list[_State]
    _clock: Callable[[], float]
    released: bool = field(default=False)

    def spend(self, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self._clock()
        for state in self._states:
            if state.tokens is not None:
                state.tokens.refill(now)
                state.tokens.level -= tokens

    def release(self) -> None:
        """Free the call's concurrent slots (once; later calls do nothing)."""
        if self.released:
            return
        self.released = True
        for state in self._states:
            state.in_flight -= 1


class Limiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._states: dict[tuple[str, str], _State] = {}

    def _state(self, subject: Subject, limits: Limits, now: float) -> _State:
        key = (subject.kind, subject.id)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(UNLIMITED)
        if state.limits != limits:
            state.apply(limits, now)
        return state

    def admit(self, subjects: Sequence[tuple[Subject, Limits]]) -> Lease:
        """Admit one call of these subjects, or raise :class:`RateLimited` with the longest wait.

        Nothing is taken from any subject unless the call fits all of them.
        """
        now = self.clock()
        states: list[_State] = []
        refusals: list[Refusal] = []
        for subject, limits in subjects:
            if limits.unlimited and (subject.kind, subject.id) not in self._states:
                continue  # never limited: no state kept for it
            state = self._state(subject, limits, now)
            states.append(state)
            refusals += _refusals(subject, state, now)
        if refusals:
            raise RateLimited(max(refusals, key=lambda refusal: refusal.retry_after))
        for state in states:
            if state.requests is not None:
                state.requests.level -= 1
            state.in_flight += 1
        return Lease(states, self.clock)

    def in_flight(self, kind: str, id: str) -> int:
        state = self._states.get((kind, id))
        return state.in_flight if state is not None else 0


def _refusals(subject: Subject, state: _State, now: float) -> list[Refusal]:
    limits, found = state.limits, []
    if limits.concurrent_calls is not None and state.in_flight >= limits.concurrent_calls:
        found.append(Refusal(subject, "concurrent_calls", limits.concurrent_calls, CONCURRENCY_RETRY_SECONDS))
    for name, bucket, value in (
        ("requests_per_minute", state.requests, limits.requests_per_minute),
        ("tokens_per_minute", state.tokens, limits.tokens_per_minute),
    ):
        if bucket is None or value is None:
            continue
        bucket.refill(now)
        wait = bucket.wait(1)
        if wait > 0:
            found.append(Refusal(subject, name, value, wait))
    return found


__all__ = [
    "UNLIMITED",
    "Lease",
    "Limiter",
    "Limits",
    "RateLimited",
    "Refusal",
    "Subject",
    "effective",
]
