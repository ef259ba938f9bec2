"""The OpenAI-compatible gateway: authenticate, check, route or forward to the teacher, log every call.

Endpoints: ``/v1/chat/completions`` and ``/v1/responses`` (captured and routed),
``/v1/completions`` (captured, teacher only) and ``/v1/embeddings`` (teacher only, counted
in the metrics, not in the call log). The caller gets the teacher's bytes untouched
(streamed chunks as they arrive) with its retry, request-id and rate-limit headers; the
call log sees the same bytes through a :class:`CallObserver` and gets exactly one record
per call, whatever the outcome. A streamed call whose caller did not ask for usage is
asked for it anyway, and the usage chunk is taken out of what the caller gets. Logging
happens after the answer is on its way and never fails or slows a call: the publisher
spools to disk when NATS is away.

The trust boundary: a call must fit its key's and its tenant's limits (:mod:`.limits`:
429 with ``retry-after``) and the body's bounds (:class:`.validation.Bounds`); keys are
re-read while the gateway runs (:class:`.auth.KeySource`); ``/metrics``, which holds every
tenant's figures, is served on its own port (:class:`.metrics.MetricsListener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from protege.api.calls import (
    AlternateAnswer,
    CallRecord,
    CallStatus,
    ChatRequest,
    Endpoint,
    RouteDecision,
    RouteReason,
    Upstream,
    UpstreamKind,
    Usage,
)
from protege.api.responses import ResponsesStream
from protege.capture.assemble import ResponsesAssembler
from protege.capture.publisher import CallLogPublisher
from protege.capture.recorder import CallObserver, RecordSink
from protege.capture.redaction import RedactingSink
from protege.config import Settings
from protege.serving.gateway.auth import KeySource, Principal
from protege.serving.gateway.errors import GatewayError, error_body
from protege.serving.gateway.headers import forwarded_headers
from protege.serving.gateway.kept_responses import KeptResponses
from protege.serving.gateway.limits import Lease, Limiter, RateLimited, Subject, effective
from protege.serving.gateway.metrics import GatewayMetrics, MetricsListener
from protege.serving.gateway.openapi import openapi_document
from protege.serving.gateway.quality import TeacherSampler, first_message
from protege.serving.gateway.routing import alternate, specialist_reply, specialist_upstream
from protege.serving.gateway.sse import (
    ResponsesEvents,
    SpecialistChunks,
    StreamTransform,
    UsageFilter,
    chat_error_event,
    responses_error_event,
    wants_usage,
    with_usage,
)
from protege.serving.gateway.teacher import TeacherClient, UpstreamReply, chunks
from protege.serving.gateway.validation import (
    Bounds,
    Parsed,
    parse_chat_request,
    parse_completions_request,
    parse_embeddings_request,
    parse_responses_request,
)
from protege.serving.router.breaker import Admission
from protege.serving.router.router import Plan, Router, SpecialistAnswer, streams_tokens
from protege.serving.router.table import CONVERSATION_HEADER, SpecialistRoute, UnknownAdapterError

log = logging.getLogger(__name__)
T = TypeVar("T")

CLIENT_GONE = "the caller closed the connection before the answer was complete"
LEASE = "protege.lease"  # the ASGI scope key of a call's rate-limit lease (freed when the response ends)


class ClientDisconnected(Exception):
    """The caller went away while the gateway was waiting for the upstream."""


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``, cancelling it and raising ClientDisconnected if the caller leaves first."""
    current = asyncio.current_task()
    assert current is not None
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    left = False

    def on_disconnect(task: asyncio.Future[None]) -> None:
        nonlocal left
        if not task.cancelled():
            left = True
            current.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if left:
            current.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


