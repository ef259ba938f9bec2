"""A realistic multi-task agent workload, generated deterministically (no downloads).

The agent is an order-desk assistant built like the query-writer agent of the paper's
discussion: it classifies what a customer wants, extracts order details to JSON, books
flights through a tool, writes SQLite queries over a shipped schema, and fixes queries
from an error message. Each call carries the system prompt, tools and response format
that agent would send, user messages in varied phrasing (several styles, so a drift can
be simulated by switching style), and the big model's answer — the teacher recording.
A held-out share of the calls is marked and never used for training.

Two families share one system prompt on purpose (SQL writing and SQL fixing, as one
"SQL expert" prompt would serve both): task discovery must tell them apart by content.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protege.api.calls import CallRecord, ChatRequest, ChatResponse, Latency, Usage
from protege.workload.schema import SCHEMA_SQL

TEACHER_MODEL = "teacher"


@dataclass(frozen=True)
class WorkloadCall:
    """One agent call: the OpenAI request body and the teacher's recorded answer."""

    task: str  # the true task family, for measuring discovery (never sent to the gateway)
    request: dict[str, Any]
    answer: dict[str, Any]  # the assistant message: {"role", "content"} or {"role", "tool_calls"}
    heldout: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(self.request, sort_keys=True).encode()).hexdigest()[:16]

    def to_record(self, tenant: str = "demo", app: str = "order-desk") -> CallRecord:
        """The call as the gateway would have logged it (the teacher answered)."""
        content = self.answer.get("content")
        finish = "tool_calls" if self.answer.get("tool_calls") else "stop"
        completion = len(json.dumps(self.answer).split())
        prompt = sum(len(str(m.get("content", "")).split()) for m in self.request["messages"])
        return CallRecord(
            tenant=tenant,
            app=app,
            request=ChatRequest.model_validate(self.request),
            response=ChatResponse.model_validate(
                {
                    "id": f"chatcmpl-{self.id}",
                    "model": TEACHER_MODEL,
                    "choices": [
                        {"index": 0, "message": {**self.answer, "content": content}, "finish_reason": finish}
                    ],
                }
            ),
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
            latency=Latency(total_ms=400.0),
        )


# --- vocabulary ---------------------------------------------------------------------------
CITIES = [
    "Paris",
    "Berlin",
    "Lyon",
    "Madrid",
    "Rome",
    "Vienna",
    "Prague",
    "Lisbon",
    "Dublin",
    "Oslo",
    "Warsaw",
]
PRODUCTS = [
    "blue mug",
    "desk lamp",
    "yoga mat",
    "water bottle",
    "notebook",
    "phone case",
    "backpack",
    "tea kettle",
]
NAMES = ["Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam"]
INTENTS = {
    "cancel_order": [
        "please cancel my order {order}",
        "I don't want order {order} anymore, cancel it",
        "can you stop order {order} before it ships?",
        "cancel {order} asap",
        "I changed my mind about order {order}, please call it off",
    ],
    "track_order": [
        "where is my order {order}?",
        "has order {order} shipped yet?",
        "tracking for {order} please",
        "when will {order} arrive?",
        "what's the delivery status of order {order}",
    ],
    "refund_request": [
        "I want my money back for order {order}",
        "the {product} in order {order} arrived broken, refund please",
        "how do I get a refund for {order}?",
        "please refund order {order}, it was wrong",
        "return and refund the {product} from {order}",
    ],
    "change_address": [
        "ship order {order} to {city} instead",
        "I moved to {city}, update the address on {order}",
        "change the delivery address for {order} to my {city} flat",
        "can {order} go to my office in {city}?",
        "new address for order {order}: {city} city centre",
    ],
    "product_question": [
        "is the {product} dishwasher safe?",
        "what size is the {product}?",
        "does the {product} come in other colours?",
        "how heavy is the {product}?",
        "is the {product} in stock in {city}?",
    ],
}


def _plain(text: str) -> str:
    return text[0].upper() + text[1:]


def _terse(text: str) -> str:
    return text.rstrip("?.!")


def _polite(text: str) -> str:
    return f"Hello! {_plain(text)} Thank you so much."


