"""The API real agents use, end to end: real uvicorn gateways, real NATS, the OpenAI SDK.

The teacher here is a small OpenAI-like server (below) that behaves as OpenAI's API does
where the stub teacher does not: rate-limit and request-id headers, gzip bodies,
``"usage": null`` in every chunk once usage is asked for, the Responses API, legacy
completions and embeddings. The engine is a small vLLM-like server: token chunks as they
are generated, with the usage chunk when asked, and ways to fail.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from protege.api.calls import CallRecord, CallStatus, Endpoint, RouteReason, UpstreamKind
from protege.api.routes import RolloutStage
from protege.api.specialist import (
    ConfidenceCheck,
    ConfidenceSignal,
    EvaluationMetric,
    FallbackSpec,
    OutputValidation,
)
from protege.services.seaweedfs import SeaweedS3
from protege.serving.router.table import Candidate, RoutingTable, SpecialistRoute
from protege.serving.server import ServerThread
from protege.store.artifacts import ArtifactStore
from protege.testing.faults import TcpRelay
from protege.testing.plugin import RunningGateway, records_of, seed_task
from protege.workload import generate

pytestmark = pytest.mark.slow

MODEL = "gpt-fake"
UPSTREAM_HEADERS = [
    (b"x-request-id", b"req_fake_1"),
    (b"openai-processing-ms", b"42"),
    (b"x-ratelimit-limit-requests", b"500"),
    (b"x-ratelimit-remaining-tokens", b"1999"),
    (b"retry-after-ms", b"20"),
    (b"set-cookie", b"__cf_bm=secret; path=/"),
    (b"x-upstream-internal", b"hidden"),
    (b"keep-alive", b"timeout=5"),
]
FORWARDED = {
    "x-request-id",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


async def _read(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _compact(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _user_text(request: dict[str, Any]) -> str:
    if isinstance(request.get("input"), str):
        return str(request["input"])
    if isinstance(request.get("prompt"), str):
        return str(request["prompt"])
    for message in reversed(request.get("messages") or request.get("input") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content[0].get("text"))
    return ""


class FakeOpenAI:
    """An OpenAI-like teacher (raw ASGI). Records what it is sent as (path, body bytes)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.refuse_stream_options = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = await _read(receive)
        path = scope["path"].removeprefix("/v1")
        self.requests.append((path, raw))
        request = json.loads(raw)
        text = _user_text(request)
        if "!429" in text:
            error = {
                "error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
            }
            headers = [(b"retry-after", b"7"), (b"x-ratelimit-remaining-requests", b"0")]
            await self._whole(send, 429, error, headers)
        elif self.refuse_stream_options and "stream_options" in request:
            error = {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
            await self._whole(send, 400, error)
        elif path == "/embeddings":
            data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]
            usage = {"prompt_tokens": 3, "total_tokens": 3}
            await self._whole(send, 200, {"object": "list", "data": data, "model": MODEL, "usage": usage})
        elif path == "/responses":
            await self._responses(send, request, text)
        elif request.get("stream"):
            await self._stream(send, request, path, f"fake: {text}".split(" "))
        else:
            answer = f"fake: {text}"
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if path == "/completions":
                choice["text"] = answer
            else:
                choice["message"] = {"role": "assistant", "content": answer}
            body = {"id": "cmpl-fake", "object": "x", "created": 1, "model": MODEL, "choices": [choice]}
            await self._whole(send, 200, {**body, "usage": _usage(text)})

    async def _whole(
        self, send: Send, status: int, data: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = gzip.compress(_compact(data))  # the gateway's client accepts gzip: it gets gzip
        headers = [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", str(len(body)).encode()),
            *UPSTREAM_HEADERS,
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _start_events(self, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), *UPSTREAM_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _stream(self, send: Send, request: dict[str, Any], path: str, words: list[str]) -> None:
        await self._start_events(send)
        usage = (request.get("stream_options") or {}).get("include_usage")
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
        for i, word in enumerate([*words, None]):
            piece = None if word is None else (word if i == 0 else " " + word)
            if path == "/completions":
                choice: dict[str, Any] = {"text": piece or "", "index": 0, "logprobs": None}
            else:
                choice = {
                    "index": 0,
                    "delta": {"content": piece} if piece is not None else {},
                    "logprobs": None,
                }
            choice["finish_reason"] = "stop" if word is None else None
            chunk = {**head, "choices": [choice], **({"usage": None} if usage else {})}
            await self._event(send, b"data: " + _compact(chunk) + b"\n\n")
        if usage:
            final = {**head, "choices": [], "usage": _usage(" ".join(words))}
            await self._event(send, b"data: " + _compact(final) + b"\n\n")
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _event(self, send: Send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _responses(self, send: Send, request: dict[str, Any], text: str) -> None:
        if request.get("tools"):
            item: dict[str, Any] = {
                "type": "function_call",
                "id": "fc_fake",
                "call_id": "call_fake",
                "name": request["tools"][0]["name"],
                "arguments": '{"city": "Paris"}',
                "status": "completed",
            }
        else:
            part = {"type": "output_text", "text": f"fake: {text}", "annotations": []}
            item = {
                "type": "message",
                "id": "msg_fake",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        usage = {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 8,
        }
        response = {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": MODEL,
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": request.get("tools") or [],
            "usage": usage,
        }
        if not request.get("stream"):
            await self._whole(send, 200, response)
            return
        await self._start_events(send)
        events = [
            {"type": "response.created", "response": {**response, "status": "in_progress", "output": []}},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": response},
        ]
        for number, event in enumerate(events):
            data = {**event, "sequence_number": number}
            await self._event(send, f"event: {event['type']}\ndata: ".encode() + _compact(data) + b"\n\n")
        await send({"type": "http.response.body", "body": b""})


def _usage(text: str) -> dict[str, int]:
    return {"prompt_tokens": 4, "completion_tokens": len(text.split()), "total_tokens": 4 + len(text.split())}


class FakeEngine:
    """A vLLM-like engine behind Ray Serve: streams tokens ``delay`` apart; ``mode`` makes it fail.

    Modes: ``ok``; ``fail`` (HTTP 500); ``error-event`` (200, then an error event first);
    ``break`` (two tokens, then the connection drops); ``hang`` (no answer until the mode
    changes, or a minute passed); the keys of ``GARBAGE`` (200 with that body, streamed or not).
    """

    GARBAGE: ClassVar[dict[str, bytes]] = {
        "html": b"<html><body>502 Bad Gateway</body></html>",
        "json-array": b"[1, 2, 3]",
        "no-completion": b'{"choices": "none", "usage": 7}',
        "bad-usage": b'{"choices": [{"index": 0, "message": {"content": "x"}}], "usage": "lots"}',
        "bytes": b"\xff\xfe\x00garbage",
        "deep": b"[" * 5000 + b"]" * 5000,
    }

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.tokens = ["The", " answer", " is", " forty", " two"]
        self.tool_call: dict[str, str] | None = None
        self.token_probabilities: list[float] | None = None  # its answer's, when logprobs are asked
        self.requests: list[tuple[dict[str, Any], str]] = []

    def _choice(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole answer's choice (with its tokens' logprobs when asked and set)."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.tokens)}
        if self.tool_call:
            call = {"id": "call_e1", "type": "function", "function": self.tool_call}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if self.tool_call else "stop"}
        if request.get("logprobs") and self.token_probabilities:
            tokens = zip(self.tokens, self.token_probabilities, strict=True)
            content = [
                {"token": t, "logprob": math.log(p), "bytes": None, "top_logprobs": []} for t, p in tokens
            ]
            choice["logprobs"] = {"content": content}
        return choice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = json.loads(await _read(receive))
        adapter = dict(scope["headers"]).get(b"serve_multiplexed_model_id", b"").decode()
        self.requests.append((request, adapter))
        hung = time.monotonic()
        while self.mode == "hang" and time.monotonic() - hung < 60:  # noqa: ASYNC110 (set by the test's thread)
            await asyncio.sleep(0.05)
        if self.mode in self.GARBAGE:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]}
            )
            await send({"type": "http.response.body", "body": self.GARBAGE[self.mode]})
            return
        if self.mode == "fail":
            body = _compact({"error": {"message": "engine exploded", "type": "server_error"}})
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        head = {
            "id": "chatcmpl-engine",
            "object": "chat.completion.chunk",
            "created": 7,
            "model": request["model"],
        }
        if not request.get("stream"):
            body = {**head, "object": "chat.completion", "choices": [self._choice(request)]}
            body["usage"] = _usage("a b c d e")
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": _compact(body)})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )

        async def event(data: dict[str, Any]) -> None:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + _compact(data) + b"\n\n",
                    "more_body": True,
                }
            )

        if self.mode == "error-event":
            await event({"error": {"message": "adapter fell over", "type": "server_error", "code": 500}})
            await send({"type": "http.response.body", "body": b""})
            return
        await event(
            {
                **head,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            }
        )
        deltas: list[dict[str, Any]]
        if self.tool_call:
            name, arguments = self.tool_call["name"], self.tool_call["arguments"]
            first = {
                "index": 0,
                "id": "call_e1",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            half = len(arguments) // 2
            deltas = [{"tool_calls": [first]}]
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                for part in (arguments[:half], arguments[half:])
            ]
        else:
            deltas = [{"content": token} for token in self.tokens]
        for number, delta in enumerate(deltas):
            if self.mode == "break" and number == 2:
                raise RuntimeError("the engine died mid-answer")  # uvicorn drops the connection
            await event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            await asyncio.sleep(self.delay)
        finish = "tool_calls" if self.tool_call else "stop"
        await event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            await event({**head, "choices": [], "usage": _usage("a b c d e")})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@pytest.fixture(scope="module")
