"""Prometheus metrics of one gateway (its own registry, so several can live in one process).

They hold every tenant's traffic, so they are served on their own port
(:class:`MetricsListener`, ``gateway.metrics_port``), not to the API's callers. Label values
stay bounded: tenants come from the configured keys, and an ``X-Protege-App`` value that is
neither a key's own app nor in ``gateway.metrics_apps`` counts as ``other``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protege.api.calls import CallRecord, CallStatus, Usage
from protege.capture.publisher import CallLogPublisher
from protege.serving.router.breaker import BreakerState

if TYPE_CHECKING:
    from protege.serving.router.router import Router

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER_APP = "other"  # the app label of every X-Protege-App value not kept


class GatewayMetrics:
    def __init__(self, publisher: CallLogPublisher | None = None) -> None:
        self.registry = CollectorRegistry()
        self.apps: frozenset[str] = frozenset()  # app label values kept as they are
        self.rate_limited = Counter(
            "protege_gateway_rate_limited_requests",
            "Calls refused with 429 by a key's or a tenant's limit (requests_per_minute, tokens_per_minute, "
            "concurrent_calls); subject is key or tenant.",
            ["tenant", "subject", "limit"],
            registry=self.registry,
        )
        self.api_keys = Gauge("protege_gateway_api_keys", "API keys accepted now.", registry=self.registry)
        self.key_file_errors = Counter(
            "protege_gateway_api_keys_file_errors",
            "Re-reads of gateway.api_keys_file that failed (the last good keys stayed).",
            registry=self.registry,
        )
        self.requests = Counter(
            "protege_gateway_requests",
            "Calls by tenant, app, endpoint (chat.completions, responses, completions, embeddings), "
            "outcome and HTTP status.",
            ["tenant", "app", "endpoint", "status", "code"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "protege_gateway_rejected_requests",
            "Requests refused before reaching an upstream (auth, bad input, unknown model).",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "protege_gateway_request_duration_seconds",
            "Time from request to last byte, as the caller saw it.",
            ["tenant", "app", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "protege_gateway_time_to_first_token_seconds",
            "Time to the first streamed chunk.",
            ["tenant", "app"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "protege_gateway_tokens",
            "Tokens reported by the upstream, by kind (prompt, completion).",
            ["tenant", "app", "kind"],
            registry=self.registry,
        )
        self.routes = Counter(
            "protege_router_calls",
            "Calls by route decision: where they went (target), specialist, version and reason "
            "(specialist, canary, shadow, pinned, no_task_match, no_active_specialist, breaker_open, "
            "fallback_*).",
            ["target", "specialist", "version", "reason"],
            registry=self.registry,
        )
        self.specialist_latency = Histogram(
            "protege_router_specialist_duration_seconds",
            "Time for a specialist version's answer (adapter load included), accepted or not.",
            ["specialist", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_agreement = Histogram(
            "protege_router_shadow_agreement",
            "Score of shadow answers against the teacher's answers (the Specialist's metric).",
            ["specialist", "version"],
            buckets=(0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0),
            registry=self.registry,
        )
        self.teacher_agreement = Histogram(
            "protege_router_teacher_agreement",
            "Score of the answers a specialist version returned against teacher samples of the same calls.",
            ["specialist", "version"],
            buckets=(0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0),
            registry=self.registry,
        )
        self.shadows_skipped = Counter(
            "protege_router_shadows_skipped",
            "Calls not shadowed because router.max_shadow_in_flight shadow answers were awaited.",
            ["specialist", "version"],
            registry=self.registry,
        )
        self.teacher_samples = Counter(
            "protege_router_teacher_samples",
            "Calls a specialist answered that were (taken) or would have been (budget, in_flight: skipped) "
            "also sent to the teacher to score the specialist.",
            ["specialist", "outcome"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "protege_router_breaker_transitions",
            "Circuit breaker transitions of specialist versions, by the state entered "
            "(open, half_open, closed).",
            ["specialist", "version", "state"],
            registry=self.registry,
        )
        if publisher is not None:
            self.registry.register(_PublisherCollector(publisher))

    def watch_breakers(self, router: Router) -> None:
        """Export the router's breaker states and deadlines, and count its breakers' transitions."""
        self.registry.register(_BreakerCollector(router))

        def moved(specialist: str, version: str, state: BreakerState) -> None:
            self.breaker_transitions.labels(specialist, version, state.value).inc()

        router.on_breaker_change = moved

    def keep_apps(self, apps: Iterable[str]) -> None:
        """The app label values kept as they are (the keys' own apps and gateway.metrics_apps)."""
        self.apps = frozenset(apps)

    def app(self, app: str) -> str:
        return app if app in self.apps else OTHER_APP

    def observe(self, record: CallRecord, status_code: int) -> None:
        tenant, app = record.tenant, self.app(record.app)
        self.requests.labels(tenant, app, record.endpoint.value, record.status.value, str(status_code)).inc()
        stream = "true" if record.request.stream else "false"
        self.latency.labels(tenant, app, stream).observe(record.latency.total_ms / 1000)
        if record.latency.ttft_ms is not None:
            self.ttft.labels(tenant, app).observe(record.latency.ttft_ms / 1000)
        if record.usage is not None:
            self.tokens.labels(tenant, app, "prompt").inc(record.usage.prompt_tokens)
            self.tokens.labels(tenant, app, "completion").inc(record.usage.completion_tokens)
        self.observe_route(record)

    def observe_unlogged(
        self,
        endpoint: str,
        *,
        tenant: str,
        app: str,
        status: CallStatus,
        status_code: int,
        seconds: float,
        usage: Usage | None,
    ) -> None:
        """A call that has no call record (embeddings): counted, timed, its tokens added."""
        app = self.app(app)
        self.requests.labels(tenant, app, endpoint, status.value, str(status_code)).inc()
        self.latency.labels(tenant, app, "false").observe(seconds)
        if usage is not None:
            self.tokens.labels(tenant, app, "prompt").inc(usage.prompt_tokens)

    def observe_route(self, record: CallRecord) -> None:
        route = record.route
        self.routes.labels(
            route.target.value, route.specialist or "", route.version or "", route.reason.value
        ).inc()
        alternate, sample = record.alternate, record.teacher_sample
        if alternate is not None and alternate.agreement is not None:
            shadow = alternate.upstream.version or ""
            self.shadow_agreement.labels(route.specialist or "", shadow).observe(alternate.agreement)
        if sample is not None and sample.agreement is not None:
            served = route.version or ""
            self.teacher_agreement.labels(route.specialist or "", served).observe(sample.agreement)


class _BreakerCollector(Collector):
    """The breakers of the versions in the routing table, read at scrape time (on the event loop)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "protege_router_breaker_state",
            "Circuit breaker of a specialist version: 0 closed, 1 half-open (a probe may go), "
            "2 open (its calls go to the teacher).",
            labels=["specialist", "version"],
        )
        deadlines = GaugeMetricFamily(
            "protege_router_deadline_seconds",
            "A specialist version's deadline for ordinary calls, by wait (whole answer, first bytes of "
            "a stream): adaptive once enough answers were timed, router.timeout_seconds until then.",
            labels=["specialist", "version", "wait"],
        )
        for (specialist, version), breaker in list(self.router.breakers.items()):
            states.add_metric([specialist, version], breaker.state.level)
            deadlines.add_metric([specialist, version, "whole"], breaker.whole.deadline)
            deadlines.add_metric([specialist, version, "first_bytes"], breaker.first.deadline)
        yield states
        yield deadlines


class _PublisherCollector(Collector):
    """The call log's counters, read from the publisher at scrape time."""

    def __init__(self, publisher: CallLogPublisher) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.publisher.stats
        records = CounterMetricFamily(
            "protege_calllog_records",
            "Call records by outcome: published to JetStream, spooled to disk, replayed from the "
            "spool, dropped (spool full).",
            labels=["outcome"],
        )
        for outcome in ("published", "spooled", "replayed", "dropped"):
            records.add_metric([outcome], getattr(stats, outcome))
        yield records
        errors = CounterMetricFamily(
            "protege_calllog_errors", "NATS errors seen by the publisher, by type.", labels=["type"]
        )
        for name, count in sorted(stats.errors.items()):
            errors.add_metric([name], count)
        yield errors
        yield GaugeMetricFamily(
            "protege_calllog_queue_depth",
            "Records in the call log's journal not yet shipped.",
            value=self.publisher.queue_depth,
        )
        yield GaugeMetricFamily(
            "protege_calllog_queue_bytes",
            "Bytes of records in the journal not yet shipped (bounded by call_log.queue_max_bytes).",
            value=self.publisher.queue_bytes,
        )
        yield GaugeMetricFamily(
            "protege_calllog_spool_bytes",
            "Bytes waiting in the disk spool.",
            value=self.publisher.spool_bytes,
        )
        yield GaugeMetricFamily(
            "protege_calllog_connected", "1 when connected to NATS.", value=int(self.publisher.connected)
        )


class MetricsListener:
    """``GET /metrics`` on its own address, served on the event loop it is started on.

    Apart from the API's port, so that callers cannot read every tenant's traffic; a
    Prometheus (or a PodMonitor) scrapes this port instead.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port  # the bound port once started (a free one when asked for 0)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise RuntimeError(
                f"gateway.metrics_port: cannot listen on {self.host}:{self.port} ({reason}); "
                "free the port or choose another (PROTEGE_GATEWAY__METRICS_PORT)"
            ) from None
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
