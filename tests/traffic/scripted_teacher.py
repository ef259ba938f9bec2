"""A scripted teacher: an OpenAI-compatible server that plays the big model like a program.

Not a model and not a recording: it reads each request and answers by fixed rules, the same
for every caller (it never looks at who is asking, the model name or sampling options):

- the last turn is a user turn and tools are offered (``tool_choice`` not ``"none"``): a call
  of the tool that fits the user text. A tool fits when every required parameter can be
  filled from the text (an order id such as ``A-1234`` for a parameter about orders, a SKU
  such as ``KB-77`` for one about products or SKUs, a schema ``pattern``, a number, or the
  whole text for a ``query``-like parameter); among fitting tools the one whose name,
  parameters and description share the topic of the text (orders and deliveries, stock and
  availability) wins, then the one offered first;
- the last turns are tool results: a final text answer written from them (``Order A-1234
  has shipped.`` from ``{"order_id": "A-1234", "status": "shipped"}``);
- otherwise (no tools, or none fits): a fixed text answer.

It speaks ``POST /v1/chat/completions`` and ``POST /v1/responses`` (the Responses API, the
OpenAI Agents SDK's default), each streamed (server-sent events) or not, with usage, and
``GET /v1/models``. Ids are derived from the request, so the same request always gets the
same bytes. ``previous_response_id`` is honoured for responses it gave.

Use it as a context manager (``with ScriptedTeacher() as teacher: teacher.base_url``) or
through the ``scripted_teacher`` pytest fixture.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from protege.serving.server import ServerThread

MODEL = "scripted-teacher"
CREATED = 1_767_225_600  # fixed: the same request always gets the same bytes


# --- the conversation, whichever API it came through ------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class Turn:
    role: str  # system, user, assistant or tool
    text: str = ""
    calls: tuple[Call, ...] = ()
    call_id: str | None = None  # for tool turns: the call this answers


@dataclass(frozen=True)
class Reply:
    text: str | None = None
    calls: tuple[Call, ...] = ()


def _text(content: Any) -> str:
    """Text of message content: a string, or content parts (``text``, ``input_text``, ...)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _forced(tool_choice: Any) -> str | None:
    """The tool ``tool_choice`` names, in the chat or the Responses shape."""
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        return str(function.get("name")) if isinstance(function, dict) else tool_choice.get("name")
    return None


def chat_conversation(body: dict[str, Any]) -> tuple[list[Turn], list[ToolSpec]]:
    turns = []
    for message in body.get("messages") or []:
        role = message.get("role", "user")
        calls = tuple(
            Call(str(c.get("id", "")), c["function"]["name"], c["function"].get("arguments") or "{}")
            for c in message.get("tool_calls") or []
            if isinstance(c, dict) and "function" in c
        )
        role = {"developer": "system", "function": "tool"}.get(role, role)
        turns.append(Turn(role, _text(message.get("content")), calls, message.get("tool_call_id")))
    tools = [
        ToolSpec(f["name"], f.get("description") or "", f.get("parameters") or {})
        for t in body.get("tools") or []
        if isinstance(f := t.get("function"), dict) and "name" in f
    ]
    return turns, tools


def responses_conversation(
    body: dict[str, Any], earlier: Sequence[Turn] = ()
) -> tuple[list[Turn], list[ToolSpec]]:
    turns = list(earlier)
    if instructions := body.get("instructions"):
        turns.insert(0, Turn("system", _text(instructions)))
    items = body.get("input")
    for item in [{"role": "user", "content": items}] if isinstance(items, str) else items or []:
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            role = {"developer": "system"}.get(item["role"], item["role"])
            turns.append(Turn(role, _text(item.get("content"))))
        elif kind == "function_call":
            turns.append(
                Turn("assistant", calls=(Call(item["call_id"], item["name"], item.get("arguments") or "{}"),))
            )
        elif kind == "function_call_output":
            turns.append(Turn("tool", _text(item.get("output")), call_id=item.get("call_id")))
    tools = [
        ToolSpec(t["name"], t.get("description") or "", t.get("parameters") or {})
        for t in body.get("tools") or []
        if t.get("type") == "function" and "name" in t
    ]
    return turns, tools


# --- playing the model ------------------------------------------------------------------------

ORDER_ID = re.compile(r"\b[A-Z]-\d{3,8}\b", re.IGNORECASE)
SKU = re.compile(r"\b[A-Z]{2,5}-\d{1,5}\b", re.IGNORECASE)
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")

