"""The Responses API in chat shape and back (pure), checked against the openai SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from protege.api.calls import ChatRequest
from protege.api.responses import (
    ConversionError,
    ResponsesStream,
    answer_chunk,
    chat_answer,
    chat_request,
    response_object,
)
from protege.capture.assemble import ResponsesAssembler

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def completion(
    content: str | None, calls: list[tuple[str, str, str]] = (), finish: str = "stop"
) -> dict[str, Any]:  # type: ignore[assignment]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}
            for id_, name, arguments in calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": "intent@v1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


def test_a_responses_request_in_chat_shape() -> None:
    request = {
        "model": "gpt-x",
        "instructions": "You are a weather agent.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "And this?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ],
            },
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {
            "format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}
        },
        "max_output_tokens": 64,
        "reasoning": {"effort": "low"},
        "temperature": 0.2,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "a_new_sdk_field": {"x": 1},
    }
    view = chat_request(request)
    assert view.teacher_only is None
    assert view.body["messages"] == [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
    ]
    function = {key: WEATHER[key] for key in ("name", "description", "parameters", "strict")}
    assert view.body["tools"] == [{"type": "function", "function": function}]
    assert view.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert view.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert view.body["max_completion_tokens"] == 64 and view.body["reasoning_effort"] == "low"
    assert view.body["include"] == ["reasoning.encrypted_content"] and view.body["a_new_sdk_field"] == {
        "x": 1
    }
    record = ChatRequest.model_validate(view.body)  # what the call record holds
    assert (
        record.temperature == 0.2 and record.model_extra is not None and record.model_extra["store"] is False
    )
    asked = view.specialist_body()
    assert set(asked) == {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "response_format",
        "temperature",
        "max_completion_tokens",
    }


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"previous_response_id": "resp_1"}, "'previous_response_id'"),
        ({"conversation": "conv_1"}, "'conversation'"),
        ({"tools": [{"type": "web_search"}]}, "hosted tool 'web_search'"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input items of type 'item_reference'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "content parts of type 'input_file'",
        ),
    ],
)
def test_requests_only_the_teacher_can_answer(extra: dict[str, Any], why: str) -> None:
    view = chat_request({"model": "m", "input": "hi", **extra})
    assert view.teacher_only is not None and why in view.teacher_only
    ChatRequest.model_validate(view.body)  # still recorded, with what the request carries


def test_a_request_with_no_conversation() -> None:
    stateful = chat_request({"model": "m", "previous_response_id": "resp_1"})
    assert stateful.body["messages"] == [{"role": "user", "content": ""}]
    assert stateful.body["previous_response_id"] == "resp_1"
    with pytest.raises(ConversionError, match="Missing required parameter: 'input'"):
        chat_request({"model": "m"})


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"input": "x", "tools": {"a": 1}}, "tools"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "max_output_tokens": "5"}, "max_output_tokens"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "text": {"format": "json"}}, "text.format"),
        ({"input": "x", "instructions": 3}, "instructions"),
    ],
)
def test_type_errors_name_the_field_as_the_caller_wrote_it(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(ConversionError) as raised:
        chat_request({"model": "m", **request_})
    assert raised.value.param == param and f"'{param}'" in raised.value.message


def test_chat_answers_as_response_objects_the_sdk_reads() -> None:
    request = {"model": "gpt-x", "input": "hi", "tools": [WEATHER], "store": False, "temperature": 0.3}
    text = SdkResponse.model_validate(response_object(completion("Hello there."), request, "gpt-x"))
    assert text.output_text == "Hello there." and text.status == "completed" and text.model == "gpt-x"
    assert text.usage is not None and (text.usage.input_tokens, text.usage.output_tokens) == (12, 7)
    assert text.tools[0].type == "function" and text.temperature == 0.3
    calls = SdkResponse.model_validate(
        response_object(
            completion(
                None, [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "f", "{}")], "tool_calls"
            ),
            request,
            "gpt-x",
        )
    )
    assert [(o.type, getattr(o, "call_id", None)) for o in calls.output] == [
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]
    assert calls.output[0].name == "get_weather" and calls.output[0].arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    cut = SdkResponse.model_validate(response_object(completion("Hel", finish="length"), request, "gpt-x"))
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


def _parsed(raw: bytes) -> list[Any]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n", 1)
            event = EVENTS.validate_python(json.loads(data.removeprefix("data: ")))
            assert kind == f"event: {event.type}"
            events.append(event)
    return events


def test_chat_chunks_as_response_events_the_sdk_reads() -> None:
    request = {"model": "gpt-x", "input": "hi", "tools": [WEATHER]}
    writer = ResponsesStream(request, "gpt-x")
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "intent@v1"}
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": ""},
        {"content": "Let me"},
        {"content": " check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        },
    ]
    raw = writer.start()
    for delta in deltas:
        raw += writer.chunk({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    raw += writer.chunk({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    raw += writer.chunk({**head, "choices": [], "usage": USAGE})
    raw += writer.finish()
    events = _parsed(raw)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1].response
    assert final.output_text == "Let me check." and final.usage.total_tokens == 19
    assert [(o.type, getattr(o, "call_id", None)) for o in final.output] == [
        ("message", None),
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]
    item_ids = {e.item_id for e in events if e.type == "response.output_text.delta"}
    assert item_ids == {final.output[0].id}
    # The same answer whole: the same output and usage (the response object a stream ends with).
    whole = completion(
        "Let me check.", [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "f", "{}")], "tool_calls"
    )
    made = SdkResponse.model_validate(response_object(whole, request, "gpt-x"))

    def shape(response: SdkResponse) -> list[Any]:
        return [{k: v for k, v in item.model_dump().items() if k != "id"} for item in response.output]

    assert shape(made) == shape(final) and made.usage == final.usage


def test_round_trips() -> None:
    request = {"model": "gpt-x", "input": "hi"}
    for answer in (
        completion("Hello."),
        completion(None, [("call_a", "get_weather", '{"city":"Paris"}')], "tool_calls"),
        completion("Checking.", [("call_a", "f", "{}"), ("call_b", "g", '{"x":1}')], "tool_calls"),
        completion("Cut sh", finish="length"),
    ):
        back, usage = chat_answer(response_object(answer, request, "gpt-x"))
        assert back["choices"] == answer["choices"]
        assert usage is not None and {k: usage[k] for k in USAGE} == USAGE
    teacher = {  # as OpenAI answers: a reasoning item, a message, a call
        "id": "resp_t",
        "object": "response",
        "created_at": 1_767_225_600,
        "status": "completed",
        "model": "gpt-x",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "On it.", "annotations": []}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_9",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
                "status": "completed",
            },
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 30,
            "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 0},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 4},
            "total_tokens": 39,
        },
    }
    SdkResponse.model_validate(teacher)
    chat, usage = chat_answer(teacher)
    assert chat["choices"][0]["message"] == {
        "role": "assistant",
        "content": "On it.",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert chat["choices"][0]["finish_reason"] == "tool_calls" and chat["id"] == "resp_t"
    assert usage == {
        "prompt_tokens": 30,
        "completion_tokens": 9,
        "total_tokens": 39,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    again = SdkResponse.model_validate(response_object({**chat, "usage": usage}, request, "gpt-x"))
    assert (
        again.output_text == "On it."
        and again.usage is not None
        and again.usage.input_tokens_details.cached_tokens == 10
    )
    [call] = [o for o in again.output if o.type == "function_call"]
    assert (call.call_id, call.name, call.arguments) == ("call_9", "get_weather", '{"city":"Oslo"}')


def test_a_responses_stream_is_read_back_whatever_its_network_reads() -> None:
    request = {"model": "gpt-x", "input": "hi"}
    answer = completion("Checking.", [("call_a", "get_weather", '{"city":"Paris"}')], "tool_calls")
    writer = ResponsesStream(request, "gpt-x")
    raw = writer.start() + writer.chunk(answer_chunk(answer)) + writer.finish()
    for size in (1, 7, len(raw)):
        assembler = ResponsesAssembler()
        for start in range(0, len(raw), size):
            assembler.feed(raw[start : start + size])
        got = assembler.response()
        assert got is not None and got.content == "Checking." and got.finish_reason == "tool_calls"
        assert got.tool_calls[0].id == "call_a" and got.tool_calls[0].function.arguments == '{"city":"Paris"}'
        assert assembler.usage is not None and assembler.usage.total_tokens == 19 and assembler.error is None


def test_a_broken_responses_stream_keeps_what_came() -> None:
    writer = ResponsesStream({"model": "gpt-x", "input": "hi"}, "gpt-x")
    head = {"choices": [{"index": 0, "delta": {"content": "Half an"}, "finish_reason": None}]}
    started = writer.start() + writer.chunk(head)
    cut = ResponsesAssembler()
    cut.feed(started)  # the caller left here
    partial = cut.response()
    assert partial is not None and partial.content == "Half an" and partial.finish_reason is None
    failed = started + writer.fail("the specialist broke off", "upstream_stream_error")
    events = _parsed(failed)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert (
        events[-1].response.status == "failed" and events[-1].response.output[0].content[0].text == "Half an"
    )
    assembler = ResponsesAssembler()
    assembler.feed(failed)
    assert assembler.error is not None and "broke off" in str(assembler.error)
    assert (assembler.response() or partial).content == "Half an"
