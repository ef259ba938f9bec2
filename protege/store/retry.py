"""How readers of remote storage back off between tries: one schedule for adapters and models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries, waiting ``first_delay`` seconds after the first failure, doubled after each
    next one up to ``max_delay``."""

    attempts: int = 4
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try."""
        return float(min(self.first_delay * 2 ** (failures - 1), self.max_delay))
