"""The router's pure parts: version choice in rollouts, names, output checks, task matching."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protege.api.calls import ChatRequest, RouteReason
from protege.api.routes import RolloutStage
from protege.api.specialist import (
    ConfidenceCheck,
    ConfidenceSignal,
    FallbackSpec,
    OutputKind,
    OutputValidation,
)
from protege.config import Settings
from protege.evaluation.calibration import signal_value
from protege.serving.gateway.routing import caller_body
from protege.serving.router.checks import confidence_rule, rejection, token_logprobs
from protege.serving.router.classify import (
    CallEmbeddings,
    RouterBusyError,
    TaskClassifier,
    TaskMatch,
    request_structure,
)
from protege.serving.router.router import Router
from protege.serving.router.table import (
    Candidate,
    RoutingTable,
    SpecialistRoute,
    UnknownAdapterError,
    choose,
    conversation_draw,
    conversation_key,
    parse_adapter_name,
)
from protege.tasks.discovery.features import count_segments
from protege.tasks.discovery.tasks import Exemplar, Fingerprint, RouterProfile, Task

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


CANARY_30 = ROUTE.model_copy(
    update={"candidate": Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=30)}
)


def _turns(system: str, first: str, **fields: Any) -> list[ChatRequest]:
    """The requests of one agent conversation, turn by turn: each carries the whole history."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
    ]
    turns = []
    for step in range(4):
        turns.append(ChatRequest.model_validate({"model": "m", "messages": list(messages), **fields}))
        call = {"id": f"c{step}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{step}", "content": f"result {step}"},
            {"role": "user", "content": f"and then {step}?"},
        ]
    return turns


class OneTask:
    async def match(self, tenant: str, request: ChatRequest) -> TaskMatch:
        return TaskMatch("t1", None)


def _canary_router(tmp_path: Path) -> Router:
    router = Router(Settings(home=tmp_path, router={"enabled": True, "engine_url": "http://127.0.0.1:9"}))
    router.classifier = OneTask()  # type: ignore[assignment]
    router.table = RoutingTable(routes=[CANARY_30])
    return router


async def test_every_turn_of_a_conversation_meets_the_same_version(tmp_path: Path) -> None:
    router, replica = _canary_router(tmp_path / "a"), _canary_router(tmp_path / "b")
    seen = []
    for number in range(40):
        versions = {
            (await gateway.plan("acme", turn)).choice.version
            for turn in _turns("Label the intent.", f"where is order {number}?")
            for gateway in (router, replica)  # another gateway replica draws alike
        }
        assert len(versions) == 1, f"conversation {number} met {versions}"
        seen += versions
    assert set(seen) == {"v1", "v2"}  # yet the canary gets its share of conversations
    # A caller's own conversation id decides over the text: two turns that open differently agree.
    headed = [
        (await router.plan("acme", turn, "conv-7")).choice.version
        for turn in _turns("Label it.", "one") + _turns("Label it.", "two")
    ]
    assert len(set(headed)) == 1


def test_a_canary_gets_its_share_of_conversations() -> None:
    openings = [
        conversation_key(_turns("You are a support agent.", f"my parcel {n} is late")[0]) for n in range(2000)
    ]
    share = sum(choose(CANARY_30, conversation_draw(CANARY_30, key)).version == "v2" for key in openings)
    assert 0.27 * 2000 <= share <= 0.33 * 2000
    ids = sum(
        choose(CANARY_30, conversation_draw(CANARY_30, f"header:{n}")).version == "v2" for n in range(2000)
    )
    assert 0.27 * 2000 <= ids <= 0.33 * 2000
    # the conversations a 10 % step holds stay in the canary at 30 %
    ten = CANARY_30.model_copy(
        update={"candidate": Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=10)}
    )
    at_ten = {key for key in openings if choose(ten, conversation_draw(ten, key)).version == "v2"}
    assert at_ten and all(
        choose(CANARY_30, conversation_draw(CANARY_30, key)).version == "v2" for key in at_ten
    )
    # stable across replicas and restarts: a function of the key, the specialist and the candidate only
    assert conversation_draw(CANARY_30, "header:conv-1") == 0.6356771035398856
    other = CANARY_30.model_copy(update={"candidate": Candidate(version="v3", stage=RolloutStage.CANARY)})
    assert conversation_draw(other, "header:conv-1") != conversation_draw(CANARY_30, "header:conv-1")


