"""The listener SDK: capture the calls an agent makes with the official ``openai`` client.

For agents that call their LLM directly rather than through the gateway (the paper's
"listener decorating the model call interface")::

    from openai import OpenAI
    from protege.capture import BackgroundPublisher, NatsEndpoint, capture_openai

    log = BackgroundPublisher(NatsEndpoint.from_credentials("acme.json"), spool_dir)
    client = capture_openai(OpenAI(), log, app="sql-agent")
    client.chat.completions.create(...)   # unchanged; every call is now logged
    client.responses.create(...)          # so are Responses API calls, in chat shape

The tenant is the one of the NATS credentials (``tenant-acme``: `protege calls credentials
acme` makes them), whose identity may publish that tenant's calls only; naming another
tenant is refused (ValueError) before any call is made.

It works at the HTTP layer, under the client: an ``httpx2`` transport (the HTTP library
of openai>=3) sees the request body and the response bytes as they pass (streamed or not,
sync or async), so the records are the same as the gateway's. The client's behaviour,
results and exceptions are unchanged, and a logging failure never reaches the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import httpx2
import openai
from pydantic import ValidationError

from protege.api.calls import (
    CallRecord,
    CallStatus,
    ChatRequest,
    Endpoint,
    Upstream,
    UpstreamKind,
    check_subject_token,
)
from protege.api.responses import chat_request
from protege.capture.recorder import CallObserver, RecordSink

log = logging.getLogger(__name__)


def capture_tenant(sink: RecordSink, tenant: str | None) -> str:
    """The tenant whose calls ``sink`` may log: its credentials' (a ``tenant`` naming another is
    refused), else ``tenant`` (credentials of a component, or a NATS without authentication)."""
    bound = getattr(sink, "tenant", None)
    if bound is not None:
        if tenant is not None and tenant != bound:
            raise ValueError(
                f"tenant={tenant!r} is refused: the call log credentials are tenant {bound!r}'s, and they "
                f"may publish {bound!r}'s calls only; leave tenant out (it comes from the credentials) "
                f"or publish with {tenant!r}'s credentials"
            )
        return str(bound)
    if tenant is None:
        raise ValueError(
            "no tenant: the call log credentials name none; publish with a tenant's credentials "
            "(NatsEndpoint.from_credentials; `protege calls credentials <tenant>` makes them), or pass "
            "tenant= when logging to a NATS without authentication"
        )
    return tenant


class _Capture:
    """What the sync and async transports share: which calls to observe, and where records go."""

    def __init__(self, sink: RecordSink, tenant: str | None, app: str) -> None:
        self.sink = sink
        self.tenant = check_subject_token(capture_tenant(sink, tenant), "tenant")
        self.app = check_subject_token(app, "app")

    def observe(self, request: httpx2.Request) -> CallObserver | None:
        """An observer for a chat completion or a Responses call (recorded in chat shape, as the
        gateway records it); None for anything else, which passes unlogged."""
        path = request.url.path
        endpoint = Endpoint.RESPONSES if path.endswith("/responses") else Endpoint.CHAT_COMPLETIONS
        if request.method != "POST" or not (
            path.endswith("/chat/completions") or path.endswith("/responses")
        ):
            return None
        try:
            body = json.loads(request.content)
            shape = chat_request(body).body if endpoint is Endpoint.RESPONSES else body
            chat = ChatRequest.model_validate(shape)
        except (ValueError, ValidationError, httpx2.RequestNotRead):
            return None  # not a call we can read: pass it on, unlogged
        upstream = Upstream(kind=UpstreamKind.TEACHER, model=chat.model)
        return CallObserver(
            chat, tenant=self.tenant, app=self.app, source="sdk", upstream=upstream, endpoint=endpoint
        )

    def submit(self, record: CallRecord) -> None:
        try:
            self.sink.submit(record)
        except Exception:  # the agent's call must never fail because logging did
            log.exception("protege capture: could not hand a call record over; it is lost")

    def relayed(
        self,
        observer: CallObserver,
        response: httpx2.Response,
        stream: httpx2.SyncByteStream | httpx2.AsyncByteStream,
    ) -> httpx2.Response:
        """The response as the client will read it, its body passing through ``stream``."""
        observer.on_status(response.status_code)
        return httpx2.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def failed(self, observer: CallObserver, error: Exception) -> None:
        timeout = isinstance(error, httpx2.TimeoutException)
        status = CallStatus.TIMEOUT if timeout else CallStatus.UPSTREAM_ERROR
        kind = "timeout" if timeout else "connect_error"
        self.submit(observer.failed(status, kind, f"{type(error).__name__}: {error}"))


class _Relay:
    """Sees the response body pass and logs the call once, when the body ends or is closed."""

    def __init__(self, capture: _Capture, observer: CallObserver) -> None:
        self.capture = capture
        self.observer = observer
        self.finished = False

    def data(self, chunk: bytes) -> None:
        self.observer.on_bytes(chunk)

    def end(self, complete: bool, error: Exception | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        stream = self.observer.stream
        if stream is not None and stream.done:
            complete = True  # the client stops reading at `data: [DONE]`, before the body's end
        if error is not None:
            self.capture.failed(self.observer, error)
        elif complete:
            self.capture.submit(self.observer.completed())
        else:
            self.capture.submit(
                self.observer.failed(
                    CallStatus.CLIENT_DISCONNECTED,
                    "client_disconnected",
                    "the caller closed the response before it was complete",
                )
            )


class _SyncStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, relay: _Relay) -> None:
        self.inner = inner
        self.relay = relay

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                self.relay.data(chunk)
                yield chunk
        except httpx2.TransportError as error:
            self.relay.end(False, error)
            raise
        self.relay.end(True)

    def close(self) -> None:
        self.relay.end(False)  # no-op when the body was read to its end
        self.inner.close()


class _AsyncStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, relay: _Relay) -> None:
        self.inner = inner
        self.relay = relay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                self.relay.data(chunk)
                yield chunk
        except httpx2.TransportError as error:
            self.relay.end(False, error)
            raise
        self.relay.end(True)

    async def aclose(self) -> None:
        self.relay.end(False)
        await self.inner.aclose()


class CapturingTransport(httpx2.BaseTransport):
    """An httpx transport that logs every chat completion passing through ``inner``."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        tenant: str | None = None,
        app: str = "default",
        inner: httpx2.BaseTransport | None = None,
    ):
        self.capture = _Capture(sink, tenant, app)
        self.inner = inner or httpx2.HTTPTransport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        observer = self.capture.observe(request)
        if observer is None:
            return self.inner.handle_request(request)
        try:
            response = self.inner.handle_request(request)
        except httpx2.TransportError as error:
            self.capture.failed(observer, error)
            raise
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return self.capture.relayed(
            observer, response, _SyncStream(response.stream, _Relay(self.capture, observer))
        )

    def close(self) -> None:
        self.inner.close()