def teacher() -> Iterator[tuple[ServerThread, FakeOpenAI]]:
    app = FakeOpenAI()
    with ServerThread(app) as server:
        yield server, app


@pytest.fixture
def engine() -> Iterator[tuple[ServerThread, FakeEngine]]:
    app = FakeEngine()
    with ServerThread(app) as server:
        yield server, app


@pytest.fixture
def gateway(
    start_gateway: Callable[..., RunningGateway], teacher: tuple[ServerThread, FakeOpenAI]
) -> RunningGateway:
    teacher[1].refuse_stream_options = False
    return start_gateway(teacher_url=teacher[0].url + "/v1", teacher={"model": MODEL}, app="agent")


def _headers(gateway: RunningGateway, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}", **extra}


def _post(gateway: RunningGateway, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gateway.base_url + path, json=body, headers=_headers(gateway, **headers), timeout=30)


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def _sse(raw: bytes) -> list[Any]:
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            events.append(data[0] if data[0] == "[DONE]" else json.loads(data[0]))
    return events


def _sent_to_teacher(teacher: FakeOpenAI, path: str) -> bytes:
    return next(raw for sent, raw in reversed(teacher.requests) if sent == path)


# --- 1. unknown fields, 2. api-key --------------------------------------------------------------


def test_unknown_fields_reach_the_teacher_unchanged_and_the_record(
    gateway: RunningGateway, teacher: tuple[ServerThread, FakeOpenAI]
) -> None:
    body = json.dumps(_chat("hello", top_k=5, frobnicate={"a": [1]}, temperature=0.1)).encode()
    response = httpx.post(gateway.base_url + "/chat/completions", content=body, headers=_headers(gateway))
    assert (
        response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "fake: hello"
    )
    assert _sent_to_teacher(teacher[1], "/chat/completions") == body  # the caller's bytes, untouched
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.request.model_extra == {"top_k": 5, "frobnicate": {"a": [1]}}


