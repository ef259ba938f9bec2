"""Real framework agents keep completing their tasks when specialists answer their calls, step by step.

Framework agents (LangGraph, the OpenAI Agents SDK on chat completions and on the Responses
API, pydantic-ai) run the two-tool support agent through one gateway with routing on. Their
first calls go to the teacher and are logged; discovery runs on those records (redacted,
real MiniLM); a route per discovered task is written; the next runs are routed. The engine
behind the routes is the scripted teacher standing in for trained adapters (training itself
is covered by the training and flywheel tests): what is under test is that each call
reaches the specialist of its own step (the tool-call step's specialist never gets a final
step, and the reverse) and that the frameworks complete their runs with those answers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from traffic.agents import AgentRun, Question, questions, run_support_agent
from traffic.scripted_teacher import MODEL, ScriptedTeacher

from protege.api.calls import CallRecord, UpstreamKind
from protege.api.specialist import OutputKind
from protege.serving.router.table import RoutingTable, SpecialistRoute
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import save_registry
from protege.tasks.discovery import MiniLM, discover
from protege.tasks.examples import example_from_record
from protege.testing.plugin import RunningGateway, records_of

pytestmark = pytest.mark.slow

VARIANTS = ("langgraph", "openai-agents-chat", "openai-agents-responses", "pydantic-ai")
LEARN, ROUTED = 12, 8  # questions per framework before and after the routes exist


def assert_all_right(runs: list[AgentRun], asked: list[Question]) -> None:
    wrong = [r for r in runs if not r.correct]
    assert [r.question for r in runs] == asked and not wrong, wrong[:1]


def test_framework_agents_complete_with_specialists_answering_each_step(
    scripted_teacher: ScriptedTeacher, start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    table = tmp_path / "routes.json"
    engine = scripted_teacher.base_url.removesuffix("/v1")
    gateway = start_gateway(
        teacher_url=scripted_teacher.base_url,
        teacher={"model": MODEL},
        artifact_store=store.url,
        router={"enabled": True, "engine_url": engine, "table": str(table), "refresh_seconds": 0.05},
    )
    for index, variant in enumerate(VARIANTS):
        asked = questions(LEARN, seed=100 + index)
        assert_all_right(run_support_agent(variant, gateway.base_url, gateway.key, asked), asked)
    learned = 2 * LEARN * len(VARIANTS)
    records = [
        r for r in records_of(gateway.settings.nats_url, gateway.tenant, learned) if isinstance(r, CallRecord)
    ]
    assert len(records) == learned and all(r.route.target is UpstreamKind.TEACHER for r in records)

    registry = discover([example_from_record(r) for r in records], MiniLM())
    steps = Counter(t.router.fingerprint.step for t in registry.tasks)
    assert set(steps) == {"user:0", "tool:1"}, [t.name for t in registry.tasks]
    assert len(registry.tasks) <= 4 * len(VARIANTS)  # a handful per true task at most
    kind = {t.id: t.output_kind for t in registry.tasks}
    routes = [
        SpecialistRoute(specialist=f"s{i}-{t.name}"[:60], tenant=gateway.tenant, task_id=t.id, active="v1")
        for i, t in enumerate(registry.tasks)
    ]
    save_registry(store, registry)
    table.write_text(RoutingTable(routes=routes).model_dump_json())
    deadline = time.monotonic() + 30
    router = gateway.server.server.config.app.state.gateway.router
    while (len(router.table.routes), len(router.tasks)) != (len(routes), len(registry.tasks)):
        assert time.monotonic() < deadline, "the gateway never read the routes and the tasks"
        time.sleep(0.05)

    for index, variant in enumerate(VARIANTS):
        asked = questions(ROUTED, seed=200 + index)
        assert_all_right(run_support_agent(variant, gateway.base_url, gateway.key, asked), asked)
    every = records_of(gateway.settings.nats_url, gateway.tenant, learned + 2 * ROUTED * len(VARIANTS))
    routed = [r for r in every if isinstance(r, CallRecord) and r.id not in {x.id for x in records}]
    answered = [r for r in routed if r.route.target is UpstreamKind.SPECIALIST]
    assert len(answered) >= 0.9 * len(routed), Counter(str(r.route.reason) for r in routed)
    for record in answered:
        task_kind = kind[record.route.task_id or ""]
        final_step = record.request.messages[-1].role == "tool"
        assert (task_kind is OutputKind.TOOL_CALL) is not final_step, (record.route, final_step)
