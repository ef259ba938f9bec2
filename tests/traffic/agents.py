"""A customer-support agent written with real agent frameworks, and the questions it is asked.

The agent has two tools, ``lookup_order(order_id)`` and ``check_stock(sku)`` (plain Python
functions returning JSON), and answers questions such as "Where is my order A-1234?" (→
``lookup_order`` → final answer) or "Is SKU KB-77 in stock?" (→ ``check_stock`` → final
answer). Each variant below is that agent in one framework, run by the framework's own
agent loop against any OpenAI-compatible ``base_url`` (the gateway, or a teacher directly):

- ``openai-agents-chat`` (``-stream``): OpenAI Agents SDK ``Agent`` + ``Runner.run``
  (``Runner.run_streamed``) with ``OpenAIChatCompletionsModel``: chat completions;
- ``openai-agents-responses`` (``-stream``): the same with the SDK's default, a model name
  resolved by ``OpenAIProvider`` to its Responses model: the Responses API;
- ``langgraph`` (``-stream``): the LangGraph agent graph of ``langchain.agents.create_agent``
  (the successor of LangGraph's ``create_react_agent``) with ``ChatOpenAI``
  (``streaming=True``): chat completions;
- ``pydantic-ai`` (``-stream``): a pydantic-ai ``Agent`` with ``OpenAIChatModel`` (an
  ``event_stream_handler`` makes it stream): chat completions.

Framework telemetry is off: Agents SDK tracing disabled, LangSmith tracing disabled for the
runs, pydantic-ai not instrumented. Clients do not retry (``max_retries=0``), so every model
call the log shows was made exactly once.

``run_support_agent(variant, base_url, api_key, questions)`` runs the questions and returns
one :class:`AgentRun` each (answer, tools called, seconds, error), for tests and benchmarks;
``record_calls(variant, questions)`` also keeps the model calls made, to replay without the
framework.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

MODEL = "scripted-teacher"
SYSTEM_PROMPT = (
    "You are the customer-support agent of an online shop. Use lookup_order for questions about "
    "an order and check_stock for questions about a product's availability, then answer the "
    "customer in one or two sentences from the tool's result."
)
VARIANTS = (
    "openai-agents-chat",
    "openai-agents-chat-stream",
    "openai-agents-responses",
    "openai-agents-responses-stream",
    "langgraph",
    "langgraph-stream",
    "pydantic-ai",
    "pydantic-ai-stream",
)
RESPONSES_VARIANTS = frozenset({"openai-agents-responses", "openai-agents-responses-stream"})

# Framework telemetry off before any framework is imported (LangSmith reads these per call).
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"


# --- the tools --------------------------------------------------------------------------------

ORDER_ID = re.compile(r"[A-Z]-\d{4}")
STATUSES = ("shipped", "processing", "delivered", "shipped", "cancelled")
CARRIERS = ("UPS", "DHL", "FedEx")


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def lookup_order(order_id: str) -> str:
    """Look up an order by its id (like A-1234): its status, carrier and expected delivery date.

    Args:
        order_id: The order id, one letter, a dash and four digits, e.g. A-1234.
    """
    order_id = order_id.strip().upper()
    if not ORDER_ID.fullmatch(order_id):
        return json.dumps({"error": f"there is no order {order_id}"})
    h = _hash(order_id)
    status = STATUSES[h % len(STATUSES)]
    result: dict[str, Any] = {"order_id": order_id, "status": status}
    if status in ("shipped", "delivered"):
        result["carrier"] = CARRIERS[(h // 7) % len(CARRIERS)]
    if status in ("shipped", "processing"):
        result["eta"] = (date(2026, 12, 1) + timedelta(days=h % 14)).isoformat()
    return json.dumps(result)


def check_stock(sku: str) -> str:
    """Check how many units of a product SKU (like KB-77) the warehouse holds.

    Args:
        sku: The product SKU, letters, a dash and digits, e.g. KB-77.
    """
    sku = sku.strip().upper()
    h = _hash(sku)
    quantity = 0 if h % 5 == 0 else h % 120 + 1
    result: dict[str, Any] = {"sku": sku, "in_stock": quantity > 0, "quantity": quantity}
    if not quantity:
        result["restock_date"] = (date(2026, 12, 1) + timedelta(days=h % 21)).isoformat()
    return json.dumps(result)


TOOLS = (lookup_order, check_stock)


# --- the questions ----------------------------------------------------------------------------

Intent = Literal["order", "stock"]

ORDER_PHRASES = (
    "Where is my order {id}?",
    "Has order {id} shipped yet?",
    "Can you track order {id} for me?",
    "What's the status of order {id}?",
    "I placed order {id} last week. When will it arrive?",
    "hi, any news on my package? order number {id}",
    "Order {id}: where is it?",
)
STOCK_PHRASES = (
    "Is SKU {id} in stock?",
    "Do you have {id} available right now?",
    "How many units of {id} are left?",
    "Can I still buy product {id}?",
    "Check stock for SKU {id}, please.",
    "is {id} available? we need a few for the office",
)
SKU_PREFIXES = ("KB", "MS", "HD", "USB", "CAM", "LPT", "MON")


@dataclass(frozen=True)
class Question:
    text: str
    intent: Intent
    entity: str  # the order id or SKU in the text

    @property
    def tool(self) -> str:
        return "lookup_order" if self.intent == "order" else "check_stock"

    def expected_facts(self) -> tuple[str, ...]:
        """What a right answer states: the id and the status, or the SKU and its stock figure."""
        if self.intent == "order":
            return self.entity, json.loads(lookup_order(self.entity))["status"]
        stock = json.loads(check_stock(self.entity))
        return self.entity, f"{stock['quantity']} units" if stock["in_stock"] else "out of stock"


def questions(count: int, seed: int = 0) -> list[Question]:
    """``count`` support questions, both intents, varied phrasings and ids; the same for a seed."""
    rng = random.Random(seed)
    intents: list[Intent] = [("order", "stock")[i % 2] for i in range(count)]
    rng.shuffle(intents)  # as many of each (within one), in a seeded order
    made = []
    for intent in intents:
        if intent == "order":
            entity = f"{rng.choice('ABCDEFGHJKLMNPRSTW')}-{rng.randint(1000, 9999)}"
            phrase = rng.choice(ORDER_PHRASES)
        else:
            entity = f"{rng.choice(SKU_PREFIXES)}-{rng.randint(1, 999)}"
            phrase = rng.choice(STOCK_PHRASES)
        made.append(Question(phrase.format(id=entity), intent, entity))
    return made


# --- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentRun:
    variant: str
    question: Question
    answer: str | None
    tools: tuple[str, ...]  # the tools the agent called, in order
    seconds: float
    error: str | None = None

    @property
    def correct(self) -> bool:
        """Completed, called the right tool once, and answered with the facts of its result."""
        return (
            self.error is None
            and self.answer is not None
            and self.tools == (self.question.tool,)
            and all(fact in self.answer for fact in self.question.expected_facts())
        )


Ask = Callable[[str], Awaitable[tuple[str, tuple[str, ...]]]]


def run_support_agent(
    variant: str,
    base_url: str,
    api_key: str,
    questions: Sequence[Question],
    *,
    model: str = MODEL,
    app: str | None = None,
    concurrency: int = 1,
) -> list[AgentRun]:
    """Ask the support agent of ``variant`` each question through ``base_url``; one result each.

    ``app`` is sent as ``X-Protege-App``. Failures are results (``error``), not exceptions.
    """
    return asyncio.run(
        support_agent_runs(
            variant, base_url, api_key, questions, model=model, app=app, concurrency=concurrency
        )
    )


async def support_agent_runs(
    variant: str,
    base_url: str,
    api_key: str,
    questions: Sequence[Question],
    *,
    model: str = MODEL,
    app: str | None = None,
    concurrency: int = 1,
) -> list[AgentRun]:
    """:func:`run_support_agent` inside a running event loop."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown agent variant {variant!r}; one of {', '.join(VARIANTS)}")
    headers = {"X-Protege-App": app} if app else {}
    build = {
        "openai-agents": _openai_agents,
        "langgraph": _langgraph,
        "pydantic-ai": _pydantic_ai,
    }[variant.removesuffix("-stream").removesuffix("-chat").removesuffix("-responses")]
    ask, close = build(variant, base_url, api_key, model, headers)
    gate = asyncio.Semaphore(concurrency)

    async def one(question: Question) -> AgentRun:
        async with gate:
            started = time.perf_counter()
            try:
                answer, tools = await ask(question.text)
            except Exception as error:
                seconds = time.perf_counter() - started
                return AgentRun(variant, question, None, (), seconds, f"{type(error).__name__}: {error}")
            return AgentRun(variant, question, answer, tools, time.perf_counter() - started)

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        await close()


