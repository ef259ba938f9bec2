"""The gateway's side of routing: a specialist's answer as the caller's response, and records.

The caller always gets one normal OpenAI response: a specialist's answer carries the
model name the caller asked for (headers say who answered), and a streamed call gets it
as server-sent events. A rejected or shadow answer is kept in the record's ``alternate``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from protege.api.calls import (
    AlternateAnswer,
    ChatResponse,
    Endpoint,
    ErrorInfo,
    Latency,
    Upstream,
    UpstreamKind,
    Usage,
)
from protege.api.responses import ResponsesStream, answer_chunk
from protege.serving.router.router import SpecialistAnswer, SpecialistStream
from protege.serving.router.table import adapter_name


def specialist_upstream(answer: SpecialistAnswer | SpecialistStream) -> Upstream:
    return Upstream(
        kind=UpstreamKind.SPECIALIST,
        model=adapter_name(answer.specialist, answer.version),
        specialist=answer.specialist,
        version=answer.version,
    )


def alternate(
    answer: SpecialistAnswer, *, rejection: str | None = None, agreement: float | None = None
) -> AlternateAnswer:
    body = answer.body
    return AlternateAnswer(
        upstream=specialist_upstream(answer),
        response=ChatResponse.model_validate(body) if body else None,
        usage=Usage.model_validate(body["usage"]) if body and body.get("usage") else None,
        latency=Latency(total_ms=answer.seconds * 1000),
        error=ErrorInfo(type="specialist_error", message=answer.error[:500]) if answer.error else None,
        rejection=rejection,
        agreement=agreement,
    )


def caller_body(answer: dict[str, Any], model: str, stream: bool, include_usage: bool) -> bytes:
    """The answer as the caller's response: JSON, or SSE chunks when it asked to stream."""
    answer = {**answer, "model": model}
    if not stream:
        return json.dumps(answer).encode()
    head = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk",
        "created": answer.get("created"),
        "model": model,
    }
    events = []
    for index, choice in enumerate(answer.get("choices") or []):
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
        events.append({**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        events.append(
            {**head, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        )
    if include_usage and answer.get("usage"):
        events.append({**head, "choices": [], "usage": answer["usage"]})
    return (
        b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    )


def specialist_reply(
    answer: dict[str, Any],
    model: str,
    *,
    endpoint: Endpoint,
    stream: bool,
    request: dict[str, Any],
    include_usage: bool,
    on_response: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[bytes, bytes]:
    """A specialist's whole answer as the caller's response, and as the call record reads it.

    Chat callers get a chat completion (or its chunks); Responses callers a response object
    (or its events), made from the same answer, and ``on_response`` the response object. The
    record's copy of a chat stream always holds the usage, whether the caller asked for it or not.
    """
    if endpoint is Endpoint.RESPONSES:
        writer = ResponsesStream(request, model, answer.get("created"))
        events = writer.start() + writer.chunk(answer_chunk(answer)) + writer.finish()
        content = events if stream else json.dumps(writer.response).encode()
        if on_response is not None:
            on_response(writer.response)
        return content, content
    content = caller_body(answer, model, stream, include_usage)
    if not stream or include_usage:
        return content, content
    return content, caller_body(answer, model, stream, True)