class GatewayCall(CallObserver):
    """A call's observer, with the rate-limit lease its tokens are charged to when it ends."""

    def __init__(self, *args: Any, lease: Lease | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease = lease


class Gateway:
    """The gateway's state: keys, models, the teacher client, the record sink and metrics."""

    def __init__(self, settings: Settings, sink: RecordSink | None, metrics: GatewayMetrics) -> None:
        self.settings = settings
        gateway = settings.gateway
        self.key_source = KeySource(gateway.api_keys, gateway.api_keys_file)
        self.metrics = metrics
        self.keys = self.key_source.load()
        self._keys_changed()
        self.limiter = Limiter()
        self.bounds = Bounds(gateway.max_json_depth, gateway.max_n, gateway.max_output_tokens)
        models = gateway.models or ([settings.teacher.model] if settings.teacher.model else [])
        self.models = tuple(models)
        self.teacher = TeacherClient(settings.teacher, gateway.upstream_connections)
        self.sink = sink
        self.router = Router(settings) if settings.router.enabled else None
        self.kept_responses = KeptResponses(gateway.kept_responses_bytes, gateway.kept_responses_seconds)
        if self.router is not None:
            metrics.watch_breakers(self.router)
        self.sampler = (
            TeacherSampler(
                self.teacher,
                settings.teacher.model or "",
                settings.router.teacher_samples_per_minute,
                settings.router.max_teacher_samples_in_flight,
            )
            if self.router is not None
            else None
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._shadows: set[asyncio.Future[SpecialistAnswer]] = set()
        self.teacher_takes_usage = True  # False once the teacher refused stream_options
        self.metrics_url: str | None = None  # where /metrics is served, once its listener is up

    # --- keys and limits -----------------------------------------------------------------
    def _keys_changed(self) -> None:
        self.metrics.api_keys.set(len(self.keys))
        self.metrics.keep_apps(self.keys.apps | set(self.settings.gateway.metrics_apps))

    async def watch_keys(self) -> None:
        """Re-read gateway.api_keys_file every gateway.api_keys_refresh_seconds (off the event loop)."""
        while True:
            await asyncio.sleep(self.settings.gateway.api_keys_refresh_seconds)
            errors = self.key_source.errors
            try:
                ring = await asyncio.to_thread(self.key_source.refresh)
            except Exception:  # the last good keys stay, whatever happens
                log.exception("gateway: re-reading the keys failed")
                continue
            if self.key_source.errors > errors:
                self.metrics.key_file_errors.inc(self.key_source.errors - errors)
            if ring is not None:
                self.keys = ring  # one assignment: a call sees the old keys or the new, never a mix
                self._keys_changed()

    def _admit(self, principal: Principal) -> Lease:
        """The call's lease on its key's and its tenant's limits, or a 429 GatewayError."""
        limits = self.settings.gateway.limits
        tenant = principal.tenant
        key = Subject(
            "key",
            principal.key_id,
            f"the API key '{principal.key_name}'" if principal.key_name else "this API key",
        )
        subjects = [
            (key, effective(limits.key, principal.limits)),
            (
                Subject("tenant", tenant, f"the tenant '{tenant}'"),
                effective(limits.tenant, limits.tenants.get(tenant)),
            ),
        ]
        try:
            return self.limiter.admit(subjects)
        except RateLimited as limited:
            refusal = limited.refusal
            self.metrics.rate_limited.labels(tenant, refusal.subject.kind, refusal.limit).inc()
            raise _rate_limited(
                refusal.subject, refusal.limit, refusal.value, refusal.retry_after_header
            ) from None

    # --- helpers -----------------------------------------------------------------------
    def log_call(self, record: CallRecord, status_code: int) -> None:
        self.metrics.observe(record, status_code)
        if self.sink is not None:
            self.sink.submit(record)

    def finish(self, observer: CallObserver, record: CallRecord, status_code: int) -> None:
        """Log the call; with a shadow answer or a teacher sample pending, once they are in.

        The caller never waits for either. Its tokens are charged to its limits now.
        """
        if isinstance(observer, GatewayCall) and observer.lease is not None and record.usage is not None:
            observer.lease.spend(record.usage.prompt_tokens + record.usage.completion_tokens)
        shadow, sample = observer.shadow, observer.teacher_sample
        if shadow is None and sample is None:
            self.log_call(record, status_code)
            return
        if isinstance(self.sink, CallLogPublisher | RedactingSink):
            self.sink.hold(record)  # journaled now: a crash before the extras come loses only them
        task = asyncio.ensure_future(self._log_with_extras(shadow, sample, record, status_code))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def finish_after_response(
        self, observer: CallObserver, record: CallRecord, status_code: int
    ) -> None:
        """:meth:`finish` as a response's background task: on the event loop, not in a thread."""
        self.finish(observer, record, status_code)

    async def drain(self) -> None:
        """Wait for the records still waiting on shadow answers (at shutdown: none is lost)."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        if isinstance(self.sink, RedactingSink):
            await self.sink.drain()  # and for those being redacted at capture

    async def _log_with_extras(
        self,
        shadow: asyncio.Future[SpecialistAnswer] | None,
        sample: asyncio.Future[AlternateAnswer] | None,
        record: CallRecord,
        status_code: int,
    ) -> None:
        """The record with its teacher sample and shadow answer, each scored against the teacher."""
        try:
            returned = first_message(record.response)
            teacher_answer = returned if record.route.target is UpstreamKind.TEACHER else None
            if sample is not None:
                taken = await sample
                teacher_answer = first_message(taken.response)
                if returned is not None and teacher_answer is not None and self.router is not None:
                    taken.agreement = self.router.agreement(record.route, returned, teacher_answer)
                record = record.model_copy(update={"teacher_sample": taken})
            if shadow is not None:
                answer = await shadow
                agreement = (
                    self.router.agreement(record.route, answer.message, teacher_answer)
                    if self.router is not None and teacher_answer is not None and answer.body is not None
                    else None
                )
                record = record.model_copy(update={"alternate": alternate(answer, agreement=agreement)})
        except Exception:  # shadows and samples are best effort; the call is logged regardless
            log.exception("gateway: a shadow answer or a teacher sample failed")
        self.log_call(record, status_code)

    def _sample_teacher(self, ask: dict[str, Any], route: SpecialistRoute, observer: CallObserver) -> None:
        """Send the call to the teacher too, off the request path, when the route samples it."""
        assert self.sampler is not None
        take, skipped = self.sampler.wanted(route, shadowed=observer.shadow is not None)
        if skipped is not None:
            self.metrics.teacher_samples.labels(route.specialist, skipped).inc()
        if take:
            self.metrics.teacher_samples.labels(route.specialist, "taken").inc()
            observer.teacher_sample = self.sampler.ask(ask)

    def _shadow(
        self, data: dict[str, Any], route: SpecialistRoute, version: str, admission: Admission
    ) -> asyncio.Future[SpecialistAnswer] | None:
        """Ask the shadow version too, unless as many shadow answers as allowed are awaited.

        Shadow answers only measure a candidate: when the pool is slower than the traffic, more
        of them would queue in front of the answers callers wait for.
        """
        assert self.router is not None
        if len(self._shadows) >= self.settings.router.max_shadow_in_flight:
            self.metrics.shadows_skipped.labels(route.specialist, version).inc()
            self.router.abandon(route.specialist, version, admission)
            return None
        shadow = asyncio.ensure_future(self.router.ask(data, route, version, admission))
        self._shadows.add(shadow)
        shadow.add_done_callback(self._shadows.discard)
        return shadow

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.gateway.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    def _is_specialist(self, tenant: str) -> Callable[[str], bool] | None:
        """Whether a model names one of ``tenant``'s specialists: another tenant's is as good as unknown
        (the same 404 as for a model that does not exist)."""
        router = self.router
        if router is None:
            return None
        return lambda model: router.is_specialist_name(model, tenant)

    async def _admitted(self, request: Request) -> tuple[Principal, Lease, bytes]:
        """The caller, its lease on its limits (freed by ApiRoutes when the response ends), the body."""
        principal = self.keys.authenticate(request.headers)
        lease = self._admit(principal)
        request.scope[LEASE] = lease
        return principal, lease, await self._read_body(request)

    def _refused(self, error: GatewayError | UnknownAdapterError) -> Response:
        if isinstance(error, UnknownAdapterError):
            error = GatewayError(404, str(error), code="model_not_found", param="model")
        self.metrics.rejected.labels(str(error.status_code)).inc()
        return error.response()

    @staticmethod
    def _observer(chat: ChatRequest, principal: Principal, endpoint: Endpoint, lease: Lease) -> GatewayCall:
        return GatewayCall(
            chat,
            tenant=principal.tenant,
            app=principal.app,
            upstream=Upstream(kind=UpstreamKind.TEACHER, model=chat.model),
            endpoint=endpoint,
            lease=lease,
        )

    # --- POST /v1/chat/completions -----------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        try:
            principal, lease, body = await self._admitted(request)
            specialist = self._is_specialist(principal.tenant)
            parsed = parse_chat_request(
                body, models=self.models, is_specialist=specialist, bounds=self.bounds
            )
            plan = (
                await self.router.plan(
                    principal.tenant, parsed.chat, request.headers.get(CONVERSATION_HEADER)
                )
                if self.router is not None
                else None
            )
        except (GatewayError, UnknownAdapterError) as error:
            return self._refused(error)
        observer = self._observer(parsed.chat, principal, Endpoint.CHAT_COMPLETIONS, lease)
        if plan is not None:
            answered = await self._route(plan, parsed.data, parsed, observer, request)
            if answered is not None:
                return answered
        return await self._teacher("/chat/completions", body, parsed.data, observer, request)

    # --- POST /v1/responses ------------------------------------------------------------
    async def responses(self, request: Request) -> Response:
        """The Responses API: routed like chat completions, in chat shape (protege.api.responses)."""
        try:
            principal, lease, body = await self._admitted(request)
            specialist = self._is_specialist(principal.tenant)
            parsed = parse_responses_request(
                body,
                models=self.models,
                is_specialist=specialist,
                bounds=self.bounds,
                continued=lambda data: self._continued(principal.tenant, data),
            )
            if parsed.continued:  # a specialist answered the previous response: the teacher gets it all
                body = json.dumps(parsed.data).encode()
            plan = None
            if self.router is not None and parsed.view.teacher_only is None:
                conversation = request.headers.get(CONVERSATION_HEADER)
                plan = await self.router.plan(principal.tenant, parsed.chat, conversation)
        except (GatewayError, UnknownAdapterError) as error:
            return self._refused(error)
        observer = self._observer(parsed.chat, principal, Endpoint.RESPONSES, lease)
        if plan is not None:
            answered = await self._route(plan, parsed.view.specialist_body(), parsed, observer, request)
            if answered is not None:
                return answered
        elif self.router is not None:  # state or tools only the teacher has
            observer.route = RouteDecision(target=UpstreamKind.TEACHER, reason=RouteReason.TEACHER_ONLY)
        return await self._teacher("/responses", body, parsed.data, observer, request)

    def _continued(self, tenant: str, data: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.kept_responses.continued(tenant, data)
        except LookupError as error:
            raise GatewayError(400, str(error), param="previous_response_id") from None

    def _keeper(
        self, observer: CallObserver, data: dict[str, Any]
    ) -> Callable[[dict[str, Any]], None] | None:
        """Where a specialist's Responses answer goes, for a call that continues it (None for chat calls)."""
        if observer.endpoint is not Endpoint.RESPONSES:
            return None
        return lambda response: self.kept_responses.keep(observer.tenant, data, response)

    # --- POST /v1/completions ----------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        """Legacy completions: to the teacher, logged with the prompt as one user message."""
        try:
            principal, lease, body = await self._admitted(request)
            parsed = parse_completions_request(body, models=self.models, bounds=self.bounds)
        except GatewayError as error:
            return self._refused(error)
        observer = self._observer(parsed.chat, principal, Endpoint.COMPLETIONS, lease)
        if self.router is not None:
            observer.route = RouteDecision(target=UpstreamKind.TEACHER, reason=RouteReason.TEACHER_ONLY)
        return await self._teacher("/completions", body, parsed.data, observer, request)

    # --- POST /v1/embeddings -----------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        """Embeddings: to the teacher; counted in the metrics, not in the call log."""
        started = time.perf_counter()
        try:
            principal, lease, body = await self._admitted(request)
            parse_embeddings_request(body, models=self.models, bounds=self.bounds)
        except GatewayError as error:
            return self._refused(error)

        def count(status: CallStatus, code: int, usage: Usage | None = None) -> None:
            seconds = time.perf_counter() - started
            if usage is not None:
                lease.spend(usage.prompt_tokens + usage.completion_tokens)
            self.metrics.observe_unlogged(
                "embeddings",
                tenant=principal.tenant,
                app=principal.app,
                status=status,
                status_code=code,
                seconds=seconds,
                usage=usage,
            )

        try:
            reply = await unless_disconnected(self.teacher.complete(body, "/embeddings"), request.receive)
        except ClientDisconnected:
            count(CallStatus.CLIENT_DISCONNECTED, 499)
            return Response(status_code=499)
        except TimeoutError:
            count(CallStatus.TIMEOUT, 504)
            return _error_response(504, "timeout", self.timeout_message())
        except aiohttp.ClientError as error:
            count(CallStatus.UPSTREAM_ERROR, 502)
            return _error_response(502, "connect_error", _connect_message(error))
        ok = reply.status < 400
        count(
            CallStatus.OK if ok else CallStatus.UPSTREAM_ERROR,
            reply.status,
            _embedding_usage(reply) if ok else None,
        )
        return _whole_response(reply)

    # --- routing -------------------------------------------------------------------------
    async def _route(
        self, plan: Plan, ask: dict[str, Any], parsed: Parsed, observer: CallObserver, request: Request
    ) -> Response | None:
        """The specialist's response, or None when the teacher answers (the decision is recorded).

        ``ask`` is the chat-completions request a specialist gets; ``parsed`` the caller's.
        """
        assert self.router is not None
        route, choice = plan.route, plan.choice
        if route is not None and choice.shadow is not None:
            observer.shadow = self._shadow(ask, route, choice.shadow, plan.shadow_admission)
        if route is None or choice.version is None:
            observer.route = plan.decision(UpstreamKind.TEACHER)
            return None
        chat = parsed.chat
        if chat.stream and streams_tokens(route, choice.version, plan.pinned):
            return await self._route_stream(
                plan, route, choice.version, ask=ask, parsed=parsed, observer=observer, request=request
            )
        try:
            answer = await unless_disconnected(
                self.router.ask(ask, route, choice.version, plan.admission), request.receive
            )
        except ClientDisconnected:
            return self._caller_left(observer)
        self.metrics.specialist_latency.labels(route.specialist, choice.version).observe(answer.seconds)
        problem = self.router.verdict(route, answer, chat.tools)
        if problem is not None and answer.body is not None and plan.pinned:
            problem = None  # the caller asked for this specialist by name: its answer, unchecked
        if problem is None and answer.body is not None:
            observer.upstream = specialist_upstream(answer)
            observer.route = plan.decision(UpstreamKind.SPECIALIST, confidence=answer.confidence)
            if not plan.pinned:
                self._sample_teacher(ask, route, observer)
            model = chat.model if not plan.pinned else observer.upstream.model
            content, seen = specialist_reply(
                answer.body,
                model,
                endpoint=observer.endpoint,
                stream=chat.stream,
                request=parsed.data,
                include_usage=wants_usage(parsed.data),
                on_response=self._keeper(observer, parsed.data),
            )
            observer.on_status(200)
            observer.on_bytes(seen)
            return Response(
                content,
                200,
                media_type="text/event-stream" if chat.stream else "application/json",
                headers={"x-protege-upstream": observer.upstream.model},
                background=BackgroundTask(self.finish_after_response, observer, observer.completed(), 200),
            )
        return self._not_answered(plan, answer, observer, problem)

    async def _route_stream(
        self,
        plan: Plan,
        route: SpecialistRoute,
        version: str,
        *,
        ask: dict[str, Any],
        parsed: Parsed,
        observer: CallObserver,
        request: Request,
    ) -> Response | None:
        """The specialist's tokens as they come; the teacher's turn if it fails before the first."""
        assert self.router is not None
        try:
            opened = await unless_disconnected(
                self.router.open_stream(ask, route, version, plan.admission), request.receive
            )
        except ClientDisconnected:
            return self._caller_left(observer)
        latency = self.metrics.specialist_latency.labels(route.specialist, version)
        if isinstance(opened, SpecialistAnswer):
            latency.observe(opened.seconds)
            problem = (RouteReason.FALLBACK_SPECIALIST_ERROR, opened.error or "no answer")
            return self._not_answered(plan, opened, observer, problem)
        observer.upstream = specialist_upstream(opened)
        observer.route = plan.decision(UpstreamKind.SPECIALIST)
        if not plan.pinned:
            self._sample_teacher(ask, route, observer)
        observer.on_status(200)
        model = parsed.chat.model if not plan.pinned else observer.upstream.model
        transform: StreamTransform
        keep = self._keeper(observer, parsed.data)
        writer = ResponsesStream(parsed.data, model) if keep is not None else None

        def ended() -> None:
            latency.observe(time.perf_counter() - opened.started)
            if keep is not None and writer is not None:
                keep(writer.response)

        if writer is not None:
            transform = ResponsesEvents(writer)
        else:
            transform = SpecialistChunks(model, wants_usage(parsed.data))
        return RelayResponse(
            self,
            opened.response,
            observer,
            headers=[(b"x-protege-upstream", observer.upstream.model.encode())],
            first=opened.first,
            transform=transform,
            upstream_name="specialist",
            on_end=ended,
        )

    def _not_answered(
        self,
        plan: Plan,
        answer: SpecialistAnswer,
        observer: CallObserver,
        problem: tuple[RouteReason, str] | None,
    ) -> Response | None:
        """A specialist's answer that cannot be returned: the teacher's turn (None), or a 502 if pinned."""
        if plan.pinned:  # nobody else can answer for a named specialist
            return self._upstream_failed(
                observer, CallStatus.UPSTREAM_ERROR, 502, "specialist_error", answer.error or ""
            )
        reason, detail = problem or (RouteReason.FALLBACK_SPECIALIST_ERROR, "no answer")
        observer.alternate = alternate(answer, rejection=detail)
        observer.route = plan.decision(UpstreamKind.TEACHER, reason, confidence=answer.confidence)
        return None

    def _caller_left(self, observer: CallObserver) -> Response:
        """The caller closed the connection before any answer: logged once, 499."""
        self.finish(
            observer, observer.failed(CallStatus.CLIENT_DISCONNECTED, "client_disconnected", CLIENT_GONE), 499
        )
        return Response(status_code=499)

    # --- the teacher ---------------------------------------------------------------------
    async def _teacher(
        self, path: str, body: bytes, data: dict[str, Any], observer: CallObserver, request: Request
    ) -> Response:
        """The teacher's answer at ``path``, relayed; a stream gets its usage asked for if need be."""
        if not observer.request.stream:
            reply = await self._reach_teacher(self.teacher.complete(body, path), observer, request)
            if isinstance(reply, Response):
                return reply
            return self._relay_whole(observer, reply)
        asked = body
        if observer.endpoint is not Endpoint.RESPONSES and not wants_usage(data) and self.teacher_takes_usage:
            asked = with_usage(body, data)
        upstream = await self._reach_teacher(self.teacher.open_stream(asked, path), observer, request)
        if isinstance(upstream, Response):
            return upstream
        headers = forwarded_headers(upstream.raw_headers)
        if upstream.status != 200:  # refused before streaming began: pass the error through as is
            async with upstream:
                content = await upstream.read()
            if asked is not body and upstream.status == 400 and b"stream_options" in content:
                # A teacher that knows no stream_options: asked again as the caller asked, from now on.
                log.warning("gateway: the teacher refuses stream_options; streamed calls log no usage")
                self.teacher_takes_usage = False
                return await self._teacher(path, body, data, observer, request)
            return self._relay_whole(
                observer, UpstreamReply(upstream.status, upstream.content_type, content, headers)
            )
        observer.on_status(upstream.status)
        transform = UsageFilter() if asked is not body else None
        return RelayResponse(
            self, upstream, observer, headers=headers, transform=transform, upstream_name="teacher"
        )

    async def _reach_teacher(
        self, work: Awaitable[T], observer: CallObserver, request: Request
    ) -> T | Response:
        """The teacher's reply, or the error response (already logged) when none came."""
        try:
            return await unless_disconnected(work, request.receive)
        except ClientDisconnected:
            return self._caller_left(observer)
        except TimeoutError:
            return self._upstream_failed(observer, CallStatus.TIMEOUT, 504, "timeout", self.timeout_message())
        except aiohttp.ClientError as error:
            return self._upstream_failed(
                observer, CallStatus.UPSTREAM_ERROR, 502, "connect_error", _connect_message(error)
            )

    def _relay_whole(self, observer: CallObserver, reply: UpstreamReply) -> Response:
        """The teacher's reply as it came; the call is logged once the caller has it."""
        observer.on_status(reply.status)
        observer.on_bytes(reply.body)
        return _whole_response(
            reply,
            BackgroundTask(self.finish_after_response, observer, observer.completed(), reply.status),
        )

    def _upstream_failed(
        self, observer: CallObserver, status: CallStatus, code: int, kind: str, message: str
    ) -> Response:
        self.finish(observer, observer.failed(status, kind, message), code)
        return _error_response(code, kind, message)

    def timeout_message(self, upstream: Literal["teacher", "specialist"] = "teacher") -> str:
        if upstream == "specialist":
            return (
                f"The specialist sent nothing for {self.settings.router.timeout_seconds:g} s "
                "(router.timeout_seconds)."
            )
        return (
            f"The teacher did not answer within {self.settings.teacher.timeout_seconds:g} s "
            "(teacher.timeout_seconds)."
        )


class RelayResponse(Response):
    """Streams an upstream's SSE bytes to the caller as they arrive, and logs the call once.

    Without a ``transform`` (the teacher's stream as the caller asked for it) every network
    read is passed on as it came; with one, whole events are, as the transform makes them.
    """

    def __init__(
        self,
        gateway: Gateway,
        upstream: aiohttp.ClientResponse,
        observer: CallObserver,
        *,
        headers: list[tuple[bytes, bytes]],
        first: bytes = b"",
        transform: StreamTransform | None = None,
        upstream_name: Literal["teacher", "specialist"] = "teacher",
        on_end: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(status_code=200)
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # no proxy buffering in front of us either
            *headers,
        ]
        self.gateway = gateway
        self.upstream = upstream
        self.observer = observer
        self.first = first
        self.transform = transform
        self.upstream_name = upstream_name
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((relay, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not relay.done():  # the caller left: stop reading the upstream
            relay.cancel()
        record, status_code = await relay
        self.gateway.finish(self.observer, record, status_code)

    async def _pass(self, data: bytes, send: Send) -> None:
        if self.transform is None:
            self.observer.on_bytes(data)
            await send({"type": "http.response.body", "body": data, "more_body": True})
            return
        out, seen = self.transform.feed(data)
        self.observer.on_bytes(seen)
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})

    def _error_event(self, message: str, kind: str) -> bytes:
        if self.transform is not None:
            return self.transform.error_event(message, kind)
        stream = self.observer.stream
        if isinstance(stream, ResponsesAssembler):
            return responses_error_event(message, kind, stream.sequence + 1)
        return chat_error_event(message, kind)

    async def _broke_off(self, error: TimeoutError | aiohttp.ClientError, send: Send) -> CallRecord:
        """The upstream broke off or went silent mid-stream: an error event ends the caller's stream."""
        timeout = isinstance(error, TimeoutError)
        if timeout:
            message = self.gateway.timeout_message(self.upstream_name)
        else:
            message = _connect_message(error, self.upstream_name)
        kind = "timeout" if timeout else "upstream_stream_error"
        event = self._error_event(message, kind)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": event, "more_body": False})
        return self.observer.failed(
            CallStatus.TIMEOUT if timeout else CallStatus.UPSTREAM_ERROR, kind, message
        )

    async def _relay(self, send: Send) -> tuple[CallRecord, int]:
        observer = self.observer
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self.transform is not None:
                head = self.transform.start()
                observer.on_bytes(head)
                if head:
                    await send({"type": "http.response.body", "body": head, "more_body": True})
            if self.first:
                await self._pass(self.first, send)
            async for data in chunks(self.upstream):
                await self._pass(data, send)
            last = b""
            if self.transform is not None:
                last, seen = self.transform.close()
                observer.on_bytes(seen)
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return observer.completed(), 200
        except asyncio.CancelledError:
            return observer.failed(CallStatus.CLIENT_DISCONNECTED, "client_disconnected", CLIENT_GONE), 499
        except OSError as error:  # the caller's socket broke while we were sending
            return observer.failed(CallStatus.CLIENT_DISCONNECTED, "client_disconnected", str(error)), 499
        except (TimeoutError, aiohttp.ClientError) as error:
            return await self._broke_off(error, send), 200
        except Exception as error:  # a bug of ours: the call is still logged, once
            log.exception("gateway: relaying a stream failed")
            return observer.failed(CallStatus.UPSTREAM_ERROR, "gateway_error", repr(error)), 500
        finally:
            self.upstream.release()
            if self.on_end is not None:
                self.on_end()


class ApiRoutes:
    """The API's POSTs straight to the gateway; every other request to FastAPI.

    The hot path skips FastAPI's routing, dependency and exception layers, which cost more
    than the gateway's own work per call (bench/gateway_overhead.py). The gateway turns
    every failure it expects into an OpenAI error itself; anything else is a 500 in the
    same format, and logged.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.routes: dict[str, Callable[[Request], Awaitable[Response]]] = {
            "/v1/chat/completions": gateway.chat_completions,
            "/v1/responses": gateway.responses,
            "/v1/completions": gateway.completions,
            "/v1/embeddings": gateway.embeddings,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            try:
                response = await handler(Request(scope, receive))
            except Exception:
                log.exception("gateway: unexpected failure")
                message = "The gateway failed unexpectedly; the error is in its log."
                response = Response(
                    error_body(message, type="server_error"), 500, media_type="application/json"
                )
            await response(scope, receive, send)
        finally:  # the call's concurrent slots, once its last byte (and record) is out, whatever happened
            lease: Lease | None = scope.get(LEASE)
            if lease is not None:
                lease.release()


def _whole_response(reply: UpstreamReply, background: BackgroundTask | None = None) -> Response:
    """An upstream's whole reply as the caller's response: its body, status and forwarded headers."""
    response = Response(
        reply.body, reply.status, media_type=reply.content_type or "application/json", background=background
    )
    response.raw_headers += reply.headers
    return response


def _error_response(code: int, kind: str, message: str) -> Response:
    return Response(
        error_body(message, type="upstream_error", code=kind), code, media_type="application/json"
    )


def _embedding_usage(reply: UpstreamReply) -> Usage | None:
    try:
        usage = json.loads(reply.body).get("usage")
        return Usage.model_validate(usage) if isinstance(usage, dict) else None
    except (ValueError, AttributeError, ValidationError):
        return None


def _rate_limited(subject: Subject, limit: str, value: int, retry_after: str) -> GatewayError:
    what = {
        "requests_per_minute": f"{value} requests per minute",
        "tokens_per_minute": f"{value} tokens (prompt plus completion) per minute",
        "concurrent_calls": f"{value} calls in progress at once",
    }[limit]
    setting = (
        f"its api_keys entry's limits.{limit} or gateway.limits.key.{limit}"
        if subject.kind == "key"
        else f"gateway.limits.tenants.<tenant>.{limit} or gateway.limits.tenant.{limit}"
    )
    return GatewayError(
        429,
        f"Rate limit reached for {subject.label}: {what}. Try again in {retry_after} s (the retry-after "
        f"header), or ask your Protégé operator to raise the limit ({setting}).",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"retry-after": retry_after},
    )


def _lifespan(
    gateway: Gateway, publisher: CallLogPublisher | None, listener: MetricsListener | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """What starts with the app and stops with it: metrics listener, publisher, router, keys watch."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if listener is not None:
            await listener.start()
            gateway.metrics_url = listener.url
        if publisher is not None:
            await publisher.start()
        if gateway.router is not None:
            await gateway.router.start()
        watching = gateway.settings.gateway.api_keys_file is not None
        watcher = asyncio.ensure_future(gateway.watch_keys()) if watching else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if listener is not None:
                await listener.close()
            await gateway.drain()
            await gateway.teacher.close()
            if gateway.router is not None:
                await gateway.router.close()
            if publisher is not None:
                await publisher.close()

    return lifespan


def _metrics_listener(settings: Settings, metrics: GatewayMetrics) -> MetricsListener | None:
    """The listener of gateway.metrics_port (None: /metrics is served on the API port)."""
    gateway = settings.gateway
    if gateway.metrics_port is None:
        return None
    return MetricsListener(metrics.registry, gateway.metrics_host or gateway.host, gateway.metrics_port)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes); send a shorter "
        "conversation or raise gateway.max_body_bytes.",
        code="request_too_large",
    )


