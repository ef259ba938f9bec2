"""Generated agent traffic of shapes the shipped workload does not have, with the true task of each call.

Four shapes real agents send (issue "Real agent traffic"), each a seeded generator of
answered calls, so discovery and the router can be scored against the truth:

- ``tool_retrieval``: a catalogue of 150 functions; each call offers the one it needs among
  a few others picked per call (tool retrieval, MCP servers that come and go).
- ``rag_templates``: two agents whose system prompts carry per-call context (today's date,
  the user's profile, retrieved passages) around fixed instructions.
- ``pii_prompts``: clinic assistants whose system prompts name the doctor (name, e-mail,
  phone), constant per assistant.
- ``tool_loop``: a support agent with one tool set on every call; a question leads to a
  tool call, the tool's result to the final answer (four true tasks: two tools, two answers).

Nothing here is shaped to Protégé's thresholds: sizes, phrasings and mixes are what such
agents plausibly send.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protege.api.calls import CallRecord, ChatRequest, ChatResponse, Latency

MODEL = "big-model"


@dataclass(frozen=True)
class ShapedCall:
    request: dict[str, Any]
    answer: dict[str, Any]
    task: str  # the true task

    def to_record(self, tenant: str = "acme", app: str = "agent") -> CallRecord:
        finish = "tool_calls" if self.answer.get("tool_calls") else "stop"
        return CallRecord(
            tenant=tenant,
            app=app,
            request=ChatRequest.model_validate(self.request),
            response=ChatResponse.model_validate(
                {"model": MODEL, "choices": [{"index": 0, "message": self.answer, "finish_reason": finish}]}
            ),
            latency=Latency(total_ms=300.0),
        )


def _tool(name: str, description: str, **properties: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {key: {"type": kind} for key, kind in properties.items()},
                "required": list(properties),
            },
        },
    }


def _call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


# --- tool retrieval over a catalogue ------------------------------------------------------------
_DOMAINS = ["crm", "billing", "calendar", "files", "hr", "inventory", "maps", "mail", "tickets", "wiki"]
_VERBS = ["get", "list", "create", "update", "delete", "search", "export", "archive", "sync", "share"]
_OBJECTS = ["record", "entry", "report", "item", "note", "folder", "user", "invoice", "task", "event"]
CITIES = ["Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Hanoi", "Perth", "Quebec", "Tunis"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD", "AUD", "SEK"]


def catalogue(size: int = 150) -> list[dict[str, Any]]:
    names = sorted({f"{d}_{v}_{o}" for d in _DOMAINS for v in _VERBS for o in _OBJECTS})
    picked = random.Random(7).sample(names, size - 3)
    return [
        _tool("get_weather", "Current weather for a city.", city="string"),
        _tool("convert_currency", "Convert an amount.", amount="number", source="string", target="string"),
        _tool("create_event", "Put an event on the calendar.", title="string", date="string"),
        *(_tool(name, f"{name.replace('_', ' ')}.", id="string") for name in picked),
    ]


def tool_retrieval(count: int, seed: int = 1) -> list[ShapedCall]:
    rng = random.Random(seed)
    tools = catalogue()
    by_name = {t["function"]["name"]: t for t in tools}
    system = "You are a workplace assistant. Use the tools you are given when they help."
    calls = []
    for i in range(count):
        kind = rng.choice(["get_weather", "convert_currency", "create_event"])
        if kind == "get_weather":
            city = rng.choice(CITIES)
            text = rng.choice(
                [f"What's the weather like in {city} right now?", f"Is it raining in {city}?",
                 f"temperature in {city} please", f"Should I bring a coat to {city} today?"]
            )  # fmt: skip
            arguments: dict[str, Any] = {"city": city}
        elif kind == "convert_currency":
            amount, source, target = rng.randint(5, 5000), *rng.sample(CURRENCIES, 2)
            text = rng.choice(
                [f"How much is {amount} {source} in {target}?", f"convert {amount} {source} to {target}",
                 f"I have {amount} {source}, what's that in {target}?"]
            )  # fmt: skip
            arguments = {"amount": amount, "source": source, "target": target}
        else:
            title = rng.choice(["team sync", "dentist", "budget review", "1:1 with Sam", "offsite planning"])
            day = rng.randint(1, 28)
            text = rng.choice(
                [f"Put '{title}' on my calendar for March {day}.", f"schedule {title} on 2027-03-{day:02d}",
                 f"Can you add {title} to the calendar, March {day}?"]
            )  # fmt: skip
            arguments = {"title": title, "date": f"2027-03-{day:02d}"}
        offered = [by_name[kind], *rng.sample(tools[3:], rng.randint(2, 7))]
        rng.shuffle(offered)
        calls.append(
            ShapedCall(
                {
                    "model": MODEL,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
                    "tools": offered,
                },
                _call(kind, arguments, f"call_{i}"),
                kind,
            )
        )
    return calls


# --- system prompts with per-call context -------------------------------------------------------
_PASSAGES = [
    f"Article {n}: {topic}"
    for n, topic in enumerate(
        [
            "Refunds are issued to the original payment method within 5 business days.",
            "Orders over 50 euros ship free within the EU.",
            "Gift cards cannot be exchanged for cash.",
            "Premium members can return items within 60 days instead of 30.",
            "Items marked final sale cannot be returned.",
            "Express delivery arrives the next business day if ordered before 2 pm.",
            "We ship to Norway and Switzerland with customs duties paid by the buyer.",
            "Damaged items must be reported within 48 hours with a photo.",
            "Price matching applies to identical items sold by major retailers.",
            "Loyalty points expire 12 months after they are earned.",
            "Orders can be changed until they are packed, usually within one hour.",
            "Bulky furniture is delivered by a partner carrier with a two-hour slot.",
            "Student discounts require a valid student card at checkout.",
            "Pre-ordered items are charged only when they ship.",
            "Our stores accept returns of online orders.",
            "Warranty claims for electronics go through the manufacturer after one year.",
        ],
        start=100,
    )
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "March", "June", "September", "November", "December"]
_FIRST = ["Amara", "Jonas", "Priya", "Mateo", "Ingrid", "Kwame", "Sofia", "Hiroshi", "Leila", "Tomasz"]
_LAST = ["Okafor", "Lindqvist", "Raman", "Herrera", "Solberg", "Mensah", "Rossi", "Tanaka", "Haddad", "Nowak"]
# Questions a customer asks, each with the passage (an index into _PASSAGES) that answers it.
_QUESTIONS = [
    ("Can I return a gift card?", 2), ("How long does a refund take?", 0),
    ("Do you ship to Norway?", 6), ("My parcel arrived broken, what now?", 7),
    ("Is shipping free for my order of 80 euros?", 1), ("Can I still change my order?", 10),
    ("When will I be charged for a pre-order?", 13), ("Do my loyalty points expire?", 9),
    ("Can I return something I bought online in a store?", 14), ("How fast is express delivery?", 5),
    ("I'm a premium member, how long do I have to return a jacket?", 3),
    ("The sofa I ordered, how is it delivered?", 11), ("Do you match prices from other shops?", 8),
    ("Is there a student discount?", 12), ("My laptop broke after 18 months, who fixes it?", 15),
    ("Can I return a final sale item?", 4),
]  # fmt: skip
_TICKET_PARTS = {
    "refund": (
        ["I want my money back for", "please refund", "refund request for", "I'd like a refund on"],
        ["order {n}", "the {item} from order {n}", "my {item}, it never worked", "the broken {item}"],
    ),
    "shipping": (
        ["where is", "still waiting for", "tracking shows nothing for", "no delivery yet of"],
        ["order {n}", "my {item}", "the parcel with my {item}", "order {n}, it is {d} days late"],
    ),
    "account": (
        ["I can't log in to", "please change the e-mail on", "how do I delete", "password reset fails for"],
        ["my account", "the account of order {n}", "my shop account", "my profile"],
    ),
}
_ITEMS = ["blender", "rain jacket", "desk lamp", "kettle", "backpack", "headphones", "tent", "coffee grinder"]


def _context(rng: random.Random, needed: int | None = None) -> tuple[str, str]:
    """Per-call context for a system prompt (today, the customer, three passages) and the customer's name."""
    first = rng.choice(_FIRST)
    name = f"{first} {rng.choice(_LAST)}"
    tier, since = rng.choice(["gold", "silver", "basic"]), rng.randint(2010, 2025)
    picked = rng.sample([p for i, p in enumerate(_PASSAGES) if i != needed], 2)
    if needed is not None:
        picked.insert(rng.randint(0, 2), _PASSAGES[needed])
    else:
        picked.append(rng.choice([p for p in _PASSAGES if p not in picked]))
    passages = "\n".join(picked)
    text = (
        f"Today is {rng.choice(_WEEKDAYS)}, {rng.choice(_MONTHS)} {rng.randint(1, 28)}, 2026.\n"
        f"Customer: {name}, {tier} member since {since}.\n"
        f"Relevant help-centre passages:\n{passages}"
    )
    return text, first


