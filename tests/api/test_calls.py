import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from protege.api import CallRecord, CallStatus, ChatRequest, ChatResponse, ErrorInfo, Latency, Upstream
from protege.api.calls import RouteDecision, RouteReason, UpstreamKind, call_subject
from protege.api.ids import uuid7, uuid7_time_ms

REQUEST = {
    "model": "gpt-big",
    "messages": [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": [{"type": "text", "text": "orders last week"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "run", "arguments": '{"q": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "tools": [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "temperature": 0.2,
    "stream": True,
    "parallel_tool_calls": False,  # a field this version does not model: kept as it came
    "metadata": {"trace": "abc"},
}


def record(**overrides: object) -> CallRecord:
    fields: dict[str, object] = {
        "tenant": "acme",
        "app": "query-writer",
        "request": ChatRequest.model_validate(REQUEST),
        "response": ChatResponse.model_validate(
            {
                "id": "chatcmpl-1",
                "model": "gpt-big",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": REQUEST["messages"][2]["tool_calls"],
                        },  # type: ignore[index]
                        "finish_reason": "tool_calls",
                    }
                ],
                "service_tier": "default",
            }
        ),
        "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
        "latency": Latency(total_ms=120.5, ttft_ms=33.0),
        "upstream": Upstream(kind=UpstreamKind.TEACHER, model="gpt-big"),
    }
    fields.update(overrides)
    return CallRecord.model_validate(fields)


def test_record_round_trips_through_json_losslessly() -> None:
    original = record()
    again = CallRecord.from_json(original.to_json())
    assert again == original
    assert again.to_json() == original.to_json()
    dumped = json.loads(original.to_json())
    assert dumped["request"]["parallel_tool_calls"] is False
    assert dumped["request"]["metadata"] == {"trace": "abc"}
    assert dumped["response"]["service_tier"] == "default"
    assert again.response is not None and again.response.tool_calls[0].function.name == "run"
    assert again.response.finish_reason == "tool_calls"


def test_record_ids_are_time_ordered_uuid7() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids, key=lambda u: u.int)
    assert len(set(ids)) == len(ids)
    assert all(u.version == 7 for u in ids)
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert abs(uuid7_time_ms(ids[-1]) - now_ms) < 60_000


def test_subject_holds_tenant_and_app() -> None:
    assert record().subject == "protege.calls.acme.query-writer"
    assert call_subject("t1", "default") == "protege.calls.t1.default"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"tenant": "acme corp"}, "tenant 'acme corp' may only hold"),
        ({"app": "a.b"}, "becomes a NATS subject token; use e.g. 'a-b'"),
        ({"id": str(uuid.uuid4())}, "ids must be UUIDv7"),
        ({"id": "nope"}, "is not a UUID"),
        ({"schema_version": 9}, "record schema version 9 is not readable"),
        ({"response": None}, "status 'ok' needs a response"),
        ({"status": CallStatus.TIMEOUT}, "needs an 'error' saying what failed"),
        ({"timestamp": datetime(2026, 1, 1)}, "timezone"),
    ],
)
def test_invalid_records_say_what_is_wrong(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        record(**overrides)


def test_failed_call_records_keep_the_error() -> None:
    failed = record(
        status=CallStatus.UPSTREAM_ERROR,
        response=None,
        error=ErrorInfo(type="upstream_http_error", message="502 from teacher", status_code=502),
        route=RouteDecision(target=UpstreamKind.SPECIALIST, reason=RouteReason.FALLBACK_INVALID_OUTPUT),
    )
    assert CallRecord.from_json(failed.to_json()) == failed


def test_specialist_upstream_needs_its_version() -> None:
    with pytest.raises(ValidationError, match="needs both 'specialist' and 'version'"):
        Upstream(kind=UpstreamKind.SPECIALIST, model="m", specialist="sql")