# Phrasing styles; a new style in later traffic is the simplest drift.
STYLES: dict[str, Callable[[str], str]] = {"plain": _plain, "terse": _terse, "polite": _polite}
INTENT_PROMPT = (
    "You are the intent router of an online shop's order desk. Classify the customer's message "
    "into exactly one of: cancel_order, track_order, refund_request, change_address, "
    "product_question. Answer with the label only."
)
EXTRACT_PROMPT = (
    "You extract order details from customer emails for the fulfilment system. Return a JSON "
    'object with keys "name" (string), "product" (string), "quantity" (integer) and "city" '
    "(string). Use null for anything the email does not say."
)
EXTRACT_TEMPLATES = [
    "Hi, this is {name} from {city}. I'd like to order {qty} {product}s please.",
    "{name} here - please send {qty} x {product} to {city}.",
    "Order request: {qty} {product}s, deliver to {city}. Thanks, {name}",
    "Could I get {qty} of the {product}? I'm in {city}. - {name}",
    "Dear shop, {name} in {city} wants {qty} {product}s.",
]
FLIGHT_PROMPT = (
    "You are the travel desk of a company. Book travel by calling the tools; never answer in prose."
)
FLIGHT_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Search flights between two cities on a date.",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": {"type": "string"},
                    "destination": {"type": "string"},
                    "date": {"type": "string", "description": "YYYY-MM-DD"},
                    "passengers": {"type": "integer"},
                },
                "required": ["origin", "destination", "date"],
            },
        },
    }
]
# The agent's next release: search_flights also needs the cabin class (a drift in its tools).
CABINS = ("economy", "premium", "business")
FLIGHT_TOOLS_V2: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            **FLIGHT_TOOLS[0]["function"],
            "parameters": {
                "type": "object",
                "properties": {
                    **FLIGHT_TOOLS[0]["function"]["parameters"]["properties"],
                    "cabin": {"type": "string", "enum": list(CABINS)},
                },
                "required": ["origin", "destination", "date", "cabin"],
            },
        },
    }
]
FLIGHT_TEMPLATES = [
    "Find me a flight from {a} to {b} on {date}",
    "I need to fly {a} -> {b}, {date}, {n} people",
    "Book {n} seats {a} to {b} for {date}",
    "any flights from {a} to {b} on {date}?",
    "We are {n} travelling from {a} to {b} on {date}, what is available",
]
SQL_PROMPT = (
    "You are a SQLite expert for the shop's analytics database. Answer with one SQLite query "
    "and nothing else.\n\nSchema:\n" + SCHEMA_SQL
)
SQL_QUESTIONS: list[tuple[str, str]] = [
    ("How many orders were placed in {city}?",
     "SELECT COUNT(*) FROM orders JOIN customers ON customers.id = orders.customer_id "
     "WHERE customers.city = '{city}';"),
    ("What is the total revenue from {city} customers?",
     "SELECT SUM(orders.total) FROM orders JOIN customers ON customers.id = orders.customer_id "
     "WHERE customers.city = '{city}';"),
    ("List the names of customers in {city}.",
     "SELECT name FROM customers WHERE city = '{city}';"),
    ("How many {product}s have been sold?",
     "SELECT SUM(order_items.quantity) FROM order_items "
     "JOIN products ON products.id = order_items.product_id WHERE products.name = '{product}';"),
    ("What is the average order total for customers in {city}?",
     "SELECT AVG(orders.total) FROM orders JOIN customers ON customers.id = orders.customer_id "
     "WHERE customers.city = '{city}';"),
    ("Which product has the highest price?",
     "SELECT name FROM products ORDER BY price DESC LIMIT 1;"),
    ("How many orders have status '{status}'?",
     "SELECT COUNT(*) FROM orders WHERE status = '{status}';"),
]  # fmt: skip
SQL_FIX_TEMPLATES: list[tuple[str, str, str]] = [
    ("SELECT COUNT(*) FROM order WHERE status = '{status}';", 'near "order": syntax error',
     "SELECT COUNT(*) FROM orders WHERE status = '{status}';"),
    ("SELECT name FROM customer WHERE city = '{city}';", "no such table: customer",
     "SELECT name FROM customers WHERE city = '{city}';"),
    ("SELECT SUM(totals) FROM orders;", "no such column: totals",
     "SELECT SUM(total) FROM orders;"),
    ("SELECT name, FROM products WHERE price > 10;", 'near "FROM": syntax error',
     "SELECT name FROM products WHERE price > 10;"),
    ("SELECT city COUNT(*) FROM customers GROUP BY city;", 'near "COUNT": syntax error',
     "SELECT city, COUNT(*) FROM customers GROUP BY city;"),
]  # fmt: skip
SQL_FIX_PHRASES = [
    "This query fails with the error `{error}`:\n{query}\nPlease fix it.",
    "Fix this SQL. Error: {error}\n\n{query}",
    "My query\n{query}\nthrows: {error}. What is the corrected query?",
]
STATUSES = ["pending", "shipped", "delivered", "cancelled"]


def _order(rng: random.Random) -> str:
    return f"#{rng.randint(10000, 99999)}"


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _system(prompt: str) -> dict[str, str]:
    return {"role": "system", "content": prompt}


def _intent(rng: random.Random, style: str) -> WorkloadCall:
    label = rng.choice(list(INTENTS))
    text = rng.choice(INTENTS[label]).format(
        order=_order(rng), product=rng.choice(PRODUCTS), city=rng.choice(CITIES)
    )
    request = {
        "model": TEACHER_MODEL,
        "messages": [_system(INTENT_PROMPT), {"role": "user", "content": STYLES[style](text)}],
    }
    return WorkloadCall("intent", request, {"role": "assistant", "content": label}, meta={"label": label})