class AsyncCapturingTransport(httpx2.AsyncBaseTransport):
    """The asyncio twin of :class:`CapturingTransport`."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        tenant: str | None = None,
        app: str = "default",
        inner: httpx2.AsyncBaseTransport | None = None,
    ):
        self.capture = _Capture(sink, tenant, app)
        self.inner = inner or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        observer = self.capture.observe(request)
        if observer is None:
            return await self.inner.handle_async_request(request)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx2.TransportError as error:
            self.capture.failed(observer, error)
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return self.capture.relayed(
            observer, response, _AsyncStream(response.stream, _Relay(self.capture, observer))
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


Client = TypeVar("Client", openai.OpenAI, openai.AsyncOpenAI)


def capture_openai(
    client: Client, sink: RecordSink, *, tenant: str | None = None, app: str = "default"
) -> Client:
    """A copy of an ``openai.OpenAI`` / ``AsyncOpenAI`` (or Azure) client that logs its chat calls.

    The calls are ``sink``'s tenant's, the one of its NATS credentials (:func:`capture_tenant`).

    The copy keeps the client's key, base URL, headers, retries and timeouts; only its HTTP
    transport gains the listener. ``sink`` is a :class:`BackgroundPublisher` (any thread),
    or a :class:`CallLogPublisher` running in the async client's own event loop.
    """
    if isinstance(client, openai.AsyncOpenAI):
        http_client: httpx2.Client | httpx2.AsyncClient = openai.DefaultAsyncHttpxClient(
            transport=AsyncCapturingTransport(sink, tenant=tenant, app=app)
        )
    elif isinstance(client, openai.OpenAI):
        http_client = openai.DefaultHttpxClient(transport=CapturingTransport(sink, tenant=tenant, app=app))
    else:
        raise TypeError(
            f"capture_openai wraps openai.OpenAI or openai.AsyncOpenAI clients, not {type(client).__name__}; "
            "for other HTTP clients mount protege.capture.CapturingTransport yourself"
        )
    return client.with_options(http_client=http_client)  # type: ignore[arg-type]
