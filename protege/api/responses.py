"""OpenAI's Responses API in chat-completions shape and back (pure).

The call record, the curator, the task router and the specialists all speak chat
completions. A ``POST /v1/responses`` call is converted once, here:

- :func:`chat_request` — a Responses request as a chat-completions request: ``instructions``
  become the system message, ``input`` (a string, or a list of items: messages,
  ``function_call`` and ``function_call_output``) the messages, flat function tools the
  nested chat ones, ``text.format`` the ``response_format``, ``max_output_tokens``
  ``max_completion_tokens``. It says when only the teacher can answer the request:
  ``previous_response_id``, ``conversation`` and stored prompts name state the gateway does
  not have; hosted tools (web search, file search, ...) and input items with no chat
  equivalent only the teacher can handle.
- :func:`chat_answer` — a Responses response object as a chat completion and its usage
  (the teacher's answer, for the record).
- :class:`ResponsesStream` — chat completion chunks as Responses server-sent events
  (``response.created`` ... ``response.completed``), token by token; and
  :func:`response_object`, a whole chat completion as a Responses response object, made by
  the same writer so both shapes always agree.

Unknown fields of the Responses request are kept as they came (the record holds them).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

# Responses request fields the chat shape has under the same name and meaning.
SAME_NAME = (
    "model", "stream", "temperature", "top_p", "top_logprobs", "parallel_tool_calls", "user",
    "metadata", "service_tier", "store", "safety_identifier", "prompt_cache_key", "stream_options",
)  # fmt: skip
# Fields that name state kept by the upstream (OpenAI's), which the gateway does not have.
STATEFUL = ("previous_response_id", "conversation", "prompt", "background")
# What a specialist is asked with: the chat fields it can honour.
SPECIALIST_FIELDS = frozenset(
    {
        "model", "messages", "tools", "tool_choice", "response_format", "temperature", "top_p",
        "max_completion_tokens", "parallel_tool_calls", "stream", "seed",
    }
)  # fmt: skip
_CONVERTED = frozenset(
    {"instructions", "input", "tools", "tool_choice", "text", "max_output_tokens", "reasoning"}
)
_MESSAGE_ROLES = ("user", "system", "developer", "assistant")


class ConversionError(ValueError):
    """A Responses request field of the wrong type; ``param`` names it as the caller wrote it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ChatView:
    """A Responses request in chat-completions shape."""

    body: dict[str, Any]  # the chat-completions request: the record's, the router's, a specialist's
    teacher_only: str | None  # why only the teacher can answer it; None when a specialist may

    def specialist_body(self) -> dict[str, Any]:
        """The request a specialist is asked: only what it can honour."""
        body = {key: value for key, value in self.body.items() if key in SPECIALIST_FIELDS}
        tools = [tool for tool in body.get("tools") or [] if tool.get("type") == "function"]
        if tools:
            body["tools"] = tools
        else:
            body.pop("tools", None)
        return body


