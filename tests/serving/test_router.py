"""The router's pure parts: version choice in rollouts, names, output checks, task matching."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from protege.api.calls import ChatRequest, RouteReason
from protege.api.specialist import FallbackSpec, OutputKind, OutputValidation
from protege.flywheel.policy import RolloutStage
from protege.serving.gateway.routing import caller_body
from protege.serving.router.checks import confidence, rejection
from protege.serving.router.classify import CallEmbeddings, RouterBusyError, TaskClassifier, request_structure
from protege.serving.router.table import (
    Candidate,
    RoutingTable,
    SpecialistRoute,
    UnknownAdapterError,
    choose,
    parse_adapter_name,
)
from protege.training.discovery.features import count_segments
from protege.training.discovery.tasks import Exemplar, Fingerprint, RouterProfile, Task

ROUTE = SpecialistRoute(specialist="intent", tenant="acme", task_id="t1", active="v1")


def test_canary_share_follows_the_draw_and_shadow_goes_alongside() -> None:
    canary = ROUTE.model_copy(
        update={"candidate": Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=10)}
    )
    assert choose(canary, 0.05) == choose(canary, 0.099) and choose(canary, 0.05).version == "v2"
    assert choose(canary, 0.10).version == "v1" and choose(canary, 0.10).reason is RouteReason.SPECIALIST
    shadow = ROUTE.model_copy(update={"candidate": Candidate(version="v2", stage=RolloutStage.SHADOW)})
    assert choose(shadow, 0.0).version == "v1" and choose(shadow, 0.0).shadow == "v2"
    first = SpecialistRoute(
        specialist="intent",
        tenant="acme",
        task_id="t1",
        candidate=Candidate(version="v1", stage=RolloutStage.SHADOW),
    )
    assert choose(first, 0.5).version is None and choose(first, 0.5).reason is RouteReason.SHADOW
    failed = canary.model_copy(update={"failed": ["v2"]})
    assert choose(failed, 0.0).version == "v1"  # a failed candidate gets no traffic
    assert choose(ROUTE.model_copy(update={"failed": ["v1"]}), 0.5).reason is RouteReason.NO_ACTIVE_SPECIALIST


def test_names_pin_versions_and_unknown_names_say_what_is_served() -> None:
    table = RoutingTable(
        routes=[ROUTE.model_copy(update={"candidate": Candidate(version="v2", stage=RolloutStage.SHADOW)})]
    )
    assert parse_adapter_name("intent@v2") == ("intent", "v2") and parse_adapter_name("intent") == (
        "intent",
        None,
    )
    assert table.pinned("intent", "acme")[1] == "v1" and table.pinned("intent@v2", "acme")[1] == "v2"
    with pytest.raises(UnknownAdapterError, match=r"no version 'v9' served; served: \['v1', 'v2'\]"):
        table.pinned("intent@v9", "acme")
    with pytest.raises(UnknownAdapterError, match="no specialist 'intent'"):
        table.pinned("intent", "other-tenant")  # tenants never see each other's specialists
    with pytest.raises(UnknownAdapterError, match="not a specialist name"):
        table.pinned("Intent@@", "acme")
    with pytest.raises(ValueError, match="already the active version"):
        ROUTE.model_copy(
            update={"candidate": Candidate(version="v1", stage=RolloutStage.SHADOW)}
        ).model_validate({**ROUTE.model_dump(), "candidate": {"version": "v1", "stage": "shadow"}})


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"required": ["order_id"]}}}]


@pytest.mark.parametrize(
    ("check", "message", "problem"),
    [
        (OutputValidation.JSON, {"content": '{"a": 1}'}, None),
        (OutputValidation.JSON, {"content": '```json\n{"a": 1}\n```'}, None),
        (OutputValidation.JSON, {"content": "sure! here it is"}, "not JSON"),
        (OutputValidation.TOOL_CALL, {"content": "lookup it"}, "no tool call"),
        (
            OutputValidation.TOOL_CALL,
            {"tool_calls": [{"function": {"name": "drop", "arguments": "{}"}}]},
            "not among the offered tools",
        ),
        (
            OutputValidation.TOOL_CALL,
            {"tool_calls": [{"function": {"name": "lookup", "arguments": "{"}}]},
            "not JSON",
        ),
        (
            OutputValidation.TOOL_CALL,
            {"tool_calls": [{"function": {"name": "lookup", "arguments": "{}"}}]},
            "lacks required arguments ['order_id']",
        ),
        (
            OutputValidation.TOOL_CALL,
            {"tool_calls": [{"function": {"name": "lookup", "arguments": '{"order_id": 4}'}}]},
            None,
        ),
        (OutputValidation.SQL, {"content": "SELECT name FROM customers WHERE id = 4"}, None),
        (OutputValidation.SQL, {"content": "SELEC name FROM customers"}, "not valid SQL"),
        (OutputValidation.SQL, {"content": "SELECT 1; DROP TABLE customers"}, "more than one SQL statement"),
    ],
)
def test_answers_are_checked_per_the_fallback_policy(
    check: OutputValidation, message: dict, problem: str | None
) -> None:  # type: ignore[type-arg]
    found = rejection(FallbackSpec(validate_output=check), message, TOOLS)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_json_schema_and_confidence() -> None:
    policy = FallbackSpec(
        validate_output=OutputValidation.JSON_SCHEMA,
        json_schema={"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
    )
    assert rejection(policy, {"content": '{"id": 3}'}, None) is None
    assert "at id: 'x' is not of type 'integer'" in (
        rejection(policy, {"content": '{"id": "x"}'}, None) or ""
    )
    choice = {"logprobs": {"content": [{"logprob": 0.0}, {"logprob": float(np.log(0.5))}]}}
    assert confidence(choice) == pytest.approx(0.75) and confidence({}) is None


COUNTS = {"acme": count_segments(["Label the intent.", "Help.", "Write SQL."] * 10, 10)}


def _task(task_id: str, system: str, centroid: list[float]) -> Task:
    structure = request_structure("acme", _request(system, "hello"), COUNTS["acme"])
    return Task(
        id=task_id,
        name=task_id,
        size=1,
        output_kind="label",
        example_ids=["x"],
        exemplars=[Exemplar(id="x", user_text="hi")],
        router=RouterProfile(
            fingerprint=Fingerprint.of(structure, OutputKind.LABEL),
            centroids=[centroid],
            threshold=0.8,
            embedding_model="fake",
        ),
        first_seen=datetime.now(UTC),
    )


def _request(system: str, user: str) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    )


class FakeEmbedder:
    name = "fake"

    def encode(self, texts: list[str]) -> np.ndarray:  # "refund" texts point one way, the rest the other
        return np.asarray([[1.0, 0.0] if "refund" in t else [0.0, 1.0] for t in texts], dtype=np.float32)


async def test_structure_decides_alone_and_embeddings_only_split_shared_prompts() -> None:
    unique = TaskClassifier([_task("labels", "Label the intent.", [1.0, 0.0])], COUNTS)
    assert not unique.needs_embeddings
    assert [
        t.id for t in unique.candidates("acme", _request("Label the   intent.", "where is order 12"))
    ] == ["labels"]
    assert unique.candidates("other", _request("Label the intent.", "x")) == []  # tenants never mix
    assert unique.candidates("acme", _request("Write SQL.", "x")) == []
    assert unique.candidates("acme", _request("A prompt never seen.", "x")) == []

    shared = [_task("refunds", "Help.", [1.0, 0.0]), _task("other", "Help.", [0.0, 1.0])]
    with pytest.raises(ValueError, match="rerun `protege tasks discover`"):
        TaskClassifier(shared, COUNTS, CallEmbeddings(OtherEmbedder()))
    classifier = TaskClassifier(shared, COUNTS, CallEmbeddings(FakeEmbedder()))
    assert classifier.needs_embeddings
    refund = await classifier.match("acme", _request("Help.", "I want a refund"))
    assert refund is not None and refund.task_id == "refunds" and refund.similarity == pytest.approx(1.0)
    candidates = classifier.candidates("acme", _request("Help.", "x"))
    assert classifier.closest(candidates, np.asarray([-1.0, 0.0], dtype=np.float32)) is None  # too far
    assert await TaskClassifier(shared, COUNTS).match("acme", _request("Help.", "x")) is None  # no embedder


class OtherEmbedder(FakeEmbedder):
    name = "minilm"


class SlowEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()

    def encode(self, texts: list[str]) -> np.ndarray:
        self.release.wait(5)
        self.calls += texts
        return super().encode(texts)


async def test_embeddings_are_made_off_the_loop_redacted_cached_and_bounded() -> None:
    slow = SlowEmbedder()
    embeddings = CallEmbeddings(slow, max_waiting=2)
    try:
        first = asyncio.ensure_future(embeddings.vector("refund for jane.doe@example.com"))
        second = asyncio.ensure_future(embeddings.vector("another text"))
        await asyncio.sleep(0.05)  # the loop runs while the worker thread waits
        with pytest.raises(RouterBusyError):
            await embeddings.vector("a third text")
        slow.release.set()
        assert list(await first) == [1.0, 0.0] and list(await second) == [0.0, 1.0]
        assert slow.calls[0] == "refund for <EMAIL_1>"  # embedded as discovery saw it
        await embeddings.vector("refund for jane.doe@example.com")
        assert len(slow.calls) == 2  # cached
    finally:
        embeddings.close()


def test_a_specialist_answer_reaches_streaming_callers_as_events() -> None:
    answer = {
        "id": "c1",
        "created": 1,
        "model": "intent@v1",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "x", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                    ],
                },
            }
        ],
    }
    assert json.loads(caller_body(answer, "gpt-x", False, False))["model"] == "gpt-x"
    events = caller_body(answer, "gpt-x", True, True).decode().split("\n\n")
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
    assert events[-2] == "data: [DONE]" and {c["model"] for c in chunks} == {"gpt-x"}
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert (
        chunks[1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[2]["usage"]["total_tokens"] == 5
    )