def rag_templates(count: int, seed: int = 2) -> list[ShapedCall]:
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        if rng.random() < 0.6:
            question, needed = rng.choice(_QUESTIONS)
            context, first = _context(rng, needed)
            system = (
                "You are Nimbus, the help-centre assistant of an online shop.\n"
                "Answer in two sentences at most, using only the passages below.\n"
                "If the passages do not answer the question, say you will hand over to a person.\n" + context
            )
            policy = _PASSAGES[needed].split(": ", 1)[1]
            greeting = rng.choice([f"Hi {first}!", f"Hello {first},", f"Thanks for asking, {first}."])
            answer = {"role": "assistant", "content": f"{greeting} {policy}"}
            task = "rag-answer"
        else:
            context, _ = _context(rng)
            system = (
                "Classify the customer's ticket as one of: refund, shipping, account.\n"
                "Reply with the label only.\n" + context
            )
            label = rng.choice(sorted(_TICKET_PARTS))
            opening, subject = (rng.choice(part) for part in _TICKET_PARTS[label])
            fill = {"n": rng.randint(1000, 9999), "item": rng.choice(_ITEMS), "d": rng.randint(2, 9)}
            question = f"{opening} {subject.format(**fill)}" + rng.choice(["", "?", ".", "!!", " please"])
            answer = {"role": "assistant", "content": label}
            task = "ticket-label"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        calls.append(ShapedCall({"model": MODEL, "messages": messages}, answer, task))
    return calls