def test_the_key_may_come_as_an_azure_api_key_header(gateway: RunningGateway) -> None:
    azure = httpx.post(
        gateway.base_url + "/chat/completions", json=_chat("hi"), headers={"api-key": gateway.key}
    )
    assert azure.status_code == 200
    wrong = httpx.post(
        gateway.base_url + "/chat/completions", json=_chat("hi"), headers={"api-key": "pgk-no"}
    )
    assert wrong.status_code == 401 and "Incorrect API key" in wrong.json()["error"]["message"]
    missing = httpx.post(gateway.base_url + "/chat/completions", json=_chat("hi"))
    assert "'api-key: <key>'" in missing.json()["error"]["message"]
    models = httpx.get(gateway.base_url + "/models", headers={"api-key": gateway.key})
    assert models.status_code == 200


# --- 3. upstream headers ------------------------------------------------------------------------


def _forwarded(response: httpx.Response) -> None:
    assert {name for name in response.headers if name in FORWARDED} == FORWARDED
    assert response.headers["x-request-id"] == "req_fake_1" and response.headers["retry-after-ms"] == "20"
    for never in ("set-cookie", "x-upstream-internal", "keep-alive", "content-encoding"):
        assert never not in response.headers, never


def test_upstream_headers_reach_the_caller_on_answers_streams_and_errors(gateway: RunningGateway) -> None:
    whole = _post(gateway, "/chat/completions", _chat("hi"))  # gzip upstream: the caller gets it plain
    assert whole.status_code == 200 and whole.json()["model"] == MODEL
    assert int(whole.headers["content-length"]) == len(whole.content)
    _forwarded(whole)
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json=_chat("hi", stream=True),
        headers=_headers(gateway),
    ) as streamed:
        streamed.read()
    _forwarded(streamed)
    limited = _post(gateway, "/chat/completions", _chat("slow down !429"))
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    _forwarded(limited)
    with pytest.raises(openai.RateLimitError) as raised:  # the SDK reads them: it would retry after 7 s
        openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0).chat.completions.create(
            **_chat("again !429")
        )
    assert raised.value.response.headers["retry-after"] == "7"
    streamed_limit = _post(gateway, "/chat/completions", _chat("stream !429", stream=True))
    assert streamed_limit.status_code == 429 and streamed_limit.headers["retry-after"] == "7"


# --- 4. usage of streamed calls --------------------------------------------------------------------


