"""Rebuild a whole chat completion from the server-sent events of a streamed one (pure).

The gateway and the listener SDK pass the upstream's bytes to the caller untouched and
feed the same bytes to a :class:`StreamAssembler`, which parses the SSE framing
incrementally (events may be split across network reads at any byte) and merges the
``chat.completion.chunk`` deltas into the non-streamed shape: content concatenated,
tool calls merged by index with their argument fragments joined, finish reasons and
usage kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protege.api.calls import ChatResponse, Usage


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


class StreamAssembler:
    """Feed raw SSE bytes with :meth:`feed`; read :meth:`response` and :attr:`usage` at the end."""

    def __init__(self) -> None:
        self._buffer = b""
        self._choices: dict[int, _ChoiceParts] = {}
        self._meta: dict[str, Any] = {}
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
        data_lines = [
            line[5:].removeprefix(b" ")
            for line in event.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        ]
        if not data_lines:
            return  # a comment or keep-alive
        payload = b"\n".join(data_lines)
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


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Index of the first event separator (a blank line) and its length, or (-1, 0)."""
    candidates = [(buffer.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
    found = [(index, length) for index, length in candidates if index >= 0]
    return min(found) if found else (-1, 0)