# --- requests ------------------------------------------------------------------------------


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _expect(value: object, types: type | tuple[type, ...], param: str, what: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ConversionError(f"Invalid type for '{param}': expected {what}, got {_kind(value)}.", param)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def chat_request(request: dict[str, Any]) -> ChatView:
    """The Responses request ``request`` (a parsed JSON object) in chat-completions shape.

    Raises :class:`ConversionError` for a field of the wrong type, naming it and the type
    it needs.
    """
    teacher_only: list[str] = [f"'{name}'" for name in STATEFUL if request.get(name) not in (None, False)]
    messages = _conversation(request, teacher_only)
    body: dict[str, Any] = {key: value for key, value in request.items() if key not in _CONVERTED}
    if not messages:
        if not teacher_only:
            raise ConversionError(
                "Missing required parameter: 'input'. Send the conversation as 'input' (a string, or "
                "an array of messages and function call items).",
                "input",
            )
        # Only what the upstream holds (a previous response, a stored prompt) says what is asked.
        messages.append({"role": "user", "content": ""})
    body["messages"] = messages
    _convert_tools(request, body, teacher_only)
    _convert_text(request, body)
    max_output = request.get("max_output_tokens")
    if max_output is not None:
        _expect(max_output, int, "max_output_tokens", "an integer")
        body["max_completion_tokens"] = max_output
    reasoning = request.get("reasoning")
    if reasoning is not None:
        _expect(reasoning, dict, "reasoning", "an object")
        if reasoning.get("effort") is not None:
            body["reasoning_effort"] = reasoning["effort"]
    for name in ("stream", "store", "parallel_tool_calls"):
        if request.get(name) is not None:
            _expect(request[name], bool, name, "a boolean")
    model = request.get("model")
    if model is not None:
        _expect(model, str, "model", "a string")
    return ChatView(body, ", ".join(teacher_only) or None)


def _conversation(request: dict[str, Any], teacher_only: list[str]) -> list[dict[str, Any]]:
    """``instructions`` as the system message, then ``input`` as the messages."""
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        messages += _items(instructions, "instructions", teacher_only)
    elif instructions is not None:
        _expect(instructions, (str, list), "instructions", "a string")
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages += _items(given, "input", teacher_only)
    elif given is not None:
        _expect(given, (str, list), "input", "a string or an array of input items")
    return messages


def _items(items: list[Any], where: str, teacher_only: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        param = f"{where}[{index}]"
        _expect(item, dict, param, "an input item object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, param, teacher_only))
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                _expect(item.get(name), str, f"{param}.{name}", "a string")
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # parallel calls, or text then calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            _expect(item.get("call_id"), str, f"{param}.call_id", "a string")
            output = item.get("output")
            _expect(output, (str, list), f"{param}.output", "a string or an array of content parts")
            content = output if isinstance(output, str) else _parts(output, f"{param}.output", teacher_only)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
        elif kind == "reasoning":
            continue  # the model's own reasoning: a chat conversation has no place for it
        else:
            _expect(kind, str, f"{param}.type", "a string (the item type)")
            teacher_only.append(f"input items of type '{kind}'")
    return messages


def _message(item: dict[str, Any], param: str, teacher_only: list[str]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise ConversionError(
            f"Invalid value for '{param}.role': {role!r}; a message's role is one of "
            f"{', '.join(_MESSAGE_ROLES)}.",
            f"{param}.role",
        )
    content = item.get("content")
    _expect(content, (str, list), f"{param}.content", "a string or an array of content parts")
    if not isinstance(content, list):
        return {"role": role, "content": content}
    if role == "assistant":
        texts, refusals = [], []
        for index, part in enumerate(content):
            _expect(part, dict, f"{param}.content[{index}]", "a content part object")
            if part.get("type") == "refusal":
                refusals.append(str(part.get("refusal") or ""))
            else:
                texts.append(str(part.get("text") or ""))
        message: dict[str, Any] = {"role": role, "content": "".join(texts) if texts else None}
        if refusals:
            message["refusal"] = "".join(refusals)
        return message
    return {"role": role, "content": _parts(content, f"{param}.content", teacher_only)}


def _parts(parts: list[Any], param: str, teacher_only: list[str]) -> str | list[dict[str, Any]]:
    """Input content parts as chat content: one text part as a string, else a list of parts."""
    out: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        _expect(part, dict, where, "a content part object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            _expect(part.get("text"), str, f"{where}.text", "a string")
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        else:  # files and images by file id: the upstream's storage
            out.append(dict(part))
            teacher_only.append(
                f"content parts of type '{kind}'" if kind != "input_image" else "image file ids"
            )
    if len(out) == 1 and out[0]["type"] == "text":
        return str(out[0]["text"])
    return out


def _convert_tools(request: dict[str, Any], body: dict[str, Any], teacher_only: list[str]) -> None:
    tools = request.get("tools")
    if tools is not None:
        _expect(tools, list, "tools", "an array of tool objects")
        converted = []
        for index, tool in enumerate(tools):
            _expect(tool, dict, f"tools[{index}]", "a tool object")
            if tool.get("type") == "function":
                _expect(tool.get("name"), str, f"tools[{index}].name", "a string")
                function = {
                    key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool
                }
                converted.append({"type": "function", "function": function})
            else:
                converted.append(dict(tool))  # a hosted tool, kept as given: only the teacher has it
                teacher_only.append(f"the hosted tool '{tool.get('type')}'")
        if converted:
            body["tools"] = converted
    choice = request.get("tool_choice")
    if choice is None:
        return
    _expect(choice, (str, dict), "tool_choice", "a string or an object")
    if isinstance(choice, dict):
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            choice = {"type": "function", "function": {"name": choice["name"]}}
        else:
            teacher_only.append(f"tool_choice of type '{choice.get('type')}'")
    body["tool_choice"] = choice


def _convert_text(request: dict[str, Any], body: dict[str, Any]) -> None:
    text = request.get("text")
    if text is None:
        return
    _expect(text, dict, "text", "an object")
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    shape = text.get("format")
    if shape is None:
        return
    _expect(shape, dict, "text.format", "an object")
    kind = shape.get("type")
    if kind == "json_schema":
        schema = {key: shape[key] for key in ("name", "schema", "description", "strict") if key in shape}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind != "text":
        body["response_format"] = dict(shape)


# --- answers: Responses → chat ---------------------------------------------------------------


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Responses usage (input/output tokens) as chat usage (prompt/completion tokens)."""
    if not isinstance(usage, dict):
        return None
    converted: dict[str, Any] = {
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "total_tokens": usage.get("total_tokens") or 0,
    }
    if isinstance(usage.get("input_tokens_details"), dict):
        cached = usage["input_tokens_details"].get("cached_tokens")
        converted["prompt_tokens_details"] = {"cached_tokens": cached or 0}
    if isinstance(usage.get("output_tokens_details"), dict):
        reasoning = usage["output_tokens_details"].get("reasoning_tokens")
        converted["completion_tokens_details"] = {"reasoning_tokens": reasoning or 0}
    return converted


def chat_answer(response: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A Responses response object as a chat completion, and its usage in chat shape.

    Message items become the content (their text parts joined) and refusal, function calls
    the tool calls; other items (reasoning, hosted tool calls) have no chat equivalent and
    are left out.
    """
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
                elif isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or ""},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if calls:
        message["tool_calls"] = calls
    status = response.get("status")
    reason = (response.get("incomplete_details") or {}).get("reason")
    finish: str | None
    if status == "incomplete":
        finish = "content_filter" if reason == "content_filter" else "length"
    elif status == "completed":
        finish = "tool_calls" if calls else "stop"
    else:  # in progress (a partial answer), failed, cancelled
        finish = None
    created = response.get("created_at")
    completion = {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": int(created) if isinstance(created, int | float) else None,
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    return completion, chat_usage(response.get("usage"))


# --- answers: chat → Responses ---------------------------------------------------------------


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage as Responses usage."""
    if not isinstance(usage, dict):
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# The ids of the responses the gateway writes (a specialist's answers), told apart from the teacher's.
RESPONSE_ID_PREFIX = "resp_protege"


class ResponsesStream:
    """Chat completion chunks in, Responses server-sent events out (one choice: the first).

    :meth:`start` gives ``response.created`` and ``response.in_progress``; :meth:`chunk`
    the events of one chat chunk (a message item opened on the first text, text deltas, a
    ``function_call`` item per tool call with its argument deltas); :meth:`finish` closes
    the open items and gives ``response.completed`` (``response.incomplete`` when the answer
    was cut at its token limit); :meth:`fail` gives an ``error`` event and
    ``response.failed``. :attr:`response` is the response object at any point.
    """

    def __init__(self, request: dict[str, Any], model: str, created: int | None = None) -> None:
        self.response: dict[str, Any] = {
            "id": new_id(RESPONSE_ID_PREFIX),
            "object": "response",
            "created_at": created if created is not None else int(time.time()),
            "status": "in_progress",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata") or {},
            "model": model,
            "output": [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "temperature": request.get("temperature"),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p"),
            "truncation": request.get("truncation", "disabled"),
            "usage": None,
            "user": request.get("user"),
        }
        self.sequence = 0
        self._text: list[str] | None = None  # the open message item's text, when one is open
        self._calls: dict[int, int] = {}  # chat tool call index → output index
        self._open_call: int | None = None  # output index of the open function call item
        self.finish_reason: str | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        return self.response["output"]  # type: ignore[no-any-return]

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"

    def _snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))  # type: ignore[no-any-return]

    def start(self) -> bytes:
        return self._event("response.created", response=self._snapshot()) + self._event(
            "response.in_progress", response=self._snapshot()
        )

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        events = []
        if chunk.get("usage"):
            self.response["usage"] = responses_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # the Responses API answers once
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events.append(self._text_delta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                events.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(events)

    def _text_delta(self, text: str) -> bytes:
        events = b""
        if self._text is None:
            events += self._close_call()
            item = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self.output.append(item)
            self._text = []
            index = len(self.output) - 1
            events += self._event("response.output_item.added", output_index=index, item=dict(item))
            events += self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=_text_part(""),
            )
        self._text.append(text)
        index = len(self.output) - 1
        return events + self._event(
            "response.output_text.delta",
            item_id=self.output[index]["id"],
            output_index=index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_text(self) -> bytes:
        if self._text is None:
            return b""
        index = len(self.output) - 1
        item = self.output[index]
        text = "".join(self._text)
        self._text = None
        item["content"] = [_text_part(text)]
        item["status"] = "completed"
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return (
            self._event("response.output_text.done", **common, text=text, logprobs=[])
            + self._event("response.content_part.done", **common, part=_text_part(text))
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        events = b""
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        if position not in self._calls:
            events += self._close_text() + self._close_call()
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.get("id") or new_id("call"),
                "name": function.get("name") or "",
            }
            self.output.append(item)
            self._calls[position] = self._open_call = len(self.output) - 1
            events += self._event("response.output_item.added", output_index=self._open_call, item=dict(item))
        index = self._calls[position]
        item = self.output[index]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            events += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=function["arguments"],
            )
        return events

    def _close_call(self) -> bytes:
        if self._open_call is None:
            return b""
        index, self._open_call = self._open_call, None
        item = self.output[index]
        item["status"] = "completed"
        return self._event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=item["name"],
            arguments=item["arguments"],
        ) + self._event("response.output_item.done", output_index=index, item=item)

    def finish(self) -> bytes:
        """Close what is open and complete the response (an empty answer is one empty message)."""
        if not self.output:
            self._text_delta("")
        events = self._close_text() + self._close_call()
        if self.finish_reason in ("length", "content_filter"):
            self.response["status"] = "incomplete"
            reason = "max_output_tokens" if self.finish_reason == "length" else "content_filter"
            self.response["incomplete_details"] = {"reason": reason}
            return events + self._event("response.incomplete", response=self.response)
        self.response["status"] = "completed"
        return events + self._event("response.completed", response=self.response)

    def fail(self, message: str, code: str) -> bytes:
        """An error event and ``response.failed`` (the stream broke after it began)."""
        if self._text is not None:  # the text so far stays in its (incomplete) message
            self.output[-1].update(content=[_text_part("".join(self._text))], status="incomplete")
        if self._open_call is not None:
            self.output[self._open_call]["status"] = "incomplete"
        self.response["status"] = "failed"
        self.response["error"] = {"code": "server_error", "message": message}
        return self._event("error", code=code, message=message, param=None) + self._event(
            "response.failed", response=self.response
        )


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def answer_chunk(completion: dict[str, Any]) -> dict[str, Any]:
    """A whole chat completion as one chunk carrying all of it (first choice, usage)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}]}
    if completion.get("usage"):
        chunk["usage"] = completion["usage"]
    return chunk


def response_object(completion: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any]:
    """A whole chat completion as the Responses response object (the same as a stream ends with)."""
    stream = ResponsesStream(request, model, completion.get("created"))
    stream.chunk(answer_chunk(completion))
    stream.finish()
    return stream.response
