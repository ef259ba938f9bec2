"""Summaries of call records: counts, error rate, latency percentiles per tenant and app (pure)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from protege.api.calls import CallRecord, CallStatus

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '1h', '7d' as a timedelta; a ValueError that shows the format otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit, e.g. 90s, 15m, 1h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, nearest-rank; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class CallStats:
    tenant: str
    app: str
    calls: int
    errors: int
    streamed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    prompt_tokens: int
    completion_tokens: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def summarize(records: Iterable[CallRecord]) -> list[CallStats]:
    """One row per (tenant, app), sorted by tenant then app."""
    groups: dict[tuple[str, str], list[CallRecord]] = defaultdict(list)
    for record in records:
        groups[(record.tenant, record.app)].append(record)
    rows = []
    for (tenant, app), group in sorted(groups.items()):
        latencies = sorted(r.latency.total_ms for r in group)
        rows.append(
            CallStats(
                tenant=tenant,
                app=app,
                calls=len(group),
                errors=sum(r.status is not CallStatus.OK for r in group),
                streamed=sum(r.request.stream for r in group),
                p50_ms=percentile(latencies, 50),
                p95_ms=percentile(latencies, 95),
                p99_ms=percentile(latencies, 99),
                prompt_tokens=sum(r.usage.prompt_tokens for r in group if r.usage),
                completion_tokens=sum(r.usage.completion_tokens for r in group if r.usage),
            )
        )
    return rows
