"""The operator's Prometheus metrics, served on ``PROTEGE_OPERATOR_METRICS_PORT`` (9090; 0 turns it off)."""

from __future__ import annotations

import logging
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PASSES = Counter(
    "protege_operator_specialist_passes_total", "Flywheel passes over Specialists, by outcome.", ["result"]
)
PASS_SECONDS = Histogram(
    "protege_operator_specialist_pass_seconds",
    "Duration of one flywheel pass over one Specialist.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS = Counter("protege_operator_events_total", "Transitions reported as events, by reason.", ["reason"])
SPECIALISTS = Gauge("protege_operator_specialists", "Specialists by phase.", ["phase"])


class PhaseBook:
    """Each Specialist's last phase, so the gauge counts every Specialist once."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._seen: set[str] = set()

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        if phase is None:
            self._phases.pop((namespace, name), None)
        else:
            self._phases[namespace, name] = phase
        counts = Tally(self._phases.values())
        for known in self._seen | set(counts):
            SPECIALISTS.labels(phase=known).set(counts.get(known, 0))
        self._seen |= set(counts)


def serve(port: int) -> None:
    """Serve /metrics; a port in use is logged, not fatal (the operator's work matters more)."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as error:
        logging.getLogger(__name__).error(
            f"metrics not served: port {port} ({error}); set PROTEGE_OPERATOR_METRICS_PORT to a free one"
        )
