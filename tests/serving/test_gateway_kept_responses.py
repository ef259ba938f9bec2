"""The responses a specialist answered, kept for the calls that continue them (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from protege.serving.gateway.kept_responses import KeptResponses


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answered(id: str, text: str = "ok", status: str = "completed") -> dict[str, Any]:
    message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    return {"id": id, "status": status, "output": [message]}


def test_a_continuation_gets_the_whole_conversation_in_front_and_no_previous_id() -> None:
    kept = KeptResponses(10_000, 60, Clock())
    kept.keep("acme", {"instructions": "Be brief.", "input": "hi"}, answered("resp_protege_1", "hello"))
    call = {
        "model": "m",
        "input": [{"role": "user", "content": "more"}],
        "previous_response_id": "resp_protege_1",
    }
    continued = kept.continued("acme", call)
    assert continued is not None and "previous_response_id" not in continued and continued["model"] == "m"
    assert [item.get("role") for item in continued["input"]] == ["user", "assistant", "user"]
    kept.keep("acme", continued, answered("resp_protege_2"))  # the chain goes on from the continued input
    third = kept.continued("acme", {"input": "and?", "previous_response_id": "resp_protege_2"})
    assert third is not None and len(third["input"]) == 5
    assert kept.continued("acme", {"input": "x", "previous_response_id": "resp_abc"}) is None  # the teacher's
    assert kept.continued("acme", {"input": "x"}) is None


def test_another_tenant_expired_evicted_and_unstored_responses_are_not_continued() -> None:
    clock = Clock()
    kept = KeptResponses(400, 60, clock)
    kept.keep("acme", {"input": "hi"}, answered("resp_protege_a"))
    with pytest.raises(LookupError, match="no longer keeps it"):
        kept.continued("globex", {"input": "x", "previous_response_id": "resp_protege_a"})
    kept.keep("acme", {"input": "hi", "store": False}, answered("resp_protege_b"))
    kept.keep("acme", {"input": "hi"}, answered("resp_protege_c", status="incomplete"))
    for name in ("b", "c"):
        with pytest.raises(LookupError):
            kept.continued("acme", {"input": "x", "previous_response_id": f"resp_protege_{name}"})
    for index in range(5):  # about 120 bytes each: the oldest go
        kept.keep("acme", {"input": f"call {index}"}, answered(f"resp_protege_{index}"))
    with pytest.raises(LookupError):
        kept.continued("acme", {"input": "x", "previous_response_id": "resp_protege_a"})
    assert kept.continued("acme", {"input": "x", "previous_response_id": "resp_protege_4"}) is not None
    clock.now = 61
    with pytest.raises(LookupError):
        kept.continued("acme", {"input": "x", "previous_response_id": "resp_protege_4"})
    off = KeptResponses(0, 60, clock)
    off.keep("acme", {"input": "hi"}, answered("resp_protege_z"))
    with pytest.raises(LookupError):
        off.continued("acme", {"input": "x", "previous_response_id": "resp_protege_z"})