# --- PII in system prompts ----------------------------------------------------------------------
_DOCTORS = [
    ("Maria Gonzalez", "maria.gonzalez@stlukes-clinic.example", "+1 415 555 0134"),
    ("Wei Chen", "wei.chen@stlukes-clinic.example", "+1 415 555 0178"),
    ("Oluwaseun Adeyemi", "o.adeyemi@stlukes-clinic.example", "+1 415 555 0199"),
]
# What patients write, composed from parts as their messages vary: (what, detail, ask) per label.
_TRIAGE = {
    "urgent": (
        ["I have chest pain", "my child has a fever of 40", "my father can't feel his left arm",
         "I cut my hand badly", "my wife is short of breath",
         "I have a severe headache and blurred vision"],
        ["since this morning", "for two hours", "and it is getting worse", "after a fall",
         "since last night"],
        ["what should I do?", "can the doctor see me now?", "please help", "is this an emergency?"],
    ),
    "routine": (
        ["I need a repeat prescription for my inhaler", "can I book my yearly check-up",
         "I'd like a flu shot", "I need a sick note for work", "can I get my blood test results",
         "I want to renew my blood pressure pills"],
        ["next week", "sometime in March", "when the doctor has time", "this month",
         "on a Friday if possible"],
        ["thanks", "is that possible?", "please let me know", "what times are free?"],
    ),
    "billing": (
        ["I was charged twice for my last visit", "my insurance did not cover the lab test",
         "the invoice shows a visit I never had", "I got a bill for a free vaccination",
         "can I pay my bill in instalments", "the amount on my statement looks wrong"],
        ["from January", "of 120 dollars", "for my son", "from the clinic in May", "on my card ending 4411"],
        ["who can I talk to?", "please check", "can you fix it?", "what do I do now?"],
    ),
}  # fmt: skip


