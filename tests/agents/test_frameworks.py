"""Agents the project did not write: real framework agents through a real gateway and call log.

The OpenAI Agents SDK (chat completions and its default Responses API), LangGraph and
pydantic-ai each run the same two-tool support agent (tests/traffic/agents.py) in their own
agent loop against the scripted teacher (tests/traffic/scripted_teacher.py), through a
gateway that logs to a real NATS JetStream: every run must end with the right answer and
the log must hold every model call exactly once, in the shape of a tool-using conversation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from traffic.agents import (
    RESPONSES_VARIANTS,
    VARIANTS,
    AgentRun,
    Question,
    check_stock,
    lookup_order,
    questions,
    record_calls,
    run_support_agent,
)
from traffic.scripted_teacher import MODEL, ScriptedTeacher, ToolSpec, Turn, reply

from protege.api.calls import CallRecord, CallStatus, last_user_text
from protege.testing.plugin import RunningGateway, records_of

COUNT = 10  # questions per variant through the gateway

CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "description": "Units of a product in the warehouse.",
            "parameters": {
                "type": "object",
                "properties": {"sku": {"type": "string"}},
                "required": ["sku"],
            },
        },
    },
]
RESPONSES_TOOLS = [{"type": "function", **tool["function"]} for tool in CHAT_TOOLS]
SHIPPED = json.dumps({"order_id": "A-1234", "status": "shipped", "carrier": "UPS"})


def specs(tools: list[dict[str, Any]]) -> list[ToolSpec]:
    return [
        ToolSpec(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
        for t in tools
    ]


# --- the scripted teacher ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("Where is my order A-1234?", "lookup_order", {"order_id": "A-1234"}),
        ("Is SKU KB-77 in stock?", "check_stock", {"sku": "KB-77"}),
        ("do you have usb-12 available?", "check_stock", {"sku": "USB-12"}),
        ("has b-9911 shipped", "lookup_order", {"order_id": "B-9911"}),
    ],
)
def test_teacher_calls_the_tool_that_fits_the_text(text: str, tool: str, arguments: dict[str, str]) -> None:
    for offered in (CHAT_TOOLS, CHAT_TOOLS[::-1]):  # in whatever order the tools are offered
        [call] = reply([Turn("system", "Be helpful."), Turn("user", text)], specs(offered)).calls
        assert call.name == tool and json.loads(call.arguments) == arguments


def test_teacher_answers_from_tool_results_and_in_text_otherwise() -> None:
    tools = specs(CHAT_TOOLS)
    [call] = reply([Turn("user", "Where is my order A-1234?")], tools).calls
    turns = [Turn("user", "Where is my order A-1234?"), Turn("assistant", calls=(call,))]
    answered = reply([*turns, Turn("tool", SHIPPED, call_id=call.id)], tools)
    assert answered == reply([*turns, Turn("tool", SHIPPED, call_id=call.id)], tools)  # deterministic
    assert answered.text == "Order A-1234 has shipped. Carrier: UPS." and not answered.calls
    stock = json.dumps({"sku": "KB-77", "in_stock": False, "quantity": 0, "restock_date": "2026-12-09"})
    assert reply([Turn("tool", stock, call_id="x")], tools).text == (
        "SKU KB-77 is out of stock. Restock expected on 2026-12-09."
    )
    assert reply([Turn("user", "Where is my order A-1234?")], []).text == (
        "Scripted answer to: Where is my order A-1234?"
    )
    assert reply([Turn("user", "Where is my order A-1234?")], tools, "none").calls == ()
    assert reply([Turn("user", "Tell me a joke")], tools).calls == ()  # nothing fits
    assert reply([Turn("user", "Is KB-77 there?")], tools, "required").calls[0].name == "check_stock"
    forced = {"type": "function", "function": {"name": "lookup_order"}}
    assert reply([Turn("user", "Is SKU KB-77 in stock?")], tools, forced).calls == ()  # no order id


def test_questions_are_reproducible_and_varied() -> None:
    asked = questions(40, seed=3)
    assert asked == questions(40, seed=3) and asked != questions(40, seed=4)
    assert sum(q.intent == "order" for q in asked) == 20
    assert len({q.text.replace(q.entity, "{}") for q in asked}) >= 10
    assert len({q.entity for q in asked}) >= 35
    for question in asked:
        assert question.entity in question.text
        [call] = reply([Turn("user", question.text)], specs(CHAT_TOOLS)).calls
        assert call.name == question.tool


@pytest.mark.slow
def test_teacher_speaks_chat_completions(scripted_teacher: ScriptedTeacher) -> None:
    client = openai.OpenAI(base_url=scripted_teacher.base_url, api_key="none", max_retries=0)
    user = {"role": "user", "content": "Where is my order A-1234?"}
    first = client.chat.completions.create(model=MODEL, messages=[user], tools=CHAT_TOOLS)  # type: ignore[arg-type,list-item]
    [call] = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A-1234"}
    assert first.usage is not None and first.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[user],  # type: ignore[list-item]
            tools=CHAT_TOOLS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = [
        c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert streamed[0].id == call.id and streamed[0].function.name == "lookup_order"  # type: ignore[union-attr]
    assert "".join(d.function.arguments or "" for d in streamed) == call.function.arguments  # type: ignore[union-attr]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == first.usage.total_tokens
    follow_up = [
        user,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": SHIPPED},
    ]
    final = client.chat.completions.create(model=MODEL, messages=follow_up, tools=CHAT_TOOLS)  # type: ignore[arg-type]
    assert final.choices[0].message.content == "Order A-1234 has shipped. Carrier: UPS."
    assert final.choices[0].finish_reason == "stop"
    words = client.chat.completions.create(model=MODEL, messages=follow_up, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in words if c.choices)
    assert text == "Order A-1234 has shipped. Carrier: UPS."
    body = {"model": MODEL, "messages": [user], "tools": CHAT_TOOLS}
    url = scripted_teacher.base_url + "/chat/completions"
    assert httpx.post(url, json=body).content == httpx.post(url, json=body).content
    assert httpx.post(url, content=b"{nope").status_code == 400
    assert scripted_teacher.calls("/v1/chat/completions") == 6


@pytest.mark.slow
def test_teacher_speaks_the_responses_api(scripted_teacher: ScriptedTeacher) -> None:
    client = openai.OpenAI(base_url=scripted_teacher.base_url, api_key="none", max_retries=0)
    first = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input="Is SKU KB-77 in stock?",
        tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "check_stock"
    assert json.loads(call.arguments) == {"sku": "KB-77"}
    assert first.usage is not None and first.usage.total_tokens > 0
    stock = check_stock("KB-77")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": stock}
    final = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "Is SKU KB-77 in stock?"}, call.model_dump(), result],  # type: ignore[list-item]
        tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
    )
    facts = Question("Is SKU KB-77 in stock?", "stock", "KB-77").expected_facts()
    assert all(fact in final.output_text for fact in facts)
    chained = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
    )
    assert chained.output_text == final.output_text
    events = list(
        client.responses.create(
            model=MODEL, input="Where is my order A-1234?", tools=RESPONSES_TOOLS, stream=True
        )  # type: ignore[arg-type]
    )
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output[0].name == "lookup_order" and done.usage is not None  # type: ignore[union-attr]
    texts = client.responses.create(model=MODEL, input="Say hello", stream=True)
    delta = "".join(e.delta for e in texts if e.type == "response.output_text.delta")
    assert delta == "Scripted answer to: Say hello"


# --- real framework agents --------------------------------------------------------------------


def assert_all_right(runs: list[AgentRun], asked: list[Question]) -> None:
    assert [r.question for r in runs] == asked
    wrong = [r for r in runs if not r.correct]
    assert not wrong, f"{len(wrong)} of {len(runs)} runs went wrong, e.g. {wrong[0]}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_framework_agent_runs_against_the_teacher(
    scripted_teacher: ScriptedTeacher, variant: str
) -> None:
    asked = questions(4, seed=11)
    runs = run_support_agent(variant, scripted_teacher.base_url, "sk-none", asked)
    assert_all_right(runs, asked)
    path = "/v1/responses" if variant in RESPONSES_VARIANTS else "/v1/chat/completions"
    assert scripted_teacher.calls(path) == scripted_teacher.calls() == 2 * len(asked)
    streamed = {bool(s.body.get("stream")) for s in scripted_teacher.served}
    assert streamed == {variant.endswith("-stream")}


@pytest.mark.slow
def test_recorded_calls_replay_without_the_framework() -> None:
    asked = questions(3, seed=5)
    runs, calls = record_calls("pydantic-ai", asked)
    assert_all_right(runs, asked)
    assert [c.path for c in calls] == ["/chat/completions"] * 6
    with ScriptedTeacher() as teacher:
        replayed = [httpx.post(teacher.base_url + c.path, json=c.body).json() for c in calls]
    answers = [r["choices"][0]["message"]["content"] for r in replayed]
    assert answers[1::2] == [r.answer for r in runs] and answers[::2] == [None] * 3


def serves_responses(gateway: RunningGateway) -> bool:
    """Whether the gateway has a /v1/responses route (an empty body is refused, not logged)."""
    probe = httpx.post(
        gateway.base_url + "/responses", json={}, headers={"Authorization": f"Bearer {gateway.key}"}
    )
    return probe.status_code != 404


def user_text(record: CallRecord) -> str:
    return last_user_text([m.model_dump() for m in record.request.messages])


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_framework_agents_through_the_gateway_are_logged_once_per_call(
    scripted_teacher: ScriptedTeacher, start_gateway: Callable[..., RunningGateway], variant: str
) -> None:
    gateway = start_gateway(teacher_url=scripted_teacher.base_url, teacher={"model": MODEL})
    if variant in RESPONSES_VARIANTS and not serves_responses(gateway):
        pytest.skip("the gateway has no /v1/responses yet (the Agents SDK's default API)")
    asked = questions(COUNT, seed=VARIANTS.index(variant))
    app = f"agents-{variant}"
    runs = run_support_agent(variant, gateway.base_url, gateway.key, asked, app=app)
    assert_all_right(runs, asked)
    assert scripted_teacher.calls() == 2 * COUNT  # each run: the tool call, then the answer

    records = records_of(gateway.settings.nats_url, gateway.tenant, 2 * COUNT)
    assert len(records) == 2 * COUNT and len({r.id for r in records}) == 2 * COUNT
    assert all(isinstance(r, CallRecord) and r.status is CallStatus.OK and r.app == app for r in records)
    if variant in RESPONSES_VARIANTS:  # recorded in chat-completions shape, marked as Responses calls
        assert {str(getattr(r, "endpoint", None)) for r in records} == {"responses"}
    by_question: dict[str, list[CallRecord]] = {}
    for record in records:
        assert isinstance(record, CallRecord)
        by_question.setdefault(user_text(record), []).append(record)
    for run in runs:
        question = run.question
        first, second = sorted(by_question.pop(question.text), key=lambda r: len(r.request.messages))
        assert first.request.stream is second.request.stream is variant.endswith("-stream")
        # Step 1: the conversation ends with the user's question; the answer is a tool call.
        assert first.request.messages[-1].role == "user" and first.request.tools
        assert first.response is not None and first.response.finish_reason == "tool_calls"
        [call] = first.response.tool_calls
        argument = "order_id" if question.intent == "order" else "sku"
        assert call.function.name == question.tool
        assert json.loads(call.function.arguments) == {argument: question.entity}
        # Step 2: it ends with that call's result; the answer is the text the agent returned.
        tool_result = second.request.messages[-1]
        assert tool_result.role == "tool" and tool_result.tool_call_id == call.id
        tool = lookup_order if question.intent == "order" else check_stock
        assert json.loads(str(tool_result.content)) == json.loads(tool(question.entity))
        assert second.response is not None and second.response.finish_reason == "stop"
        assert not second.response.tool_calls and second.response.content == run.answer
    assert not by_question, f"records of no question asked: {list(by_question)}"