# Topics: the words that raise one in a user's text, and the words a tool about it carries.
TOPICS = {
    "orders": (
        {"order", "orders", "package", "parcel", "shipment", "shipped", "ship", "shipping", "delivery",
         "delivered", "deliver", "arrive", "arrived", "track", "tracking", "placed"},
        {"order", "orders", "shipment", "tracking", "delivery"},
    ),
    "stock": (
        {"stock", "sku", "skus", "inventory", "available", "availability", "units", "restock", "left",
         "buy", "carry", "supply"},
        {"stock", "inventory", "sku", "availability", "available"},
    ),
}  # fmt: skip
_GENERIC_TEXT = {"query", "question", "text", "input", "message", "request", "prompt"}


def _words(text: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return set(re.findall(r"[a-z]+", spaced.lower()))


def _fill(name: str, schema: dict[str, Any], text: str) -> tuple[Any, bool] | None:
    """(value, specific) for one parameter from the user text, or None when the text lacks it."""
    words = _words(name) | _words(str(schema.get("description", "")))
    kind = schema.get("type")
    if pattern := schema.get("pattern"):
        found = re.search(pattern.strip("^$"), text)
        return (found.group(0), True) if found else None
    if enum := schema.get("enum"):
        chosen = next((v for v in enum if str(v).lower() in text.lower()), None)
        return (chosen, True) if chosen is not None else None
    if "order" in words and kind in (None, "string"):
        found = ORDER_ID.search(text)
        return (found.group(0).upper(), True) if found else None
    if words & {"sku", "product", "item"} and kind in (None, "string"):
        found = SKU.search(text)
        return (found.group(0).upper(), True) if found else None
    if kind in ("integer", "number"):
        found = NUMBER.search(text)
        if not found:
            return None
        return (int(float(found.group(0))) if kind == "integer" else float(found.group(0))), True
    if kind in (None, "string") and words & _GENERIC_TEXT:
        return text, False
    return None


def arguments_for(tool: ToolSpec, text: str) -> tuple[dict[str, Any], int] | None:
    """The tool's arguments filled from the text and how many came from a specific entity."""
    properties = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or [])
    arguments, specific = {}, 0
    for name, schema in properties.items():
        filled = _fill(name, schema if isinstance(schema, dict) else {}, text)
        if filled is None:
            if name in required:
                return None
            continue
        arguments[name], specific = filled[0], specific + filled[1]
    return arguments, specific


def topic_score(tool: ToolSpec, text: str) -> int:
    said = _words(text)
    carried = _words(tool.name) | _words(tool.description)
    for name in tool.parameters.get("properties") or {}:
        carried |= _words(name)
    return sum(bool(said & raised and carried & marks) for raised, marks in TOPICS.values())


def choose_call(text: str, tools: Sequence[ToolSpec], tool_choice: Any, seed: str) -> Call | None:
    forced = _forced(tool_choice)
    best: tuple[int, int, ToolSpec, dict[str, Any]] | None = None
    for position, tool in enumerate(tools):
        if forced is not None and tool.name != forced:
            continue
        filled = arguments_for(tool, text)
        if filled is None:
            continue
        arguments, specific = filled
        score = topic_score(tool, text) + 2 * specific
        if best is None or (score, -position) > (best[0], best[1]):
            best = (score, -position, tool, arguments)
    if best is None:
        return None
    score, _, tool, arguments = best
    if score == 0 and forced is None and tool_choice != "required":
        return None
    digest = hashlib.sha256(f"{seed}|{tool.name}".encode()).hexdigest()[:24]
    return Call(f"call_{digest}", tool.name, json.dumps(arguments))


_STATUS = {
    "shipped": "has shipped",
    "delivered": "was delivered",
    "processing": "is processing",
    "cancelled": "was cancelled",
    "returned": "was returned",
}


def describe_result(tool: str | None, output: str) -> str:
    """One or two sentences a support model would write from a tool's result."""
    try:
        data = json.loads(output)
    except ValueError:
        return f"{tool or 'The tool'} says: {output.strip()}"
    if not isinstance(data, dict):
        return f"{tool or 'The tool'} returned {json.dumps(data)}."
    if "error" in data:
        return f"Sorry, I could not find that: {data['error']}."
    if "order_id" in data and "status" in data:
        status = str(data["status"])
        sentence = f"Order {data['order_id']} {_STATUS.get(status, 'is ' + status)}."
        if data.get("carrier"):
            sentence += f" Carrier: {data['carrier']}."
        if data.get("eta"):
            sentence += f" Expected delivery: {data['eta']}."
        return sentence
    if "sku" in data and ("in_stock" in data or "quantity" in data):
        quantity = data.get("quantity")
        if data.get("in_stock", bool(quantity)):
            units = f": {quantity} units available" if quantity is not None else ""
            return f"SKU {data['sku']} is in stock{units}."
        sentence = f"SKU {data['sku']} is out of stock."
        if data.get("restock_date"):
            sentence += f" Restock expected on {data['restock_date']}."
        return sentence
    facts = ", ".join(f"{key}: {value}" for key, value in data.items())
    return f"Here is what {tool or 'the tool'} found: {facts}."