def test_streams_are_logged_with_usage_the_caller_sees_only_if_it_asked(
    gateway: RunningGateway, teacher: tuple[ServerThread, FakeOpenAI]
) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    chunks = list(client.chat.completions.create(**_chat("count my tokens"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fake: count my tokens"
    asked = json.loads(_sent_to_teacher(teacher[1], "/chat/completions"))
    assert asked["stream_options"] == {"include_usage": True}  # the gateway asked for it
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        json=_chat("raw bytes", stream=True),
        headers=_headers(gateway),
    ) as response:
        raw = response.read()
    assert b"usage" not in raw and raw.endswith(b"data: [DONE]\n\n")  # as the caller asked: no usage
    events = _sse(raw)
    assert all(event["choices"] for event in events if isinstance(event, dict))
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    words = {r.response.content: r.usage for r in records if r.response is not None}
    assert {content: usage and usage.completion_tokens for content, usage in words.items()} == {
        "fake: count my tokens": 4,
        "fake: raw bytes": 3,
    }
    assert all(
        r.request.model_extra == {} and "stream_options" not in r.request.model_dump() for r in records
    )

    # A caller that asked for the usage gets the teacher's bytes, usage chunk and all.
    body = json.dumps(_chat("usage please", stream=True, stream_options={"include_usage": True})).encode()
    with httpx.stream("POST", teacher[0].url + "/v1/chat/completions", content=body) as response:
        direct = response.read()
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", content=body, headers=_headers(gateway)
    ) as response:
        through = response.read()
    assert through == direct and b'"usage":{"prompt_tokens"' in through
    assert _sent_to_teacher(teacher[1], "/chat/completions") == body


def test_a_teacher_that_refuses_stream_options_is_asked_as_the_caller_asked(
    gateway: RunningGateway, teacher: tuple[ServerThread, FakeOpenAI]
) -> None:
    teacher[1].refuse_stream_options = True
    for text in ("first", "second"):
        response = _post(gateway, "/chat/completions", _chat(text, stream=True))
        assert response.status_code == 200 and _sse(response.content)[-1] == "[DONE]"
    sent = [json.loads(raw) for path, raw in teacher[1].requests[-3:] if path == "/chat/completions"]
    assert ["stream_options" in s for s in sent] == [True, False, False]  # learned once
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert all(r.status is CallStatus.OK and r.usage is None for r in records)


# --- 5. completions and embeddings -----------------------------------------------------------------


def test_completions_pass_through_and_are_logged_with_the_prompt(
    gateway: RunningGateway, teacher: tuple[ServerThread, FakeOpenAI]
) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5, logprobs=2)
    assert completion.choices[0].text == "fake: Once upon"
    streamed = list(client.completions.create(model=MODEL, prompt="a time", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "fake: a time"
    assert json.loads(_sent_to_teacher(teacher[1], "/completions"))["stream_options"] == {
        "include_usage": True
    }
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert {r.endpoint for r in records} == {Endpoint.COMPLETIONS}
    by_prompt = {r.request.messages[0].content: r for r in records}
    whole, stream = by_prompt["Once upon"], by_prompt["a time"]
    assert whole.request.messages[0].role == "user" and whole.request.max_tokens == 5
    assert whole.request.logprobs is True and whole.request.top_logprobs == 2
    assert whole.response is not None and whole.response.content == "fake: Once upon"
    assert stream.response is not None and stream.response.content == "fake: a time"
    assert stream.usage is not None and stream.usage.completion_tokens == 3
    assert b'"endpoint":"completions"' in whole.to_json()
    bad = _post(gateway, "/completions", {"model": MODEL})
    assert bad.status_code == 400 and "'prompt'" in bad.json()["error"]["message"]
    unknown = _post(gateway, "/completions", {"model": "gpt-9", "prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_embeddings_pass_through_are_counted_and_not_logged(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    embedded = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert embedded.data[0].embedding == [0.25, -0.5] and embedded.usage.prompt_tokens == 3
    raw = _post(gateway, "/embeddings", {"model": MODEL, "input": ["a"]})
    _forwarded(raw)
    assert _post(gateway, "/embeddings", {"model": "gpt-9", "input": "x"}).status_code == 404
    assert (
        httpx.post(gateway.base_url + "/embeddings", json={"model": MODEL, "input": "x"}).status_code == 401
    )
    _post(gateway, "/chat/completions", _chat("a chat call"))  # the one record
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.endpoint is Endpoint.CHAT_COMPLETIONS
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    labels = f'app="agent",code="200",endpoint="embeddings",status="ok",tenant="{gateway.tenant}"'
    assert f"protege_gateway_requests_total{{{labels}}} 2.0" in metrics
    assert (
        f'protege_gateway_tokens_total{{app="agent",kind="prompt",tenant="{gateway.tenant}"}} 10.0' in metrics
    )


# --- 6. the Responses API, answered by the teacher ------------------------------------------------

AGENT_TURN = {
    "model": MODEL,
    "instructions": "You are a weather agent.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [WEATHER],
    "store": False,
    "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
    "include": ["reasoning.encrypted_content"],
}


def test_responses_go_to_the_teacher_untouched_and_are_logged_in_chat_shape(
    gateway: RunningGateway, teacher: tuple[ServerThread, FakeOpenAI]
) -> None:
    body = json.dumps(AGENT_TURN).encode()
    direct = httpx.post(teacher[0].url + "/v1/responses", content=body)
    through = httpx.post(gateway.base_url + "/responses", content=body, headers=_headers(gateway))
    assert through.status_code == 200 and through.content == direct.content
    assert _sent_to_teacher(teacher[1], "/responses") == body
    _forwarded(through)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    with client.responses.stream(model=MODEL, input="hi there", store=False) as stream:
        final = stream.get_final_response()
    assert final.output_text == "fake: hi there"
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert {r.endpoint for r in records} == {Endpoint.RESPONSES}
    tool_turn = next(r for r in records if not r.request.stream)
    messages = [m.model_dump(exclude_none=True) for m in tool_turn.request.messages]
    assert messages[0] == {"role": "system", "content": "You are a weather agent."}
    assert messages[2]["tool_calls"][0]["id"] == "call_1" and messages[3]["tool_call_id"] == "call_1"
    assert tool_turn.request.tools == [
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    ]
    assert tool_turn.request.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert tool_turn.request.model_extra is not None and tool_turn.request.model_extra["store"] is False
    assert tool_turn.response is not None and tool_turn.response.finish_reason == "tool_calls"
    [call] = tool_turn.response.tool_calls
    assert call.id == "call_fake" and call.function.arguments == '{"city": "Paris"}'
    assert tool_turn.usage is not None and tool_turn.usage.prompt_tokens == 5
    streamed = next(r for r in records if r.request.stream)
    assert streamed.response is not None and streamed.response.content == "fake: hi there"
    assert (
        streamed.usage is not None
        and streamed.usage.total_tokens == 8
        and streamed.latency.ttft_ms is not None
    )
    bad = _post(gateway, "/responses", {"model": MODEL, "input": [{"type": "function_call", "name": "f"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input[0].call_id"
    assert "expected a string" in bad.json()["error"]["message"]


# --- 6/7. specialists --------------------------------------------------------------------------------


def _write_table(gateway: RunningGateway, path: Path, routes: list[SpecialistRoute]) -> None:
    router = gateway.server.server.config.app.state.gateway.router
    table = RoutingTable(routes=routes)
    path.write_text(table.model_dump_json())
    deadline = time.monotonic() + 10
    while router.table != table:
        assert time.monotonic() < deadline, "the gateway never read the routing table"
        time.sleep(0.02)


@pytest.fixture
def routed(
    start_gateway: Callable[..., RunningGateway],
    teacher: tuple[ServerThread, FakeOpenAI],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    tmp_path: Path,
) -> Callable[..., RunningGateway]:
    """A routing gateway; ``routed(**fallback)`` routes its tenant's intent task to ``intent-spec@v1``.

    ``router`` adds router settings.
    """

    def start(router: dict[str, Any] | None = None, **fallback: Any) -> RunningGateway:
        table = tmp_path / "routes.json"
        gateway = start_gateway(
            teacher_url=teacher[0].url + "/v1",
            teacher={"model": MODEL},
            artifact_store=file_artifact_store.url,
            router={
                "enabled": True,
                "engine_url": engine[0].url,
                "table": str(table),
                "refresh_seconds": 0.05,
                **(router or {}),
            },
        )
        route = SpecialistRoute(
            specialist="intent-spec",
            tenant=gateway.tenant,
            task_id="t-intent",
            active="v1",
            fallback=FallbackSpec(**fallback),
        )
        _write_table(gateway, table, [route])
        return gateway

    return start


def test_a_specialist_answers_the_responses_api_whole_and_streamed(
    routed: Callable[..., RunningGateway], engine: tuple[ServerThread, FakeEngine]
) -> None:
    gateway = routed()
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    request = {
        "model": "intent-spec",
        "instructions": "Label it.",
        "input": "where is my parcel",
        "store": False,
    }
    answer = client.responses.create(**request)  # type: ignore[call-overload]
    SdkResponse.model_validate(answer.model_dump())
    assert answer.output_text == "The answer is forty two" and answer.status == "completed"
    assert answer.model == "intent-spec@v1" and answer.usage is not None and answer.usage.output_tokens == 5
    sent, adapter = engine[1].requests[-1]
    assert adapter == "intent-spec@v1" and sent["messages"][0] == {"role": "system", "content": "Label it."}
    assert "store" not in sent  # a specialist gets what it can honour

    engine[1].tool_call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    with client.responses.stream(**{**request, "tools": [WEATHER]}) as stream:  # type: ignore[arg-type]
        events = [EVENTS.validate_python(event.model_dump()) for event in stream]
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds and "response.output_item.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    [call] = final.output
    assert call.type == "function_call" and call.call_id == "call_e1" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}

    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert all(r.endpoint is Endpoint.RESPONSES and r.route.reason is RouteReason.PINNED for r in records)
    assert all(r.upstream is not None and r.upstream.kind is UpstreamKind.SPECIALIST for r in records)
    whole = next(r for r in records if not r.request.stream)
    assert whole.response is not None and whole.response.content == "The answer is forty two"
    tools = next(r for r in records if r.request.stream)
    assert tools.response is not None and tools.response.tool_calls[0].function.name == "get_weather"
    assert tools.usage is not None and tools.usage.total_tokens == 9


def test_previous_response_id_goes_to_the_teacher(
    routed: Callable[..., RunningGateway], engine: tuple[ServerThread, FakeEngine]
) -> None:
    gateway = routed()
    body = {"model": MODEL, "input": "and then?", "previous_response_id": "resp_earlier"}
    response = _post(gateway, "/responses", body)
    assert response.status_code == 200 and response.json()["id"] == "resp_fake"
    pinned = _post(gateway, "/responses", {**body, "model": "intent-spec"})
    assert pinned.status_code == 400 and "previous_response_id" in pinned.json()["error"]["message"]
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.route.reason is RouteReason.TEACHER_ONLY and record.upstream is not None
    assert record.upstream.kind is UpstreamKind.TEACHER and not engine[1].requests
    assert record.request.model_extra == {"previous_response_id": "resp_earlier"}


def test_a_specialists_response_is_kept_for_the_call_that_continues_it(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    teacher: tuple[ServerThread, FakeOpenAI],
) -> None:
    """Only the gateway knows the id of a response a specialist answered: it puts that conversation back."""
    gateway = routed()
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    first = client.responses.create(model="intent-spec", instructions="Label it.", input="where is my parcel")
    assert first.id.startswith("resp_protege_")
    again = client.responses.create(
        model="intent-spec", input="and the other one?", previous_response_id=first.id
    )
    assert again.output_text == "The answer is forty two"
    sent, _ = engine[1].requests[-1]
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [  # earlier instructions are not carried
        ("user", "where is my parcel"),
        ("assistant", "The answer is forty two"),
        ("user", "and the other one?"),
    ]
    to_teacher = client.responses.create(model=MODEL, input="thanks", previous_response_id=again.id)
    asked = json.loads(_sent_to_teacher(teacher[1], "/responses"))
    assert to_teacher.id == "resp_fake" and "previous_response_id" not in asked
    assert [item.get("role") for item in asked["input"]] == ["user", "assistant", "user", "assistant", "user"]

    unkept = client.responses.create(model="intent-spec", input="where is my parcel", store=False)
    refused = _post(
        gateway, "/responses", {"model": MODEL, "input": "and?", "previous_response_id": unkept.id}
    )
    assert refused.status_code == 400 and "no longer keeps it" in refused.json()["error"]["message"]
    records = records_of(gateway.settings.nats_url, gateway.tenant, 4)
    continued = [r for r in records if len(r.request.messages) == 3]
    assert (
        continued and continued[0].route.target is UpstreamKind.SPECIALIST
    )  # logged as the whole conversation


def _intent_call(seed: int) -> dict[str, Any]:
    request = generate(1, seed=seed, families=("intent",))[0].to_record().request
    return {**request.model_dump(exclude_none=True), "model": MODEL}


def _seed_intent_task(gateway: RunningGateway, store: ArtifactStore) -> None:
    seed_task(store, "intent", 20, task_id="t-intent", tenant=gateway.tenant)
    router = gateway.server.server.config.app.state.gateway.router
    deadline = time.monotonic() + 20
    while (task := router.tasks.get("t-intent")) is None or task.router.fingerprint.tenant != gateway.tenant:
        assert time.monotonic() < deadline, "the gateway never read the task registry"
        time.sleep(0.05)


def _arrivals(gateway: RunningGateway, body: dict[str, Any]) -> tuple[list[float], list[Any]]:
    arrivals, events = [], []
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers=_headers(gateway), timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return arrivals, events


def test_a_specialist_streams_its_tokens_as_they_come_unless_its_answer_is_checked(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
) -> None:
    gateway = routed()
    _seed_intent_task(gateway, file_artifact_store)
    engine[1].delay = 0.3
    arrivals, events = _arrivals(gateway, {**_intent_call(11), "stream": True})
    contents = [
        e["choices"][0]["delta"].get("content") for e in events if isinstance(e, dict) and e["choices"]
    ]
    assert "".join(c or "" for c in contents) == "The answer is forty two"
    assert arrivals[-1] - arrivals[0] >= 1.0  # five tokens 0.3 s apart, passed on as they came
    assert {e["model"] for e in events if isinstance(e, dict)} == {MODEL}  # the model the caller asked for
    assert all("usage" not in e for e in events if isinstance(e, dict)) and events[-1] == "[DONE]"
    sent, adapter = engine[1].requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert adapter == "intent-spec@v1"
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.route.reason is RouteReason.SPECIALIST and record.upstream is not None
    assert record.upstream.model == "intent-spec@v1" and record.route.task_id == "t-intent"
    assert record.response is not None and record.response.content == "The answer is forty two"
    assert record.usage is not None and record.usage.total_tokens == 9

    # A route whose answers are checked: the whole answer first, then all of it at once.
    checked = routed(validate_output=OutputValidation.SQL)
    _seed_intent_task(checked, file_artifact_store)
    engine[1].tokens = ["SELECT", " 1"]
    arrivals, events = _arrivals(checked, {**_intent_call(12), "stream": True})
    assert arrivals[-1] - arrivals[0] < 0.2 and not engine[1].requests[-1][0].get("stream")
    [record] = records_of(checked.settings.nats_url, checked.tenant, 1)
    assert record.route.reason is RouteReason.SPECIALIST


def test_a_calibrated_check_sends_an_answer_with_one_doubtful_token_to_the_teacher(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    tmp_path: Path,
) -> None:
    """The version's check, calibrated at training (lowest token probability below 0.5), decides;
    the mean (0.82 here) would not have noticed. minConfidence, when set, replaces it; off, no check."""
    gateway = routed()
    _seed_intent_task(gateway, file_artifact_store)
    check = ConfidenceCheck(
        signal=ConfidenceSignal.MINIMUM,
        threshold=0.5,
        precision=0.8,
        recall=0.75,
        fallback_rate=0.1,
        examples=40,
        disagreements=8,
    )

    def route(**fallback: Any) -> None:
        checked = SpecialistRoute(
            specialist="intent-spec",
            tenant=gateway.tenant,
            task_id="t-intent",
            active="v1",
            fallback=FallbackSpec(**fallback),
            confidence_checks={"v1": check},
        )
        _write_table(gateway, tmp_path / "routes.json", [checked])

    def answered(seed: int, probabilities: list[float], **body: Any) -> CallRecord:
        engine[1].token_probabilities = probabilities
        response = _post(gateway, "/chat/completions", {**_intent_call(seed), **body})
        assert response.status_code == 200
        record = records_of(gateway.settings.nats_url, gateway.tenant, seed - 29)[-1]
        assert isinstance(record, CallRecord)
        return record

    sure, doubtful = [0.97] * 5, [0.97, 0.97, 0.2, 0.97, 0.97]
    route()
    record = answered(30, sure)
    assert record.route.reason is RouteReason.SPECIALIST and record.route.confidence == 0.97
    assert engine[1].requests[-1][0]["logprobs"] is True  # asked of the engine, not shown to the caller
    assert record.response is not None and record.response.choices[0].logprobs is None
    record = answered(31, doubtful, stream=True)  # a checked answer is not streamed token by token
    assert record.route.reason is RouteReason.FALLBACK_LOW_CONFIDENCE and record.alternate is not None
    assert record.alternate.rejection == (
        "minimum token probability 0.200 < 0.5 (calibrated on 40 held-out answers, 8 wrong)"
    )
    route(min_confidence=0.8)  # a fixed bar on the mean replaces the calibrated check
    record = answered(32, doubtful)
    assert record.route.reason is RouteReason.SPECIALIST and record.route.confidence == pytest.approx(0.816)
    route(calibrated_confidence=False)
    record = answered(33, doubtful)
    assert record.route.reason is RouteReason.SPECIALIST and record.route.confidence is None
    assert "logprobs" not in engine[1].requests[-1][0]


@pytest.mark.parametrize("mode", ["fail", "error-event"])
def test_a_specialist_failing_before_its_first_token_leaves_the_call_to_the_teacher(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    mode: str,
) -> None:
    gateway = routed()
    _seed_intent_task(gateway, file_artifact_store)
    engine[1].mode = mode
    call = _intent_call(13)
    _, events = _arrivals(gateway, {**call, "stream": True})
    assert engine[1].requests[-1][0]["stream"] is True  # its tokens were asked for
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e["choices"]
    )
    assert text.startswith("fake: ")  # the teacher's answer
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.status is CallStatus.OK and record.upstream is not None
    assert record.upstream.kind is UpstreamKind.TEACHER
    assert record.route.reason is RouteReason.FALLBACK_SPECIALIST_ERROR
    assert record.alternate is not None and record.alternate.error is not None


def test_an_engine_answering_200_with_garbage_leaves_the_call_to_the_teacher(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
) -> None:
    """Not JSON, not a chat completion, not an event stream: never a 5xx, the teacher answers."""
    gateway = routed(router={"breaker_failures": 100})  # every call asks the engine first
    _seed_intent_task(gateway, file_artifact_store)
    for number, mode in enumerate(sorted(FakeEngine.GARBAGE)):
        engine[1].mode = mode
        asked = len(engine[1].requests)
        whole = _post(gateway, "/chat/completions", _intent_call(40 + 2 * number))
        assert whole.status_code == 200 and "x-protege-upstream" not in whole.headers, mode
        assert whole.json()["choices"][0]["message"]["content"].startswith("fake: "), mode  # the teacher's
        _, events = _arrivals(gateway, {**_intent_call(41 + 2 * number), "stream": True})
        text = "".join(
            e["choices"][0]["delta"].get("content") or ""
            for e in events
            if isinstance(e, dict) and e["choices"]
        )
        assert text.startswith("fake: "), mode
        assert len(engine[1].requests) == asked + 2, mode  # both were asked of the engine first


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_specialist_breaking_off_mid_stream_ends_it_with_an_error_logged_once(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    api: str,
) -> None:
    gateway = routed()
    engine[1].mode = "break"
    if api == "chat":
        response = _post(gateway, "/chat/completions", _chat("tell me", stream=True, model="intent-spec"))
        events = _sse(response.content)
        assert events[-1]["error"]["code"] == "upstream_stream_error"
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "The answer"
    else:
        response = _post(gateway, "/responses", {"model": "intent-spec", "input": "tell me", "stream": True})
        events = [EVENTS.validate_python(e) for e in _sse(response.content)]
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert events[-1].response.status == "failed"
    assert response.status_code == 200
    records = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert len(records) == 1
    [record] = records
    assert isinstance(record, CallRecord) and record.status is CallStatus.UPSTREAM_ERROR
    assert record.error is not None and "specialist" in record.error.message
    assert record.response is not None and record.response.content == "The answer"


def test_a_responses_call_is_routed_by_its_task(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
) -> None:
    gateway = routed()
    _seed_intent_task(gateway, file_artifact_store)
    call = _intent_call(14)
    system, user = call["messages"][0]["content"], call["messages"][1]["content"]
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    answer = client.responses.create(model=MODEL, instructions=system, input=user, store=False)
    assert answer.output_text == "The answer is forty two" and answer.model == MODEL
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.endpoint is Endpoint.RESPONSES and record.route.task_id == "t-intent"
    assert record.route.reason is RouteReason.SPECIALIST


def test_teacher_samples_score_the_specialist_and_a_shadow_against_the_teacher(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    tmp_path: Path,
) -> None:
    """Live quality is agreement with the teacher: the serving version's answers by teacher samples,
    and a version-2 shadow against the teacher's answer, not against the version that serves."""
    gateway = routed()
    _seed_intent_task(gateway, file_artifact_store)
    route = SpecialistRoute(
        specialist="intent-spec",
        tenant=gateway.tenant,
        task_id="t-intent",
        active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.SHADOW),
        metric=EvaluationMetric.EXACT_MATCH,
        teacher_sample_rate=1.0,
    )
    _write_table(gateway, tmp_path / "routes.json", [route])
    for seed in range(3):
        answered = _post(gateway, "/chat/completions", _intent_call(20 + seed))
        assert answered.status_code == 200 and answered.headers["x-protege-upstream"] == "intent-spec@v1"
        assert answered.json()["choices"][0]["message"]["content"] == "The answer is forty two"
    records = records_of(gateway.settings.nats_url, gateway.tenant, 3)
    assert len(records) == 3
    for record in records:
        assert isinstance(record, CallRecord) and record.route.target is UpstreamKind.SPECIALIST
        sample = record.teacher_sample
        assert sample is not None and sample.upstream.kind is UpstreamKind.TEACHER
        assert sample.response is not None and str(sample.response.content).startswith("fake: ")
        assert sample.agreement == 0.0  # the specialist's answer is not the teacher's
        shadow = record.alternate
        assert shadow is not None and shadow.upstream.version == "v2"
        assert shadow.agreement == 0.0  # against the serving v1's identical answer it would be 1.0
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    assert 'protege_router_teacher_samples_total{outcome="taken",specialist="intent-spec"} 3.0' in metrics


def test_teacher_samples_stay_within_their_budget(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    tmp_path: Path,
) -> None:
    gateway = routed(router={"teacher_samples_per_minute": 2})
    _seed_intent_task(gateway, file_artifact_store)
    every = {"active": "v1", "teacher_sample_rate": 1}
    route = SpecialistRoute(specialist="intent-spec", tenant=gateway.tenant, task_id="t-intent", **every)
    _write_table(gateway, tmp_path / "routes.json", [route])
    for seed in range(4):
        assert _post(gateway, "/chat/completions", _intent_call(30 + seed)).status_code == 200
    logged = records_of(gateway.settings.nats_url, gateway.tenant, 4)
    assert sum(isinstance(r, CallRecord) and r.teacher_sample is not None for r in logged) == 2
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    assert 'protege_router_teacher_samples_total{outcome="budget",specialist="intent-spec"} 2.0' in metrics


def _breaker_metrics(gateway: RunningGateway) -> dict[str, float]:
    """The breaker lines of the gateway's /metrics, by their name and labels."""
    found = {}
    for line in httpx.get(gateway.metrics_url + "/metrics").text.splitlines():
        if line.startswith(("protege_router_breaker_", "protege_router_deadline_seconds")):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_a_hung_engine_costs_calls_its_deadline_then_nothing_until_a_probe_finds_it_back(
    routed: Callable[..., RunningGateway],
    engine: tuple[ServerThread, FakeEngine],
    file_artifact_store: ArtifactStore,
    tmp_path: Path,
    stream: bool,
) -> None:
    """A pool that stops answering: each version's calls wait its adaptive deadline (not
    router.timeout_seconds) until its breaker opens; then they go to the teacher without the engine
    being asked, shadows and teacher samples included; after the cool-down a probe finds it back."""
    gateway = routed(
        router={
            "timeout_seconds": 5,
            "deadline_min_observations": 3,
            "deadline_window": 10,
            "deadline_floor_seconds": 1,
            "breaker_failures": 2,
            "breaker_cooldown_seconds": 1.5,
        }
    )
    _seed_intent_task(gateway, file_artifact_store)
    route = SpecialistRoute(
        specialist="intent-spec",
        tenant=gateway.tenant,
        task_id="t-intent",
        active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.SHADOW),
        teacher_sample_rate=1.0,
    )
    _write_table(gateway, tmp_path / "routes.json", [route])
    texts: dict[str, str] = {}

    def call(seed: int, phase: str) -> None:
        body = {**_intent_call(seed), "stream": stream}
        texts[body["messages"][-1]["content"]] = phase
        assert _post(gateway, "/chat/completions", body).status_code == 200

    for seed in range(3):  # healthy: three answers of each version make their deadlines adapt
        call(40 + seed, "healthy")
    key = 'specialist="intent-spec",version="v1"'
    wait = "first_bytes" if stream else "whole"
    adapted = f'protege_router_deadline_seconds{{{key},wait="{wait}"}}'
    assert _breaker_metrics(gateway)[adapted] == 1.0  # the floor: the fake engine is fast

    engine[1].mode = "hang"
    asked = len(engine[1].requests)
    for seed in range(2):
        started = time.monotonic()
        call(50 + seed, "hung")
        assert time.monotonic() - started < 4  # its deadline (1 s), not router.timeout_seconds (5 s)
    assert len(engine[1].requests) == asked + 4  # v1 and its v2 shadow, twice
    opened = time.monotonic()
    while (
        _breaker_metrics(gateway).get('protege_router_breaker_state{specialist="intent-spec",version="v2"}')
        != 2
    ):
        assert time.monotonic() - opened < 5, "the shadow version's breaker never opened"
        time.sleep(0.02)  # the second shadow's failure is in a moment after its call returned
    assert _breaker_metrics(gateway)[f"protege_router_breaker_state{{{key}}}"] == 2

    asked = len(engine[1].requests)
    for seed in range(3):
        call(60 + seed, "open")
    assert len(engine[1].requests) == asked  # the engine was not asked: neither version, no shadow

    time.sleep(1.6)  # the cool-down
    engine[1].mode = "ok"
    call(70, "probe")  # v1's probe, and v2's shadow as its own probe
    probed = time.monotonic()
    v2_state = 'protege_router_breaker_state{specialist="intent-spec",version="v2"}'
    while _breaker_metrics(gateway).get(v2_state):
        assert time.monotonic() - probed < 5, "the shadow version's probe never closed its breaker"
        time.sleep(0.02)  # the shadow probe answers off the request path; until then v2 takes no other call
    call(71, "closed")
    closed = time.monotonic()
    while len(engine[1].requests) < asked + 4:  # v1 and v2 twice each; the last shadow may be on its way
        assert time.monotonic() - closed < 5, f"{len(engine[1].requests) - asked} engine calls, not 4"
        time.sleep(0.02)
    assert len(engine[1].requests) == asked + 4

    _check_breaker_records(gateway, texts)


def _check_breaker_records(gateway: RunningGateway, texts: dict[str, str]) -> None:
    """The records and metrics of the hung-engine test: each phase's calls routed as they should."""
    records = records_of(gateway.settings.nats_url, gateway.tenant, len(texts))
    assert len(records) == len(texts) == 10
    phases: dict[str, list[CallRecord]] = {}
    for record in records:
        assert isinstance(record, CallRecord) and record.status is CallStatus.OK
        phases.setdefault(texts[str(record.request.messages[-1].content)], []).append(record)
    for record in phases["healthy"] + phases["probe"] + phases["closed"]:
        assert record.route.reason is RouteReason.SPECIALIST and record.route.version == "v1"
        assert record.alternate is not None and record.alternate.error is None  # the v2 shadow answered
        assert record.teacher_sample is not None
    for record in phases["hung"]:
        assert record.route.reason is RouteReason.FALLBACK_SPECIALIST_ERROR
        assert record.alternate is not None and record.alternate.error is not None
        assert "its adaptive deadline" in record.alternate.error.message
    for record in phases["open"]:
        assert record.route.reason is RouteReason.BREAKER_OPEN and record.route.target is UpstreamKind.TEACHER
        assert record.route.specialist == "intent-spec" and record.route.version == "v1"
        assert record.alternate is None and record.teacher_sample is None  # no shadow, no sample
        assert record.upstream is not None and record.upstream.kind is UpstreamKind.TEACHER

    metrics = _breaker_metrics(gateway)
    for version in ("v1", "v2"):
        labels = f'specialist="intent-spec",state="{{}}",version="{version}"'
        for state in ("open", "half_open", "closed"):
            assert metrics[f"protege_router_breaker_transitions_total{{{labels.format(state)}}}"] == 1
        assert metrics[f'protege_router_breaker_state{{specialist="intent-spec",version="{version}"}}'] == 0


def test_the_teacher_answers_while_the_store_is_down_and_routes_appear_once_it_is_back(
    start_gateway: Callable[..., RunningGateway],
    teacher: tuple[ServerThread, FakeOpenAI],
    engine: tuple[ServerThread, FakeEngine],
    seaweed_s3: SeaweedS3,
    tmp_path: Path,
) -> None:
    """The gateway's S3 endpoint refuses connections when it starts; later the store comes up there."""
    s3_artifact_store = ArtifactStore(f"s3://protege-test/{uuid.uuid4().hex}", seaweed_s3.storage_options())
    store = TcpRelay(seaweed_s3.endpoint_url)  # its port is picked; nothing listens there yet
    key, secret = seaweed_s3.credentials
    table = tmp_path / "routes.json"
    refresh = 0.2
    asked = time.monotonic()
    gateway = start_gateway(
        teacher_url=teacher[0].url + "/v1",
        teacher={"model": MODEL},
        artifact_store=s3_artifact_store.url,
        s3={"endpoint_url": store.url, "access_key_id": key, "secret_access_key": secret},
        router={
            "enabled": True,
            "engine_url": engine[0].url,
            "table": str(table),
            "refresh_seconds": refresh,
        },
    )
    try:
        assert time.monotonic() - asked < 5  # router.startup_wait_seconds (5) at most, and far less here
        router = gateway.server.server.config.app.state.gateway.router
        route = SpecialistRoute(
            specialist="intent-spec", tenant=gateway.tenant, task_id="t-intent", active="v1"
        )
        _write_table(gateway, table, [route])  # the table is read while the store is away
        seed_task(s3_artifact_store, "intent", 20, task_id="t-intent", tenant=gateway.tenant)
        while router.store_error is None:  # the store holds the task, but the gateway cannot reach it
            assert time.monotonic() - asked < 10, "the router never tried the store"
            time.sleep(0.02)
        assert "Could not connect" in router.store_error and not router.tasks

        down = _post(gateway, "/chat/completions", _intent_call(21))
        assert down.status_code == 200 and down.json()["id"] == "cmpl-fake"  # the teacher's answer

        store.up()
        back = time.monotonic()
        while "t-intent" not in router.tasks:
            assert time.monotonic() - back < 10, "the gateway never read the task registry"
            time.sleep(0.02)
        appeared = time.monotonic() - back
        up = _post(gateway, "/chat/completions", _intent_call(22))
        assert (
            up.status_code == 200
            and up.json()["choices"][0]["message"]["content"] == "The answer is forty two"
        )
        assert router.store_error is None
    finally:
        store.down()
    assert appeared < refresh + 2, f"the tasks appeared {appeared:.2f} s after the store came back"
    records = {
        r.request.messages[-1].content: r for r in records_of(gateway.settings.nats_url, gateway.tenant, 2)
    }
    teacher_record, routed = (records[_intent_call(seed)["messages"][-1]["content"]] for seed in (21, 22))
    assert teacher_record.route.reason is RouteReason.NO_TASK_MATCH  # no task known yet: logged as such
    assert teacher_record.upstream is not None and teacher_record.upstream.kind is UpstreamKind.TEACHER
    assert routed.route.reason is RouteReason.SPECIALIST and routed.route.task_id == "t-intent"
    assert routed.upstream is not None and routed.upstream.kind is UpstreamKind.SPECIALIST
