"""Circuit breakers with adaptive deadlines, one per specialist version (pure: the clock is passed in).

A hung or broken pool must not cost every routed call ``router.timeout_seconds`` before
the teacher answers. Each adapter the router asks (``<specialist>@<version>``) has a
:class:`Breaker`:

- **deadline**: how long an ordinary call waits for the version. Until
  ``deadline_min_observations`` successful answers are in, ``router.timeout_seconds``; then
  the ``deadline_quantile`` of the last ``deadline_window`` successful latencies times
  ``deadline_margin``, never below ``deadline_floor_seconds`` nor above
  ``router.timeout_seconds``. Whole answers and the first bytes of token streams are timed
  apart (two windows): they are different waits.
- **breaker**: ``breaker_failures`` consecutive failures (a timeout, an unreachable engine,
  a 5xx, a stream that opens with an error) open it; while open, calls are refused (the
  teacher answers) without asking the engine. After ``breaker_cooldown_seconds`` one call
  is let through as a probe (half-open), with the whole ``router.timeout_seconds`` (a slow
  but live engine must be able to prove itself, or a pool that got slower would stay shut
  out). The probe's success closes the breaker, its failure opens it for another cool-down.
  A probe whose outcome never comes (its caller left) frees the slot at once; one that is
  lost anyway is replaced after ``router.timeout_seconds``.

Any answer from the engine counts as a success here, whatever its quality (invalid output
and low confidence are the fallback checks' business, not the breaker's); a 4xx other
than an adapter the pool cannot load proves the engine alive too. All of it runs on the
gateway's event loop: no locks, a few comparisons per call, the quantile recomputed every
few observations.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from protege.config import RouterSettings


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls are asked, within the adaptive deadline
    OPEN = "open"  # calls are refused until the cool-down has passed
    HALF_OPEN = "half_open"  # one probe call is let through (or is out); the rest are refused

    @property
    def level(self) -> int:
        """The state as the metrics gauge shows it: 0 closed, 1 half-open, 2 open."""
        return _LEVELS[self]


_LEVELS = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Admission(StrEnum):
    """Whether, and how, one call may ask the version."""

    ASK = "ask"  # closed: asked within the adaptive deadline
    PROBE = "probe"  # the half-open breaker's one trial: asked within router.timeout_seconds
    REFUSE = "refuse"  # open: not asked, the teacher answers
    BYPASS = "bypass"  # not subject to the breaker (a call naming the specialist: no one else can answer)


@dataclass(frozen=True)
class BreakerPolicy:
    timeout: float  # router.timeout_seconds: the deadline without enough observations, and the ceiling
    failures: int = 5
    cooldown: float = 30.0
    window: int = 200
    min_observations: int = 20
    quantile: float = 0.99
    margin: float = 3.0
    floor: float = 2.0

    @classmethod
    def of(cls, settings: RouterSettings) -> BreakerPolicy:
        return cls(
            timeout=settings.timeout_seconds,
            failures=settings.breaker_failures,
            cooldown=settings.breaker_cooldown_seconds,
            window=settings.deadline_window,
            min_observations=settings.deadline_min_observations,
            quantile=settings.deadline_quantile,
            margin=settings.deadline_margin,
            floor=settings.deadline_floor_seconds,
        )


class LatencyWindow:
    """The latest successful latencies of one kind of wait, and the deadline they imply."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.latencies: deque[float] = deque(maxlen=policy.window)
        self._deadline = policy.timeout
        self._stale = 0  # observations since the deadline was computed
        self._every = max(1, policy.window // 20)  # sorting the window costs µs: not on every call

    def observe(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self._stale += 1
        count = len(self.latencies)
        if count >= self.policy.min_observations and (
            self._stale >= self._every or count == self.policy.min_observations
        ):
            self._deadline = self._compute()
            self._stale = 0

    def _compute(self) -> float:
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(self.policy.quantile * len(ordered)))  # nearest rank
        wanted = ordered[rank - 1] * self.policy.margin
        return min(self.policy.timeout, max(self.policy.floor, wanted))

    @property
    def deadline(self) -> float:
        """Seconds an ordinary call waits: ``router.timeout_seconds`` until enough are observed."""
        return self._deadline


class Breaker:
    """One version's breaker and its deadlines. ``on_change(old, new)`` hears every transition."""

    def __init__(
        self, policy: BreakerPolicy, on_change: Callable[[BreakerState, BreakerState], None] | None = None
    ) -> None:
        self.policy = policy
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probe_since: float | None = None  # while half-open: when the probe out was let through
        self.whole = LatencyWindow(policy)  # whole answers
        self.first = LatencyWindow(policy)  # the first bytes of token streams

    def _move(self, state: BreakerState, now: float) -> None:
        old, self.state = self.state, state
        if state is BreakerState.OPEN:
            self.opened_at = now
            self.probe_since = None
        elif state is BreakerState.CLOSED:
            self.failures = 0
            self.probe_since = None
        if old is not state and self.on_change is not None:
            self.on_change(old, state)

    def admit(self, now: float) -> Admission:
        """Whether a routed call may ask the version now; PROBE claims the half-open breaker's trial."""
        if self.state is BreakerState.CLOSED:
            return Admission.ASK
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.policy.cooldown:
                return Admission.REFUSE
            self._move(BreakerState.HALF_OPEN, now)
        if self.probe_since is not None and now - self.probe_since <= self.policy.timeout:
            return Admission.REFUSE  # a probe is out (one that outlived its deadline is lost: replaced)
        self.probe_since = now
        return Admission.PROBE

    def deadline(self, admission: Admission, *, first_bytes: bool = False) -> float:
        """Seconds to wait for the version: adaptive for an ordinary call, the whole timeout otherwise."""
        if admission is not Admission.ASK:
            return self.policy.timeout
        return (self.first if first_bytes else self.whole).deadline

    def succeeded(
        self, now: float, admission: Admission, seconds: float | None = None, *, first_bytes: bool = False
    ) -> None:
        """The engine answered (``seconds``: its latency, when it is one to learn the deadline from)."""
        if seconds is not None:
            (self.first if first_bytes else self.whole).observe(seconds)
        if self.state is BreakerState.CLOSED:
            self.failures = 0
        elif admission is Admission.PROBE:
            self._move(BreakerState.CLOSED, now)

    def failed(self, now: float, admission: Admission) -> None:
        """No answer: a timeout, an unreachable engine, an error from it."""
        if self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.policy.failures:
                self._move(BreakerState.OPEN, now)
        elif admission is Admission.PROBE:
            self._move(BreakerState.OPEN, now)
        # an ordinary call that began before the breaker opened changes nothing now

    def abandoned(self, admission: Admission) -> None:
        """A call whose outcome will never come (its caller left, it was not sent after all)."""
        if admission is Admission.PROBE and self.state is BreakerState.HALF_OPEN:
            self.probe_since = None  # the next call is the probe