def reply(turns: Sequence[Turn], tools: Sequence[ToolSpec], tool_choice: Any = None) -> Reply:
    """The scripted answer to a conversation: a tool call, or text."""
    if turns and turns[-1].role == "tool":
        results: list[Turn] = []
        for turn in reversed(turns):
            if turn.role != "tool":
                break
            results.insert(0, turn)
        names = {call.id: call.name for turn in turns for call in turn.calls}
        return Reply(text=" ".join(describe_result(names.get(r.call_id or ""), r.text) for r in results))
    text = next((t.text for t in reversed(turns) if t.role == "user"), "")
    if tools and tool_choice != "none":
        seed = json.dumps([[t.role, t.text, t.call_id] for t in turns])
        if (call := choose_call(text, tools, tool_choice, seed)) is not None:
            return Reply(calls=(call,))
    if tools:
        return Reply(text=f"I could not match a tool to your request: {text.strip()}")
    return Reply(text=f"Scripted answer to: {text.strip()}")


def _count(text: str) -> int:
    return len(text.split())


def _usage(turns: Sequence[Turn], answer: Reply) -> tuple[int, int]:
    prompt = sum(_count(t.text) + sum(_count(c.arguments) for c in t.calls) for t in turns)
    completion = _count(answer.text or "") + sum(_count(c.name) + _count(c.arguments) for c in answer.calls)
    return prompt, max(completion, 1)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:24]


# --- chat completions -------------------------------------------------------------------------


def chat_completion(body: dict[str, Any], answer: Reply, turns: Sequence[Turn], raw: bytes) -> dict[str, Any]:
    prompt, completion = _usage(turns, answer)
    tool_calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in answer.calls
    ]
    return {
        "id": "chatcmpl-" + _digest(raw),
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model", MODEL),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "tool_calls": tool_calls or None},
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def chat_chunks(body: dict[str, Any], answer: Reply, turns: Sequence[Turn], raw: bytes) -> Iterator[bytes]:
    base = {
        "id": "chatcmpl-" + _digest(raw),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": body.get("model", MODEL),
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    for index, call in enumerate(answer.calls):
        half = len(call.arguments) // 2
        first = {"name": call.name, "arguments": call.arguments[:half]}
        deltas.append(
            {"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": first}]}
        )
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments[half:]}}]})
    words = (answer.text or "").split(" ") if answer.text else []
    deltas += [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
    for delta in deltas:
        yield _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    finish = "tool_calls" if answer.calls else "stop"
    yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt, completion = _usage(turns, answer)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        yield _event({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


# --- the Responses API ------------------------------------------------------------------------


def response_items(answer: Reply, response_id: str) -> list[dict[str, Any]]:
    suffix = response_id.removeprefix("resp_")
    items: list[dict[str, Any]] = [
        {
            "type": "function_call",
            "id": f"fc_{index}_{suffix}",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        for index, call in enumerate(answer.calls)
    ]
    if answer.text is not None:
        items.append(
            {
                "type": "message",
                "id": f"msg_{suffix}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": answer.text, "annotations": [], "logprobs": []}],
            }
        )
    return items


def response_object(
    body: dict[str, Any],
    response_id: str,
    *,
    output: list[dict[str, Any]],
    usage: tuple[int, int] | None,
    status: str = "completed",
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "completed_at": CREATED if status == "completed" else None,
        "model": body.get("model", MODEL),
        "instructions": body.get("instructions"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "previous_response_id": body.get("previous_response_id"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "error": None,
        "incomplete_details": None,
        "usage": None
        if usage is None
        else {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage[0] + usage[1],
        },
    }


def response_events(
    body: dict[str, Any], answer: Reply, turns: Sequence[Turn], response_id: str
) -> Iterator[bytes]:
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return _event(data, kind)

    started = response_object(body, response_id, output=[], usage=None, status="in_progress")
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    items = response_items(answer, response_id)
    for index, item in enumerate(items):
        if item["type"] == "function_call":
            arguments = item["arguments"]
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=part,
                )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=arguments,
            )
        else:
            text = item["content"][0]["text"]
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "content": [], "status": "in_progress"},
            )
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield event("response.content_part.added", **where, part=empty)
            for position, word in enumerate(text.split(" ")):
                delta = word if position == 0 else " " + word
                yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
            yield event("response.output_text.done", **where, text=text, logprobs=[])
            yield event("response.content_part.done", **where, part=item["content"][0])
        yield event("response.output_item.done", output_index=index, item=item)
    done = response_object(body, response_id, output=items, usage=_usage(turns, answer))
    yield event("response.completed", response=done)