def pii_prompts(count: int, seed: int = 3) -> list[ShapedCall]:
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        name, email, phone = rng.choice(_DOCTORS)
        system = (
            f"You are the scheduling assistant of Dr. {name} ({email}, {phone}).\n"
            "Triage the patient's message as urgent, routine or billing.\n"
            "Reply with the label only."
        )
        label = rng.choice(sorted(_TRIAGE))
        what, detail, ask = (rng.choice(part) for part in _TRIAGE[label])
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"{what} {detail}, {ask}"},
        ]
        calls.append(
            ShapedCall(
                {"model": MODEL, "messages": messages}, {"role": "assistant", "content": label}, "triage"
            )
        )
    return calls


# --- a tool loop with one tool set shared by several tasks --------------------------------------
SUPPORT_TOOLS = [
    _tool("lookup_order", "Status of an order.", order_id="string"),
    _tool("check_stock", "Units in stock of a product.", sku="string"),
    _tool("escalate", "Hand the conversation to a person.", reason="string"),
]
_ORDER_QUESTIONS = [
    "Where is my order {}?",
    "has order {} shipped yet",
    "Any news on {}?",
    "status of order {} please",
]
_STOCK_QUESTIONS = [
    "Is {} in stock?",
    "do you have {} available",
    "How many {} do you have left?",
    "can I buy {} today",
]
_STATES = ["shipped", "packed", "delivered", "delayed"]


def tool_loop(count: int, seed: int = 4) -> list[ShapedCall]:
    """Calls of a two-step support agent: the tool-call step and the final-answer step of each question."""
    rng = random.Random(seed)
    system = "You are the support agent of Acme Outdoor. Use the tools to answer; be brief."
    calls = []
    while len(calls) < count:
        n = len(calls)
        if rng.random() < 0.5:
            value = f"A-{rng.randint(1000, 9999)}"
            question, tool, argument = rng.choice(_ORDER_QUESTIONS).format(value), "lookup_order", "order_id"
            result = {"order_id": value, "status": rng.choice(_STATES)}
            final = f"Order {value} is {result['status']}."
        else:
            value = f"{rng.choice(['TENT', 'BOOT', 'PACK', 'LAMP'])}-{rng.randint(10, 99)}"
            question, tool, argument = rng.choice(_STOCK_QUESTIONS).format(value), "check_stock", "sku"
            result = {"sku": value, "units": rng.randint(0, 40)}
            final = f"We have {result['units']} units of {value} in stock."
        first = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        call = _call(tool, {argument: value}, f"call_{n}")
        calls.append(ShapedCall({"model": MODEL, "messages": first, "tools": SUPPORT_TOOLS}, call, tool))
        second = [*first, call, {"role": "tool", "tool_call_id": f"call_{n}", "content": json.dumps(result)}]
        calls.append(
            ShapedCall(
                {"model": MODEL, "messages": second, "tools": SUPPORT_TOOLS},
                {"role": "assistant", "content": final},
                f"answer-after-{tool}",
            )
        )
    return calls[:count]


SHAPES: dict[str, Callable[[int, int], list[ShapedCall]]] = {
    "tool_retrieval": tool_retrieval,
    "rag_templates": rag_templates,
    "pii_prompts": pii_prompts,
    "tool_loop": tool_loop,
}
