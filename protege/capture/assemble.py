"""Rebuild a whole chat completion from the server-sent events of a streamed one (pure).

The gateway and the listener SDK pass the upstream's bytes to the caller untouched and
feed the same bytes to a :class:`StreamAssembler`, which parses the SSE framing
incrementally (events may be split across network reads at any byte) and merges the
``chat.completion.chunk`` deltas into the non-streamed shape: content concatenated,
tool calls merged by index with their argument fragments joined, finish reasons and
usage kept. Legacy completion chunks (``choices[].text``) merge the same way. A Responses
API stream goes to a :class:`ResponsesAssembler` instead, which reads its ``response.*``
events and gives the same chat-completion shape (:mod:`protege.api.responses`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protege.api.calls import ChatResponse, Usage
from protege.api.responses import chat_answer, chat_usage


@dataclass
class _ToolCallParts:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ChoiceParts:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class _EventReader:
    """The SSE framing: feed bytes split anywhere; each whole event's JSON data goes to ``_json``."""

    def __init__(self) -> None:
        self._buffer = b""
        self.usage: Usage | None = None
        self.done = False  # the upstream sent `data: [DONE]`
        self.chunks = 0
        self.error: dict[str, Any] | None = None
        self.malformed = 0  # events that were not JSON: counted, never fatal

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end, skip = _event_end(self._buffer)
            if end < 0:
                return
            event, self._buffer = self._buffer[:end], self._buffer[end + skip :]
            self._event(event)

    def _event(self, event: bytes) -> None:
        payload = event_data(event)
        if payload is None:
            return  # a comment or keep-alive
        if payload.strip() == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.malformed += 1
            return
        if not isinstance(chunk, dict):
            self.malformed += 1
            return
        self._json(chunk)

    def _json(self, chunk: dict[str, Any]) -> None:
        raise NotImplementedError

    def response(self) -> ChatResponse | None:
        raise NotImplementedError


class StreamAssembler(_EventReader):
    """Feed raw SSE bytes with :meth:`feed`; read :meth:`response` and :attr:`usage` at the end.

    Chat-completion chunks, and legacy completion chunks (``choices[].text``) alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self._choices: dict[int, _ChoiceParts] = {}
        self._meta: dict[str, Any] = {}

    def _json(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk and "choices" not in chunk:
            self.error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
            return
        self.chunks += 1
        self._merge(chunk)

    def _merge(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "model", "created", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self._meta.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = Usage.model_validate(chunk["usage"])
        for choice in chunk.get("choices") or []:
            parts = self._choices.setdefault(int(choice.get("index", 0)), _ChoiceParts())
            delta = choice.get("delta") or {}
            if delta.get("role"):
                parts.role = delta["role"]
            if delta.get("content"):
                parts.content.append(delta["content"])
            if isinstance(choice.get("text"), str):  # a legacy completion chunk
                parts.content.append(choice["text"])
            if delta.get("refusal"):
                parts.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                tool = parts.tool_calls.setdefault(int(call.get("index", 0)), _ToolCallParts())
                tool.id = call.get("id") or tool.id
                tool.type = call.get("type") or tool.type
                function = call.get("function") or {}
                tool.name += function.get("name") or ""
                if function.get("arguments"):
                    tool.arguments.append(function["arguments"])
            if choice.get("finish_reason"):
                parts.finish_reason = choice["finish_reason"]
            logprobs = choice.get("logprobs") or {}
            parts.logprobs.extend(logprobs.get("content") or [])

    def response(self) -> ChatResponse | None:
        """The merged answer, or None when no chunk came."""
        if not self.chunks:
            return None
        choices = []
        for index in sorted(self._choices):
            parts = self._choices[index]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(parts.content) if parts.content or not parts.tool_calls else None,
            }
            if parts.refusal:
                message["refusal"] = "".join(parts.refusal)
            if parts.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": tool.id,
                        "type": tool.type,
                        "function": {"name": tool.name, "arguments": "".join(tool.arguments)},
                    }
                    for _, tool in sorted(parts.tool_calls.items())
                ]
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "finish_reason": parts.finish_reason,
            }
            if parts.logprobs:
                choice["logprobs"] = {"content": parts.logprobs}
            choices.append(choice)
        return ChatResponse.model_validate({**self._meta, "object": "chat.completion", "choices": choices})


class ResponsesAssembler(_EventReader):
    """A Responses API stream (``response.*`` events) as the chat completion it amounts to.

    The final response object (``response.completed``, ``.incomplete`` or ``.failed``) says
    it all; until one arrives (the caller left, the upstream broke off), the answer is
    rebuilt from the output items and text and argument deltas seen so far.
    """

    def __init__(self) -> None:
        super().__init__()
        self.final: dict[str, Any] | None = None
        self.sequence = -1  # the last sequence number seen
        self._meta: dict[str, Any] = {}
        self._items: dict[int, dict[str, Any]] = {}
        self._deltas: dict[str, list[str]] = {}

    def _json(self, event: dict[str, Any]) -> None:
        self.chunks += 1
        if isinstance(event.get("sequence_number"), int):
            self.sequence = max(self.sequence, event["sequence_number"])
        kind = event.get("type")
        response = event.get("response")
        if isinstance(response, dict):
            self._meta = response
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.final = response
                usage = chat_usage_of(response)
                if usage is not None:
                    self.usage = usage
            if kind == "response.failed":
                error = response.get("error")
                self.error = error if isinstance(error, dict) else {"message": "the response failed"}
        elif kind == "error":
            self.error = {"message": event.get("message") or "stream error", "code": event.get("code")}
        elif kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(event.get("item"), dict) and isinstance(event.get("output_index"), int):
                self._items[event["output_index"]] = event["item"]
        elif kind in ("response.output_text.delta", "response.function_call_arguments.delta"):
            self._deltas.setdefault(str(event.get("item_id")), []).append(str(event.get("delta") or ""))

    def response(self) -> ChatResponse | None:
        if not self.chunks:
            return None
        if self.final is not None:
            completion, _ = chat_answer(self.final)
        else:
            output = []
            for _, seen in sorted(self._items.items()):
                item = dict(seen)
                streamed = "".join(self._deltas.get(str(item.get("id")), []))
                if item.get("status") != "completed" and item.get("type") == "message":
                    item["content"] = [{"type": "output_text", "text": streamed}]
                elif item.get("status") != "completed" and item.get("type") == "function_call":
                    item["arguments"] = streamed
                output.append(item)
            completion, _ = chat_answer({**self._meta, "output": output, "status": "in_progress"})
        return ChatResponse.model_validate(completion)


def chat_usage_of(response: dict[str, Any]) -> Usage | None:
    """The usage of a Responses response object, in chat terms."""
    usage = chat_usage(response.get("usage"))
    return Usage.model_validate(usage) if usage is not None else None


def event_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its ``data:`` lines joined), None when it has none."""
    data_lines = [
        line[5:].removeprefix(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(data_lines) if data_lines else None


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Index of the first event separator (a blank line) and its length, or (-1, 0)."""
    candidates = [(buffer.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
    found = [(index, length) for index, length in candidates if index >= 0]
    return min(found) if found else (-1, 0)