def test_the_conversation_key_prefers_what_the_caller_named() -> None:
    first, later = _turns("Sys.", "hello")[0], _turns("Sys.", "hello")[3]
    assert conversation_key(first) == conversation_key(later)  # later turns repeat the opening
    assert conversation_key(first) != conversation_key(_turns("Other sys.", "hello")[0])
    assert conversation_key(first) != conversation_key(_turns("Sys.", "hello!")[0])
    named = _turns("Sys.", "hello", user="u1", safety_identifier="s1", prompt_cache_key="p1")[0]
    assert conversation_key(named, "h1") == "header:h1"
    assert conversation_key(named) == "user:u1"
    assert conversation_key(_turns("Sys.", "x", safety_identifier="s1", prompt_cache_key="p1")[0]) == (
        "safety_identifier:s1"
    )
    assert conversation_key(_turns("Sys.", "x", prompt_cache_key="p1")[0]) == "prompt_cache_key:p1"


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
    assert signal_value(ConfidenceSignal.MEAN, token_logprobs(choice)) == pytest.approx(0.75)
    assert token_logprobs({}) == [] and signal_value(ConfidenceSignal.MEAN, []) is None


def test_the_confidence_rule_is_the_fixed_bar_else_the_versions_calibrated_check() -> None:
    check = ConfidenceCheck(
        signal=ConfidenceSignal.MINIMUM,
        threshold=0.3,
        precision=0.9,
        recall=0.6,
        fallback_rate=0.05,
        examples=50,
        disagreements=5,
    )

    def rule(version: str, **fallback: Any) -> tuple[ConfidenceSignal, float] | None:
        route = SpecialistRoute(
            specialist="s",
            tenant="acme",
            task_id="t",
            active="v1",
            fallback=FallbackSpec(**fallback),
            confidence_checks={"v1": check},
        )
        found = confidence_rule(route, version)
        return None if found is None else (found.signal, found.threshold)

    assert rule("v1") == (ConfidenceSignal.MINIMUM, 0.3)
    assert rule("v2") is None  # a version whose training found no check
    assert rule("v1", min_confidence=0.7) == rule("v2", min_confidence=0.7) == (ConfidenceSignal.MEAN, 0.7)
    assert rule("v1", calibrated_confidence=False) is None


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


class MissingEmbedder(FakeEmbedder):
    def encode(self, texts: list[str]) -> np.ndarray:
        raise ModuleNotFoundError("No module named 'sentence_transformers'")


async def test_a_gateway_without_the_embedding_model_sends_such_calls_to_the_teacher(tmp_path: Path) -> None:
    """The serving image needs no sentence-transformers: a call that needs an embedding is the teacher's."""
    shared = [_task("refunds", "Help.", [1.0, 0.0]), _task("other", "Help.", [0.0, 1.0])]
    classifier = TaskClassifier(shared, COUNTS, CallEmbeddings(MissingEmbedder()))
    with pytest.raises(RouterBusyError, match="the embedder failed: ModuleNotFoundError"):
        await classifier.match("acme", _request("Help.", "I want a refund"))
    router = Router(Settings(home=tmp_path, router={"enabled": True, "engine_url": "http://127.0.0.1:9"}))
    router.classifier = classifier
    plan = await router.plan("acme", _request("Help.", "I want a refund"))
    assert plan.route is None and plan.choice.reason is RouteReason.ROUTER_BUSY


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