@dataclass(frozen=True)
class RecordedCall:
    """One model call an agent made: POST ``body`` to ``<base_url><path>`` to replay it."""

    path: str  # "/chat/completions" or "/responses"
    body: dict[str, Any]


def record_calls(
    variant: str, questions: Sequence[Question], *, concurrency: int = 1
) -> tuple[list[AgentRun], list[RecordedCall]]:
    """Run the agent against a scripted teacher of its own and keep every model call it made.

    The calls, in the order they were made, replay with plain HTTP (no framework) against any
    endpoint serving the model ``scripted-teacher``: a gateway in front of a scripted teacher.
    """
    from traffic.scripted_teacher import ScriptedTeacher

    with ScriptedTeacher() as teacher:
        runs = run_support_agent(variant, teacher.base_url, "sk-scripted", questions, concurrency=concurrency)
    return runs, [RecordedCall(s.path.removeprefix("/v1"), s.body) for s in teacher.served]


def _client(base_url: str, api_key: str, headers: dict[str, str]) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, default_headers=headers or None, max_retries=0)


def _openai_agents(
    variant: str, base_url: str, api_key: str, model: str, headers: dict[str, str]
) -> tuple[Ask, Callable[[], Awaitable[None]]]:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIProvider,
        RunConfig,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    client = _client(base_url, api_key, headers)
    if "-responses" in variant:  # the SDK's default: a model name, resolved to its Responses model
        agent_model: Any = model
        provider = OpenAIProvider(openai_client=client, use_responses=True)
        config = RunConfig(model_provider=provider, tracing_disabled=True)
    else:
        agent_model = OpenAIChatCompletionsModel(model=model, openai_client=client)
        config = RunConfig(tracing_disabled=True)
    agent = Agent(
        name="support",
        instructions=SYSTEM_PROMPT,
        tools=[function_tool(tool) for tool in TOOLS],
        model=agent_model,
    )

    async def ask(text: str) -> tuple[str, tuple[str, ...]]:
        if variant.endswith("-stream"):
            streamed = Runner.run_streamed(agent, text, run_config=config)
            async for _ in streamed.stream_events():
                pass
            result: Any = streamed
        else:
            result = await Runner.run(agent, text, run_config=config)
        tools = tuple(item.tool_name for item in result.new_items if item.type == "tool_call_item")
        return str(result.final_output), tools

    return ask, client.close


