"""The gateway's pure parts: request checks, forwarded headers, what it does to event streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protege.api.calls import Endpoint
from protege.capture.assemble import StreamAssembler
from protege.capture.recorder import parse_answer
from protege.config import ApiKey
from protege.serving.gateway.auth import KeyRing, hash_key
from protege.serving.gateway.errors import GatewayError
from protege.serving.gateway.headers import forwarded_headers
from protege.serving.gateway.sse import SpecialistChunks, UsageFilter, wants_usage, with_usage
from protege.serving.gateway.validation import (
    parse_chat_request,
    parse_completions_request,
    parse_responses_request,
)

MODELS = ("gpt-x",)


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_fields_the_gateway_does_not_know_pass_and_are_kept() -> None:
    parsed = parse_chat_request(body(top_k=4, a_field_of_2030={"x": [1]}, stream=False), models=MODELS)
    assert parsed.data["top_k"] == 4 and parsed.chat.model_extra == {
        "top_k": 4,
        "a_field_of_2030": {"x": [1]},
    }


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"stream": "true"}, "stream", 'expected a boolean (true or false), got "true"'),
        ({"stream": True, "stream_options": "usage"}, "stream_options", '{"include_usage": true}'),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "include_usage", "expected a boolean"),
        ({"logprobs": "yes"}, "logprobs", "expected a boolean"),
        ({"tools": {"type": "function"}}, "tools", "Input should be a valid list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "Input should be"),
        ({"model": 7}, "model", "Input should be a valid string"),
        ({"temperature": "warm"}, "temperature", '(got "warm")'),
    ],
)
def test_type_errors_in_fields_the_gateway_reads_say_which_and_how(
    fields: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(GatewayError) as raised:
        parse_chat_request(body(**fields), models=MODELS)
    assert raised.value.status_code == 400 and raised.value.param == param and says in raised.value.message


def test_completions_and_responses_requests() -> None:
    prompt = parse_completions_request(
        b'{"model": "gpt-x", "prompt": ["Once"], "logprobs": 3}', models=MODELS
    )
    assert prompt.chat.messages[0].content == "Once" and prompt.chat.top_logprobs == 3
    tokens = parse_completions_request(b'{"model": "gpt-x", "prompt": [[1, 2], [3]]}', models=MODELS)
    assert tokens.chat.messages[0].content == "[[1, 2], [3]]"
    with pytest.raises(GatewayError, match="does not exist on this gateway"):
        parse_completions_request(b'{"model": "gpt-9", "prompt": "x"}', models=MODELS)
    parsed = parse_responses_request(b'{"model": "gpt-x", "input": "hi", "store": false}', models=MODELS)
    assert parsed.view.teacher_only is None and parsed.chat.messages[0].content == "hi"
    with pytest.raises(GatewayError) as raised:
        parse_responses_request(
            b'{"model": "spec", "input": "hi", "previous_response_id": "r"}',
            models=MODELS,
            is_specialist=lambda name: name == "spec",
        )
    assert raised.value.status_code == 400 and "only be answered by the teacher" in raised.value.message


def test_keys_come_as_bearer_or_azure_api_key() -> None:
    ring = KeyRing([ApiKey(sha256=hash_key("pgk-1"), tenant="acme", app="bot")])
    assert ring.authenticate({"authorization": "Bearer pgk-1"}).tenant == "acme"
    assert ring.authenticate({"api-key": "pgk-1"}).tenant == "acme"
    assert ring.authenticate({"authorization": "Basic x", "api-key": " pgk-1 "}).app == "bot"
    with pytest.raises(GatewayError, match="'api-key: <key>'"):
        ring.authenticate({})


def test_only_the_headers_a_client_acts_on_are_forwarded() -> None:
    raw = [
        (b"Retry-After", b"7"),
        (b"retry-after-ms", b"7000"),
        (b"X-Request-Id", b"req_1"),
        (b"openai-processing-ms", b"12"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"X-RateLimit-Reset-Tokens", b"6m0s"),
        (b"Set-Cookie", b"a=b"),
        (b"Content-Length", b"10"),
        (b"Content-Encoding", b"gzip"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"x-internal", b"1"),
    ]
    assert forwarded_headers(raw) == [
        (b"retry-after", b"7"),
        (b"retry-after-ms", b"7000"),
        (b"x-request-id", b"req_1"),
        (b"openai-processing-ms", b"12"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-tokens", b"6m0s"),
    ]


def test_usage_is_asked_for_keeping_the_callers_bytes() -> None:
    sent = b'  {"model": "gpt-x", "stream": true, "messages": [{"role": "user", "content": "{hi}"}]}'
    asked = with_usage(sent, json.loads(sent))
    assert json.loads(asked)["stream_options"] == {"include_usage": True}
    assert asked.endswith(sent.split(b"{", 1)[1]) and wants_usage(json.loads(asked))
    options = {"model": "gpt-x", "stream": True, "stream_options": {"include_obfuscation": False}}
    merged = json.loads(with_usage(json.dumps(options).encode(), options))
    assert merged["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert not wants_usage(options) and not wants_usage({"stream_options": {"include_usage": "yes"}})


def openai_stream(spaced: bool) -> bytes:
    """A stream as OpenAI sends it once usage is asked for: "usage": null in every chunk, then usage."""
    dumps = json.dumps if spaced else (lambda data: json.dumps(data, separators=(",", ":")))
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    chunks = [
        {
            **head,
            "choices": [{"index": 0, "delta": {"content": 'say "usage": null'}, "finish_reason": None}],
            "usage": None,
        },
        {**head, "usage": None, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    return (
        b"".join(b"data: " + dumps(c).encode() + b"\n\n" for c in chunks)
        + b": keep-alive\n\ndata: [DONE]\n\n"
    )


@pytest.mark.parametrize("spaced", [False, True])
def test_the_usage_the_caller_did_not_ask_for_is_taken_out_wherever_reads_split(spaced: bool) -> None:
    raw = openai_stream(spaced)
    expected = None
    for size in (1, 3, 17, len(raw)):
        usage_filter, caller, record = UsageFilter(), b"", b""
        for start in range(0, len(raw), size):
            out, seen = usage_filter.feed(raw[start : start + size])
            caller, record = caller + out, record + seen
        caller += usage_filter.close()[0]
        assert record == raw  # the record sees every byte the teacher sent
        expected = expected or caller
        assert caller == expected
    assert expected is not None and b'"usage": null' not in expected.replace(b'\\"usage\\": null', b"")
    events = [json.loads(e[6:]) for e in expected.split(b"\n\n") if e.startswith(b"data: {")]
    assert [list(e) for e in events] == [["id", "object", "created", "model", "choices"]] * 2
    assert events[0]["choices"][0]["delta"]["content"] == 'say "usage": null'  # content untouched
    assert expected.endswith(b": keep-alive\n\ndata: [DONE]\n\n")
    assembled = StreamAssembler()
    assembled.feed(raw)
    assert assembled.usage is not None and assembled.usage.total_tokens == 5


def test_a_specialists_chunks_carry_the_callers_model_and_usage_only_if_asked() -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "intent@v1"}
    raw = (
        b"data: "
        + json.dumps({**head, "choices": [{"index": 0, "delta": {"content": "hi"}}]}).encode()
        + b"\n\n"
        b"data: " + json.dumps({**head, "choices": [], "usage": {"prompt_tokens": 1}}).encode() + b"\n\n"
        b"data: [DONE]\n\n"
    )
    for include_usage in (False, True):
        chunks, caller, record = SpecialistChunks("gpt-x", include_usage), b"", b""
        for start in range(0, len(raw), 5):
            out, seen = chunks.feed(raw[start : start + 5])
            caller, record = caller + out, record + seen
        events = [json.loads(e[6:]) for e in caller.split(b"\n\n") if e.startswith(b"data: {")]
        assert {e["model"] for e in events} == {"gpt-x"} and caller.endswith(b"data: [DONE]\n\n")
        assert any("usage" in e for e in events) is include_usage
        assert b'"usage"' in record


def test_legacy_completions_are_read_in_chat_shape() -> None:
    whole = {
        "id": "cmpl",
        "object": "text_completion",
        "choices": [{"index": 0, "text": "upon a time", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }
    response, usage, failure = parse_answer(json.dumps(whole).encode(), Endpoint.COMPLETIONS)
    assert (
        response is not None and response.content == "upon a time" and usage is not None and failure is None
    )
    stream = StreamAssembler()
    for text in ("upon", " a time"):
        stream.feed(
            b"data: "
            + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}).encode()
            + b"\n\n"
        )
    assert stream.response() is not None and stream.response().content == "upon a time"  # type: ignore[union-attr]