def _connect_message(error: BaseException, upstream: str = "teacher") -> str:
    return f"The {upstream} could not be reached or broke off: {type(error).__name__}: {error}"


def create_app(settings: Settings, *, sink: RecordSink | None = None) -> FastAPI:
    """The gateway as an ASGI app.

    With ``sink=None`` and the call log enabled, the app runs its own
    :class:`CallLogPublisher` (started and flushed with the app's lifespan).
    """
    publisher: CallLogPublisher | None = None
    if sink is None and settings.call_log.enabled:
        publisher = CallLogPublisher.from_settings(settings)
        sink = publisher
    sink = RedactingSink.wrap(settings.curation, sink)  # tenants that redact_at_capture: before it is kept
    gateway = Gateway(settings, sink, GatewayMetrics(publisher))
    listener = _metrics_listener(settings, gateway.metrics)
    lifespan = _lifespan(gateway, publisher, listener)

    app = FastAPI(
        title="Protégé gateway",
        version="v1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = gateway
    document = openapi_document()
    app.add_middleware(ApiRoutes, gateway=gateway)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = "not_found" if error.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {error.detail}"
        return Response(error_body(message, code=code), error.status_code, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        return Response(error_body(str(error)), 400, media_type="application/json")

    @app.api_route("/v1/chat/completions", methods=["GET", "PUT", "PATCH", "DELETE"])
    @app.api_route("/v1/responses", methods=["GET", "PUT", "PATCH", "DELETE"])
    @app.api_route("/v1/completions", methods=["GET", "PUT", "PATCH", "DELETE"])
    @app.api_route("/v1/embeddings", methods=["GET", "PUT", "PATCH", "DELETE"])
    async def wrong_method(request: Request) -> Response:
        # POST is served by ApiRoutes before routing; other methods end here.
        message = f"{request.method} {request.url.path}: use POST"
        if request.url.path == "/v1/responses" and request.method == "GET":
            message += " (the gateway keeps no responses to GET: it stores nothing)"
        return Response(error_body(message), 405, headers={"Allow": "POST"}, media_type="application/json")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            gateway.keys.authenticate(request.headers)
        except GatewayError as error:
            return error.response()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "protege"} for name in gateway.models
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        body: dict[str, Any] = {"status": "ready", "models": list(gateway.models), "keys": len(gateway.keys)}
        if publisher is not None:
            # NATS being away does not make the gateway unready: records spool to disk.
            body["call_log"] = {"connected": publisher.connected, "spool_bytes": publisher.spool_bytes}
        ready = bool(gateway.models) and len(gateway.keys) > 0
        if not ready:
            body["status"] = "not ready: no models or no API keys configured"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(document)

    if listener is None:  # gateway.metrics_port: null puts every tenant's figures on the API port

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["ApiRoutes", "Gateway", "create_app"]