def _extract(rng: random.Random, style: str) -> WorkloadCall:
    fields = {
        "name": rng.choice(NAMES),
        "product": rng.choice(PRODUCTS),
        "quantity": rng.randint(1, 9),
        "city": rng.choice(CITIES),
    }
    text = rng.choice(EXTRACT_TEMPLATES).format(qty=fields["quantity"], **fields)
    request = {
        "model": TEACHER_MODEL,
        "messages": [_system(EXTRACT_PROMPT), {"role": "user", "content": STYLES[style](text)}],
        "response_format": {"type": "json_object"},
    }
    return WorkloadCall("extract", request, {"role": "assistant", "content": json.dumps(fields)}, meta=fields)


def _flight(rng: random.Random, style: str, cabin: bool = False) -> WorkloadCall:
    origin, destination = rng.sample(CITIES, 2)
    arguments: dict[str, Any] = {"origin": origin, "destination": destination, "date": _date(rng)}
    template = rng.choice(FLIGHT_TEMPLATES)
    if "{n}" in template:  # the teacher passes what the user said, and nothing it did not
        arguments["passengers"] = rng.randint(1, 4)
    text = template.format(a=origin, b=destination, date=arguments["date"], n=arguments.get("passengers"))
    if cabin:
        arguments["cabin"] = rng.choice(CABINS)
        text += f", {arguments['cabin']} class"
    request = {
        "model": TEACHER_MODEL,
        "messages": [_system(FLIGHT_PROMPT), {"role": "user", "content": STYLES[style](text)}],
        "tools": FLIGHT_TOOLS_V2 if cabin else FLIGHT_TOOLS,
        "tool_choice": "auto",
    }
    call = {"id": f"call_{rng.randint(0, 1 << 30):x}", "type": "function",
            "function": {"name": "search_flights", "arguments": json.dumps(arguments)}}  # fmt: skip
    return WorkloadCall(
        "tool", request, {"role": "assistant", "content": None, "tool_calls": [call]}, meta=arguments
    )


def _sql(rng: random.Random, style: str) -> WorkloadCall:
    question, query = rng.choice(SQL_QUESTIONS)
    values = {"city": rng.choice(CITIES), "product": rng.choice(PRODUCTS), "status": rng.choice(STATUSES)}
    request = {
        "model": TEACHER_MODEL,
        "messages": [
            _system(SQL_PROMPT),
            {"role": "user", "content": STYLES[style](question.format(**values))},
        ],
    }
    return WorkloadCall("sql", request, {"role": "assistant", "content": query.format(**values)})


def _sql_fix(rng: random.Random, style: str) -> WorkloadCall:
    broken, error, fixed = rng.choice(SQL_FIX_TEMPLATES)
    values = {"city": rng.choice(CITIES), "status": rng.choice(STATUSES)}
    text = rng.choice(SQL_FIX_PHRASES).format(error=error, query=broken.format(**values))
    request = {
        "model": TEACHER_MODEL,
        "messages": [_system(SQL_PROMPT), {"role": "user", "content": STYLES[style](text)}],
    }
    return WorkloadCall("sqlfix", request, {"role": "assistant", "content": fixed.format(**values)})


FAMILIES: dict[str, Callable[[random.Random, str], WorkloadCall]] = {
    "intent": _intent,
    "extract": _extract,
    "tool": _flight,
    "sql": _sql,
    "sqlfix": _sql_fix,
}
# What a family's calls look like after the agent's next release (``generate(drifted=True)``).
DRIFTED: dict[str, Callable[[random.Random, str], WorkloadCall]] = {
    "tool": lambda rng, style: _flight(rng, style, cabin=True),
}


def generate(
    count: int,
    *,
    seed: int = 7,
    families: tuple[str, ...] = tuple(FAMILIES),
    styles: tuple[str, ...] = ("plain", "terse"),
    heldout_share: float = 0.2,
    drifted: bool = False,
) -> list[WorkloadCall]:
    """``count`` calls spread evenly over ``families``; the same arguments give the same calls.

    ``drifted``: the calls of the agent's next release where it changed (``DRIFTED``: the
    flight tool gains a required ``cabin`` argument).
    """
    unknown = set(families) - set(FAMILIES) or set(styles) - set(STYLES)
    if unknown:
        raise ValueError(
            f"unknown families or styles {sorted(unknown)}; "
            f"choose from {sorted(FAMILIES)} and {sorted(STYLES)}"
        )
    rng = random.Random(seed)
    calls = []
    for index in range(count):
        family = families[index % len(families)]
        make = DRIFTED.get(family, FAMILIES[family]) if drifted else FAMILIES[family]
        call = make(rng, rng.choice(styles))
        heldout = rng.random() < heldout_share
        calls.append(
            WorkloadCall(call.task, call.request, call.answer, heldout, {**call.meta, "style": styles})
        )
    rng.shuffle(calls)
    return calls


def recorded_workload(count: int, seed: int = 7) -> list[WorkloadCall]:
    """Every call a replay of up to ``count`` calls with this seed can make, and the drifted
    calls of the next release (seed + 1): what the recorded teacher is given."""
    return generate(count, seed=seed) + generate(count, seed=seed + 1, drifted=True)