def _langgraph(
    variant: str, base_url: str, api_key: str, model: str, headers: dict[str, str]
) -> tuple[Ask, Callable[[], Awaitable[None]]]:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_openai import ChatOpenAI
    from langsmith import tracing_context
    from openai import DefaultAsyncHttpxClient

    streaming = variant.endswith("-stream")
    # Its own HTTP client: ChatOpenAI's default one is cached per process and bound to the
    # event loop of its first use, so a second run (a new loop) would find it closed.
    http = DefaultAsyncHttpxClient()
    llm = ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,
        http_async_client=http,
        default_headers=headers or None,
        max_retries=0,
        streaming=streaming,
        stream_usage=streaming,
        use_responses_api=False,
    )
    graph = create_agent(llm, tools=list(TOOLS), system_prompt=SYSTEM_PROMPT)

    async def ask(text: str) -> tuple[str, tuple[str, ...]]:
        with tracing_context(enabled=False):
            state = await graph.ainvoke({"messages": [{"role": "user", "content": text}]})
        messages = state["messages"]
        tools = tuple(call["name"] for m in messages if isinstance(m, AIMessage) for call in m.tool_calls)
        return messages[-1].text, tools

    return ask, http.aclose


def _pydantic_ai(
    variant: str, base_url: str, api_key: str, model: str, headers: dict[str, str]
) -> tuple[Ask, Callable[[], Awaitable[None]]]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = _client(base_url, api_key, headers)
    chat_model = OpenAIChatModel(model, provider=OpenAIProvider(openai_client=client))
    agent = Agent(chat_model, instructions=SYSTEM_PROMPT, tools=list(TOOLS))

    async def drain(_: Any, events: Any) -> None:
        async for _event in events:
            pass

    async def ask(text: str) -> tuple[str, tuple[str, ...]]:
        handler = drain if variant.endswith("-stream") else None
        result = await agent.run(text, event_stream_handler=handler)
        tools = tuple(
            part.tool_name
            for message in result.all_messages()
            if isinstance(message, ModelResponse)
            for part in message.parts
            if isinstance(part, ToolCallPart)
        )
        return result.output, tools

    return ask, client.close