# --- the server -------------------------------------------------------------------------------


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status)


@dataclass
class Served:
    """One request the teacher answered."""

    path: str
    body: dict[str, Any]
    reply: Reply


@dataclass
class ScriptedTeacher:
    """The scripted teacher on a free loopback port, started as a context manager."""

    host: str = "127.0.0.1"
    model: str = MODEL
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: dict[str, list[Turn]] = {}  # previous_response_id -> the conversation
        self._server: ServerThread | None = None
        self.app = self._build()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the teacher first (with ScriptedTeacher() as teacher: ...)"
        return self._server.url

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url`` (and the gateway as ``teacher.url``)."""
        return self.url + "/v1"

    def calls(self, path: str | None = None) -> int:
        """Requests answered, on one path (``/v1/responses``) or all."""
        with self._lock:
            return sum(path is None or s.path == path for s in self.served)

    def start(self) -> Self:
        self._server = ServerThread(self.app, host=self.host).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _remember(self, path: str, body: dict[str, Any], answer: Reply) -> None:
        with self._lock:
            self.served.append(Served(path, body, answer))

    def _build(self) -> FastAPI:
        app = FastAPI(title="scripted teacher", openapi_url=None, docs_url=None, redoc_url=None)

        async def read(request: Request) -> dict[str, Any] | JSONResponse:
            try:
                body = json.loads(await request.body())
            except ValueError as error:
                return _error(400, f"the body is not JSON: {error}")
            if not isinstance(body, dict):
                return _error(400, "the body must be a JSON object")
            return body

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "protege-tests"}
            return {"object": "list", "data": [model]}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            body = await read(request)
            if isinstance(body, JSONResponse):
                return body
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                return _error(400, "'messages' must be a non-empty list")
            raw = json.dumps(body, sort_keys=True).encode()
            turns, tools = chat_conversation(body)
            answer = reply(turns, tools, body.get("tool_choice"))
            self._remember("/v1/chat/completions", body, answer)
            if body.get("stream"):
                return StreamingResponse(
                    _aiter(chat_chunks(body, answer, turns, raw)), media_type="text/event-stream"
                )
            return JSONResponse(chat_completion(body, answer, turns, raw))

        @app.post("/v1/responses")
        async def responses(request: Request) -> Response:
            body = await read(request)
            if isinstance(body, JSONResponse):
                return body
            if body.get("input") is None:
                return _error(400, "'input' is required")
            earlier: list[Turn] = []
            if previous := body.get("previous_response_id"):
                if previous not in self._responses:
                    return _error(
                        404, f"no response {previous!r} (this teacher keeps only its own)", "not_found"
                    )
                earlier = self._responses[previous]
            turns, tools = responses_conversation(body, earlier)
            answer = reply(turns, tools, body.get("tool_choice"))
            response_id = "resp_" + _digest(
                json.dumps([body, [t.__dict__ for t in earlier]], default=str).encode()
            )
            self._responses[response_id] = [
                *turns,
                *(Turn("assistant", calls=(call,)) for call in answer.calls),
                *([Turn("assistant", answer.text)] if answer.text is not None else []),
            ]
            self._remember("/v1/responses", body, answer)
            if body.get("stream"):
                events = response_events(body, answer, turns, response_id)
                return StreamingResponse(_aiter(events), media_type="text/event-stream")
            output = response_items(answer, response_id)
            return JSONResponse(
                response_object(body, response_id, output=output, usage=_usage(turns, answer))
            )

        return app


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture
def scripted_teacher() -> Iterator[ScriptedTeacher]:
    """A fresh scripted teacher per test (so its request counts are the test's own)."""
    with ScriptedTeacher() as teacher:
        yield teacher
