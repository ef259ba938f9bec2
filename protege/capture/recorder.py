"""Turn one observed call — request bytes, response bytes as they pass, how it ended — into a record.

The gateway and the listener SDK both see the same thing: the request body the caller
sent and the upstream's response bytes on their way back to the caller. A
:class:`CallObserver` watches those bytes (without holding them up) and, when the call
ends, builds its one :class:`CallRecord`. It never raises on odd upstream output: a
record of what happened is always produced.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from protege.api.calls import (
    AlternateAnswer,
    CallRecord,
    CallStatus,
    ChatRequest,
    ChatResponse,
    Endpoint,
    ErrorInfo,
    Latency,
    RouteDecision,
    Upstream,
    Usage,
)
from protege.api.responses import chat_answer
from protege.capture.assemble import ResponsesAssembler, StreamAssembler


class RecordSink(Protocol):
    """Where finished records go: the call-log publisher, or anything with ``submit``."""

    def submit(self, record: CallRecord) -> None: ...


def parse_completion(body: bytes) -> tuple[ChatResponse | None, Usage | None]:
    """The answer and usage of a non-streamed completion body; (None, None) if it is not one."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or "choices" not in data:
            return None, None
        usage = Usage.model_validate(data["usage"]) if data.get("usage") else None
        return ChatResponse.model_validate(data), usage
    except (ValueError, ValidationError):
        return None, None


def parse_answer(body: bytes, endpoint: Endpoint) -> tuple[ChatResponse | None, Usage | None, str | None]:
    """The answer, usage and failure (a failed Responses call) of a whole body of ``endpoint``.

    Legacy completions (``choices[].text``) and Responses objects come back in
    chat-completion shape; (None, None, None) when the body is not an answer.
    """
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return (*parse_completion(body), None)
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            return None, None, None
        failure = None
        if endpoint is Endpoint.RESPONSES:
            if not isinstance(data.get("output"), list):
                return None, None, None
            if data.get("status") == "failed":
                error = data.get("error") or {}
                failure = str(error.get("message") if isinstance(error, dict) else error) or "failed"
            completion, usage = chat_answer(data)
        else:
            if not isinstance(data.get("choices"), list):
                return None, None, None
            choices = [
                {**choice, "message": {"role": "assistant", "content": choice.get("text")}}
                for choice in data["choices"]
                if isinstance(choice, dict)
            ]
            completion, usage = {**data, "choices": choices}, data.get("usage")
        return (
            ChatResponse.model_validate(completion),
            Usage.model_validate(usage) if usage else None,
            failure,
        )
    except (ValueError, ValidationError):
        return None, None, None


def error_message(body: bytes, limit: int = 500) -> str:
    """The message of an OpenAI-style error body, or the start of the body as text."""
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:limit]
        if isinstance(error, str):
            return error[:limit]
    except (ValueError, AttributeError):
        pass
    return body[:limit].decode("utf-8", errors="replace")


class CallObserver:
    """Observes one call and builds its record; feed it the response bytes as they pass."""

    def __init__(
        self,
        request: ChatRequest,
        *,
        tenant: str,
        app: str,
        source: Literal["gateway", "sdk"] = "gateway",
        upstream: Upstream | None = None,
        endpoint: Endpoint = Endpoint.CHAT_COMPLETIONS,
    ) -> None:
        self.request = request
        self.endpoint = endpoint
        self.tenant = tenant
        self.app = app
        self.source = source
        self.upstream = upstream
        self.timestamp = datetime.now(UTC)
        self.started = time.perf_counter()
        self.first_chunk_at: float | None = None
        self.status_code: int | None = None
        self.stream: StreamAssembler | ResponsesAssembler | None = None
        if request.stream:
            self.stream = ResponsesAssembler() if endpoint is Endpoint.RESPONSES else StreamAssembler()
        self.route: RouteDecision | None = None  # set by the router
        self.alternate: AlternateAnswer | None = None
        self.shadow: asyncio.Future[Any] | None = None  # a shadow answer the record waits for
        self.teacher_sample: asyncio.Future[Any] | None = None  # a teacher sample it waits for
        self._body: list[bytes] = []

    def on_status(self, status_code: int) -> None:
        self.status_code = status_code

    def on_bytes(self, data: bytes) -> None:
        if not data:
            return
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        if self.stream is not None and self.status_code in (None, 200):
            self.stream.feed(data)
        else:
            self._body.append(data)

    def _latency(self) -> Latency:
        now = time.perf_counter()
        ttft = None
        if self.stream is not None and self.first_chunk_at is not None:
            ttft = (self.first_chunk_at - self.started) * 1000
        return Latency(total_ms=(now - self.started) * 1000, ttft_ms=ttft)

    def _record(
        self,
        status: CallStatus,
        response: ChatResponse | None = None,
        usage: Usage | None = None,
        error: ErrorInfo | None = None,
    ) -> CallRecord:
        return CallRecord(
            timestamp=self.timestamp,
            tenant=self.tenant,
            app=self.app,
            source=self.source,
            endpoint=self.endpoint,
            request=self.request,
            response=response,
            usage=usage,
            latency=self._latency(),
            status=status,
            error=error,
            upstream=self.upstream,
            alternate=self.alternate,
            **({"route": self.route} if self.route is not None else {}),
        )

    def completed(self) -> CallRecord:
        """The upstream finished sending (successfully or with an HTTP error status)."""
        body = b"".join(self._body)
        if self.status_code is not None and self.status_code >= 400:
            return self._record(
                CallStatus.UPSTREAM_ERROR,
                error=ErrorInfo(
                    type="upstream_http_error", message=error_message(body), status_code=self.status_code
                ),
            )
        if self.stream is not None:
            if self.stream.error is not None:
                return self._record(
                    CallStatus.UPSTREAM_ERROR,
                    response=self.stream.response(),
                    usage=self.stream.usage,
                    error=ErrorInfo(
                        type="upstream_stream_error",
                        message=str(self.stream.error.get("message") or self.stream.error)[:500],
                    ),
                )
            response, usage = self.stream.response(), self.stream.usage
        else:
            response, usage, failure = parse_answer(body, self.endpoint)
            if failure is not None:
                return self._record(
                    CallStatus.UPSTREAM_ERROR,
                    response=response,
                    usage=usage,
                    error=ErrorInfo(type="upstream_response_failed", message=failure[:500]),
                )
        if response is None:
            return self._record(
                CallStatus.UPSTREAM_ERROR,
                error=ErrorInfo(
                    type="upstream_invalid_response",
                    message="the upstream answered without a completion: " + error_message(body, 200),
                    status_code=self.status_code,
                ),
            )
        return self._record(CallStatus.OK, response=response, usage=usage)

    def failed(self, status: CallStatus, error_type: str, message: str) -> CallRecord:
        """The call ended early: a timeout, a connection error, or the caller went away."""
        partial = self.stream.response() if self.stream is not None else None
        usage = self.stream.usage if self.stream is not None else None
        return self._record(
            status, response=partial, usage=usage, error=ErrorInfo(type=error_type, message=message[:500])
        )
