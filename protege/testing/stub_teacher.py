"""A small, fast, deterministic OpenAI-shaped upstream for tests and benchmarks.

It is clearly not a model: it echoes the last user message, answers with a tool call when
tools are offered (chat completions, and the Responses API in the shapes the gateway
writes: :mod:`protege.api.responses`), and obeys a few commands in the last user message so tests can make
the upstream misbehave:

- ``!status 503`` — answer with that HTTP status and an OpenAI error body;
- ``!sleep 1.5`` — wait that long before answering (timeouts, disconnects);
- ``!stream-error`` — start a stream, then send an error event instead of finishing.

Written as a raw ASGI app (no framework) so that, as the upstream of a latency benchmark,
it adds as little as possible of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from protege.api.calls import last_user_text
from protege.api.responses import ResponsesStream, answer_chunk, chat_request

MODEL = "stub-teacher"
CREATED = 1_767_225_600  # fixed, like the id: the same request always gets the same bytes


def _command(text: str, name: str) -> str | None:
    for word_index, word in enumerate(parts := text.split()):
        if word == name:
            return parts[word_index + 1] if word_index + 1 < len(parts) else ""
    return None


def answer(request: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The stub's deterministic answer: (content, tool_calls)."""
    text = last_user_text(request.get("messages") or [])
    tools = request.get("tools") or []
    if tools and request.get("tool_choice") != "none":
        choice = request.get("tool_choice")
        name = (
            choice["function"]["name"]
            if isinstance(choice, dict)
            else tools[0].get("function", {}).get("name", "tool")
        )
        return None, [
            {
                "id": "call_stub_0",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"query": text})},
            }
        ]
    return f"echo: {text}", None


def _usage(
    request: dict[str, Any], content: str | None, tool_calls: list[dict[str, Any]] | None
) -> dict[str, int]:
    prompt = sum(len(str(m.get("content") or "").split()) for m in request.get("messages") or [])
    completion = len((content or json.dumps(tool_calls)).split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


Answer = Callable[[dict[str, Any]], tuple[str | None, list[dict[str, Any]] | None]]


class StubTeacher:
    """The ASGI app. ``chunk_delay`` spaces streamed chunks (to observe pass-through).

    ``answer`` gives (content, tool_calls) for a request; a LookupError from it is a 404
    saying why (the recorded teacher has no recording for the request).
    """

    model = MODEL

    def __init__(self, chunk_delay: float = 0.0, answer: Answer = answer) -> None:
        self.chunk_delay = chunk_delay
        self.answer = answer
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if scope["method"] == "GET" and path.endswith("/models"):
            models = [{"id": self.model, "object": "model", "created": 0, "owned_by": "protege"}]
            await _send_json(send, 200, {"object": "list", "data": models})
            return
        responses = path.endswith("/responses")
        if scope["method"] != "POST" or not (path.endswith("/chat/completions") or responses):
            await _send_json(
                send, 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
            )
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        asked = json.loads(raw)
        request = chat_request(asked).body if responses else asked  # a Responses call in chat shape
        completion_id = "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:24]
        text = last_user_text(request.get("messages") or [])
        if (status := _command(text, "!status")) is not None:
            error = {"message": f"stub error {status}", "type": "server_error", "param": None, "code": None}
            await _send_json(send, int(status), {"error": error})
            return
        if (delay := _command(text, "!sleep")) is not None:
            await asyncio.sleep(float(delay))
        try:
            content, tool_calls = self.answer(request)
        except LookupError as missing:
            error = {
                "message": str(missing),
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
            await _send_json(send, 404, {"error": error})
            return
        if responses:
            await self._responses(send, asked, self._completion(request, completion_id, content, tool_calls))
            return
        if request.get("stream"):
            broken = "!stream-error" in text
            await self._stream(
                send, request, completion_id, content=content, tool_calls=tool_calls, error=broken
            )
            return
        await _send_json(send, 200, self._completion(request, completion_id, content, tool_calls))

    def _completion(
        self,
        request: dict[str, Any],
        completion_id: str,
        content: str | None,
        tool_calls: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": request.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(request, content, tool_calls),
        }

    async def _responses(self, send: Send, request: dict[str, Any], completion: dict[str, Any]) -> None:
        """The answer as the Responses API gives it: a response object, or its events when streamed."""
        writer = ResponsesStream(request, completion["model"], CREATED)
        writer.response["id"] = "resp_" + completion["id"].removeprefix("chatcmpl-")  # a teacher's id, fixed
        events = writer.start() + writer.chunk(answer_chunk(completion)) + writer.finish()
        if not request.get("stream"):
            await _send_json(send, 200, writer.response)
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": events, "more_body": False})

    async def _stream(
        self,
        send: Send,
        request: dict[str, Any],
        completion_id: str,
        *,
        content: str | None,
        tool_calls: list[dict[str, Any]] | None,
        error: bool,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": request.get("model", self.model),
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if tool_calls:
            call = tool_calls[0]
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
                        }
                    ]
                }
            )
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
        else:
            words = (content or "").split(" ")
            deltas += [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
        for delta in deltas:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await _send_event(send, chunk)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        if error:
            await _send_event(send, {"error": {"message": "stub stream broke", "type": "server_error"}})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        finish = "tool_calls" if tool_calls else "stop"
        await _send_event(send, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            await _send_event(send, {**base, "choices": [], "usage": _usage(request, content, tool_calls)})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send_event(send: Send, data: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.body",
            "body": b"data: " + json.dumps(data).encode() + b"\n\n",
            "more_body": True,
        }
    )


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


app = StubTeacher()  # `uvicorn protege.testing.stub_teacher:app`, for benchmarks in their own process
