"""Realistic stand-ins for placeholders wherever a model reads the data: training, evaluation, probes.

Stored data keeps placeholders (``<PERSON_1>``): nothing a person wrote is kept, and task
discovery and the router see one skeleton for every customer. A model trained on them,
though, learns to write ``<PERSON_1>`` — and in serving it reads real names, never
placeholders, so a task whose answer copies a name from the prompt (extraction, a reply
that greets the customer) answers worse or with a placeholder. Each row read for a model
therefore has every placeholder replaced by a fake value of its type: the same value
wherever the placeholder appears in the row, a different one for each placeholder, drawn
from Faker's locales seeded by the row's id, so a row reads the same every time. A fake name
has as many words as the name it stands for had (the row's ``name_words``): trained on
two-word fakes in place of the demo's one-word names, its extraction specialist answered
"Hugo here" and "Ines from Prague" as names (8 of 182 live calls). Tool-call arguments stay
valid JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from protege.pii.detectors import PiiType
from protege.pii.redactor import PLACEHOLDER

# Names and addresses from several locales, as an agent's customers are; the rest in en_US.
_LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pl_PL", "nl_NL"]


def _person(fake: Any, words: int) -> str:
    """A fake name of ``words`` words: a first name, middle names, a last name (hyphenated into one)."""
    first = fake.first_name().split()[0]
    if words <= 1:
        return str(first)
    middle = [fake.first_name().split()[0] for _ in range(words - 2)]
    return " ".join([first, *middle, fake.last_name().replace(" ", "-")])


_DRAWS: dict[PiiType, Callable[[Any], str]] = {
    PiiType.PRIVATE_KEY: lambda f: f"-----BEGIN PRIVATE KEY----- {f.sha256()} -----END PRIVATE KEY-----",
    PiiType.URL_CREDENTIALS: lambda f: (
        f"https://{f['en_US'].user_name()}:{f.sha1()[:12]}@{f['en_US'].domain_name()}"
    ),
    PiiType.API_KEY: lambda f: f"sk-{f.sha1()}",
    PiiType.EMAIL: lambda f: f.email(),
    PiiType.IBAN: lambda f: f.iban(),
    PiiType.CREDIT_CARD: lambda f: f["en_US"].credit_card_number(),
    PiiType.US_SSN: lambda f: f["en_US"].ssn(),
    PiiType.NATIONAL_ID: lambda f: f["en_GB"].ssn(),  # a UK National Insurance number
    PiiType.PASSPORT: lambda f: f["en_US"].passport_number(),
    PiiType.DATE_OF_BIRTH: lambda f: f.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
    PiiType.PHONE: lambda f: f.phone_number(),
    PiiType.IP_ADDRESS: lambda f: f["en_US"].ipv4_public(),
    PiiType.ADDRESS: lambda f: f.address(),
}
DEFAULT_NAME_WORDS = 2  # a row that does not say how long its names were (datasets before it did)


@cache
def _faker() -> Any:
    from faker import Faker

    return Faker(_LOCALES)


def with_surrogates(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a dataset row: ``messages``, ``tools``...) with each placeholder in its messages
    replaced by a fake value of its type (see the module's docstring), without ``name_words``;
    a row without a placeholder is returned as it is."""
    values: dict[str, str] = {}
    name_words: dict[str, int] = row.get("name_words") or {}
    fake = _faker()
    fake.seed_instance(int.from_bytes(hashlib.sha256(str(row.get("id", "")).encode()).digest()[:8], "big"))

    def value_of(match: re.Match[str]) -> str:
        placeholder = match.group()
        if placeholder not in values:
            kind = PiiType(match.group(1))
            taken = set(values.values())
            for _ in range(10):
                if kind is PiiType.PERSON:
                    value = _person(fake, name_words.get(placeholder, DEFAULT_NAME_WORDS))
                else:
                    value = _single_line(_DRAWS[kind](fake))
                if value not in taken:
                    break
            values[placeholder] = value
        return values[placeholder]

    def replace(text: str) -> str:
        return PLACEHOLDER.sub(value_of, text)

    messages = [_message(m, replace) for m in row.get("messages") or []]
    if not values:
        return row
    rest = {key: value for key, value in row.items() if key != "name_words"}
    return {**rest, "messages": messages}


def _message(message: dict[str, Any], replace: Callable[[str], str]) -> dict[str, Any]:
    out = {key: _walk(value, replace) for key, value in message.items() if key != "tool_calls"}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments(call["function"], replace)}}
            for call in message["tool_calls"]
        ]
    return out


def _arguments(function: dict[str, Any], replace: Callable[[str], str]) -> str:
    """The call's arguments (JSON text) with values replaced inside the JSON; text that is not
    JSON is replaced as text."""
    text = function.get("arguments") or ""
    if not PLACEHOLDER.search(text):
        return text
    try:
        return json.dumps(_walk(json.loads(text), replace), ensure_ascii=False)
    except ValueError:
        return replace(text)


def _walk(value: Any, replace: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [_walk(item, replace) for item in value]
    if isinstance(value, dict):
        return {key: _walk(item, replace) for key, item in value.items()}
    return value


def _single_line(value: str) -> str:
    return re.sub(r"\s*\n\s*", ", ", value.strip())
