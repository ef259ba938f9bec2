"""Replace PII with typed, consistent placeholders: ``<EMAIL_1>`` stays the same entity in a record.

Training data keeps its structure — the model still learns that an email goes here and
that the same address appears twice — without the values. One :class:`RecordRedaction`
covers one call record: every text of it (prompts, answers, tool-call arguments, the
``name`` of a message) shares its numbering, and the counts per type feed the dataset
manifest. :func:`redact_record` applies it to a whole :class:`CallRecord` (redaction at
capture); curation applies it to the example it builds. Both go through
:meth:`RecordRedaction.message`, so a message is redacted the same way wherever it is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from protege.pii.detectors import Finding, PiiType, detect, key_context, key_type, trim

if TYPE_CHECKING:
    from protege.api.calls import CallRecord


class PiiBackend(Protocol):
    """Something that finds PII spans in a text (the built-in detectors, or Presidio's NER with them)."""

    def __call__(self, text: str) -> list[Finding]: ...


def builtin_backend(types: Iterable[PiiType] | None = None) -> PiiBackend:
    wanted = frozenset(types) if types is not None else None

    def find(text: str) -> list[Finding]:
        return detect(text, wanted)

    return find


class Remembering:
    """A backend that remembers what it found in the last ``size`` distinct texts.

    Agents send the same texts again and again: an app's system prompt with every call, its
    tool schemas, short answers. On 5,000 generated calls, 89% of the characters the
    detectors scanned were texts they had already scanned (20,616 texts, 4,585 distinct), so
    a text seen again costs a hash instead of every detector (and Presidio's NER). Texts are
    kept as digests, never as themselves; what was found in them is held in memory only,
    ``size`` texts at most.
    """

    def __init__(self, backend: PiiBackend, size: int = 4096) -> None:
        self.backend = backend
        self.size = size
        self._found: OrderedDict[bytes, tuple[Finding, ...]] = OrderedDict()
        self._lock = threading.Lock()  # the curator detects in worker threads

    def __call__(self, text: str) -> list[Finding]:
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
                return list(found)
        found = tuple(self.backend(text))
        with self._lock:
            self._found[key] = found
            if len(self._found) > self.size:
                self._found.popitem(last=False)
        return list(found)


@functools.cache
def shared_builtin_backend() -> Remembering:
    """The built-in detectors, remembering for every caller in this process."""
    return Remembering(builtin_backend())


def presidio_backend(language: str = "en", model: str | None = None) -> PiiBackend:
    """The built-in detectors plus Presidio's spaCy NER for names anywhere in text
    (see :mod:`protege.pii.ner`); RuntimeError saying how to install it when absent."""
    from protege.pii.ner import DEFAULT_MODEL, NerBackend

    return NerBackend(model or DEFAULT_MODEL, language=language)


PLACEHOLDER = re.compile(r"<(" + "|".join(t.value for t in PiiType) + r")_\d+>")  # group 1: the type
# Message roles whose `name` is a person's (or their account's): replaced whatever its shape.
_PERSON_ROLES = ("user",)
# Roles whose `name` is a function's name, not a participant's: kept.
_FUNCTION_ROLES = ("tool", "function")
# A value found once is looked for elsewhere in its record only from this length: shorter ones
# ("Li", "42") match too much that is not them.
_MIN_KNOWN = 3
T = TypeVar("T")


class RecordRedaction:
    """Redacts the texts of one record with one numbering; read :attr:`counts` afterwards.

    :meth:`whole` redacts a record in two passes, so that a value found anywhere in it (a name
    under a ``customer_name`` key, a handle in a message's ``name``, a cue in one message) is
    replaced wherever else it appears, by the same placeholder: the same name alone in another
    message, where nothing marked it, and a person's first or last name alone.
    """

    def __init__(self, backend: PiiBackend | None = None) -> None:
        self.backend = backend or shared_builtin_backend()
        self._numbers: dict[tuple[PiiType, str], int] = {}
        self._per_type: Counter[PiiType] = Counter()
        self.counts: Counter[str] = Counter()  # replacements made, by type
        # How many words the name behind each person placeholder has (a count, not PII): fake
        # names in their place get as many (surrogates.py), so a model learns the right span.
        self.name_words: dict[str, int] = {}
        self._findings: dict[tuple[str, str | None], list[Finding]] = {}
        # What the first pass of `whole` found: a value (or a word of a name) → its type and the
        # value it stands for, and the pattern that finds them all in a text in the second pass.
        self._known: dict[str, tuple[PiiType, str]] = {}
        self._known_pattern: re.Pattern[str] | None = None
        self._first_pass = False

    def whole(self, redact: Callable[[], T]) -> T:
        """``redact()`` (which redacts every text of one record through this object) run twice:
        the first pass learns the record's PII values, the second replaces each one wherever it
        appears, numbered in order of appearance. The backend runs once per text."""
        self._first_pass = True
        redact()
        self._first_pass = False
        self._names_by_their_words()
        values = sorted((v for v in self._known if len(v) >= _MIN_KNOWN), key=len, reverse=True)
        if values:
            alternatives = "|".join(re.escape(v) for v in values)
            self._known_pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
        self._numbers.clear()
        self._per_type.clear()
        self.counts.clear()
        self.name_words.clear()
        return redact()

    def placeholder(self, kind: PiiType, value: str) -> str:
        if self._first_pass:
            self._known.setdefault(value.strip(), (kind, value.strip()))
        known = self._known.get(value.strip())
        if known is not None and known[0] is kind:
            value = known[1]  # a part of a name: the name's placeholder
        key = (kind, _normalize(kind, value))
        if key not in self._numbers:
            self._per_type[kind] += 1
            self._numbers[key] = self._per_type[kind]
        self.counts[kind.value] += 1
        placeholder = f"<{kind.value}_{self._numbers[key]}>"
        if kind is PiiType.PERSON:
            self.name_words.setdefault(placeholder, len(value.split()))
        return placeholder

    def _names_by_their_words(self) -> None:
        """A word of a person's full name found in the record (a first or last name) stands for
        that name, wherever it is alone; a word shared by two names stands for the first."""
        words: dict[str, tuple[PiiType, str]] = {}
        for value, (kind, _) in self._known.items():
            if kind is PiiType.PERSON and " " in value:
                for word in value.split():
                    if word[:1].isupper() and len(word) >= _MIN_KNOWN:
                        words.setdefault(word, (kind, value))
        for word, name in words.items():
            if word not in self._known or self._known[word][1] == word:
                self._known[word] = name

    def text(self, text: str, key: str | None = None) -> str:
        """``text`` with its PII replaced (``key``: see :func:`find_pii`)."""
        if not text or PLACEHOLDER.fullmatch(text.strip()):
            return text
        if (text, key) not in self._findings:
            self._findings[text, key] = find_pii(self.backend, text, key)
        findings = self._findings[text, key]
        if self._known_pattern is not None:
            findings = findings + [
                Finding(self._known[m.group()][0], *m.span(), m.group())
                for m in self._known_pattern.finditer(text)
            ]
        return self._replace(text, findings)

    def _learn_json(self, text: str) -> None:
        """Content that is JSON (a JSON-mode answer): its values are read with their keys as
        context, to learn what they are (``"customer_name": "Farid Haddad"``); the content is
        redacted as text, so its formatting is kept."""
        body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
        if body[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                self.value(json.loads(body))

    def _replace(self, text: str, findings: list[Finding]) -> str:
        protected = [m.span() for m in PLACEHOLDER.finditer(text)]  # already redacted
        out, last = [], 0
        for finding in sorted(findings, key=lambda f: f.start):  # stable: on a tie the first listed wins
            for start, end in _outside(finding.start, finding.end, protected, text):
                if start < last:
                    continue
                out.append(text[last:start])
                out.append(self.placeholder(finding.type, text[start:end]))
                last = end
        out.append(text[last:])
        return "".join(out)

    def json_text(self, text: str) -> str:
        """Tool-call arguments: redact the string and number values of the JSON (each with its
        key as context), keep it valid JSON. Text that is not JSON (a model may emit broken
        arguments) is redacted as text."""
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        return json.dumps(self.value(value), ensure_ascii=False)

    def value(self, value: Any, key: str | None = None) -> Any:
        """Any JSON-like value: strings redacted, structure kept (keys are left as they are).

        A number that is PII as a whole (a phone number, an SSN, a card under its key) becomes
        the placeholder string; other numbers (amounts, quantities, ids) stay numbers.
        """
        if isinstance(value, str):
            return self.text(value, key)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            redacted = self.text(str(value), key)
            return redacted if redacted != str(value) and PLACEHOLDER.search(redacted) else value
        if isinstance(value, list):
            return [self.value(item, key) for item in value]
        if isinstance(value, dict):
            return {name: self.value(item, str(name)) for name, item in value.items()}
        return value

    def message(self, data: dict[str, Any]) -> dict[str, Any]:
        """A chat message as a dict (``model_dump``): content, the participant's ``name`` and
        tool-call arguments redacted; a tool's or function's name is kept."""
        data = dict(data)
        content = data.get("content")
        if isinstance(content, str):
            if self._first_pass:
                self._learn_json(content)
            data["content"] = self.text(content)
        elif content is not None:
            data["content"] = self.value(content)
        if data.get("refusal"):
            data["refusal"] = self.text(data["refusal"])
        name = data.get("name")
        if isinstance(name, str) and name and data.get("role") not in _FUNCTION_ROLES:
            if data.get("role") in _PERSON_ROLES and not PLACEHOLDER.fullmatch(name):
                data["name"] = self.placeholder(PiiType.PERSON, name)
            else:
                data["name"] = self.text(name, "name")
        if data.get("tool_calls"):
            calls = []
            for call in data["tool_calls"]:
                function = dict(call["function"])
                function["arguments"] = self.json_text(function["arguments"])
                calls.append({**call, "function": function})
            data["tool_calls"] = calls
        return data


def find_pii(backend: PiiBackend, text: str, key: str | None = None) -> list[Finding]:
    """What ``backend`` finds in ``text``. ``key``: the name the text is the value of (a
    tool-call argument, a message field): a key that names a type (``email``, ``dob``,
    ``passport``) makes the whole value of that type when it has the shape; any other key is
    put before the text as a cue for the detectors ("order id: ...")."""
    if not key:
        return backend(text)
    kind = key_type(key, text)
    if kind is not None:
        start = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        return [Finding(kind, start, end, text[start:end])]
    prefix = key_context(key) + ": "
    shifted = [_shift(f, -len(prefix), text) for f in backend(prefix + text)]
    return [f for f in shifted if f is not None]


def redact_record(record: CallRecord, backend: PiiBackend | None = None) -> CallRecord:
    """The record with every text a person or a model wrote redacted, with one numbering:
    the request's messages and ``user``, the answer, a shadow answer and a teacher sample,
    and error messages (an upstream may quote the input). Ids, timings, usage, tool schemas
    and routing are kept."""
    from protege.api.calls import CallRecord

    redaction = RecordRedaction(backend)
    original = record.model_dump(mode="json", exclude_none=True)
    return CallRecord.model_validate(redaction.whole(lambda: _redact_record_data(original, redaction)))


def _redact_record_data(data: dict[str, Any], redaction: RecordRedaction) -> dict[str, Any]:
    data = {**data, "request": dict(data["request"])}
    request = data["request"]
    request["messages"] = [redaction.message(m) for m in request["messages"]]
    if request.get("user"):
        request["user"] = redaction.text(request["user"], "user")
    if data.get("response"):
        data["response"] = _redact_response(data["response"], redaction)
    for field in ("alternate", "teacher_sample"):
        if data.get(field):
            data[field] = _redact_alternate(data[field], redaction)
    if data.get("error"):
        data["error"] = {**data["error"], "message": redaction.text(data["error"]["message"])}
    return data


def _redact_response(response: dict[str, Any], redaction: RecordRedaction) -> dict[str, Any]:
    choices = [{**c, "message": redaction.message(c["message"])} for c in response.get("choices", [])]
    return {**response, "choices": choices}


def _redact_alternate(answer: dict[str, Any], redaction: RecordRedaction) -> dict[str, Any]:
    answer = dict(answer)
    if answer.get("response"):
        answer["response"] = _redact_response(answer["response"], redaction)
    if answer.get("error"):
        answer["error"] = {**answer["error"], "message": redaction.text(answer["error"]["message"])}
    return answer


def _shift(finding: Finding, offset: int, text: str) -> Finding | None:
    """A finding in ``prefix + text`` moved onto ``text``; None if it lay in the prefix."""
    start, end = max(0, finding.start + offset), min(len(text), finding.end + offset)
    if end <= start:
        return None
    return Finding(finding.type, start, end, text[start:end])


def _outside(start: int, end: int, protected: list[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """The parts of [start, end) outside the protected spans, with a word character in them."""
    pieces = [(start, end)]
    for p_start, p_end in protected:
        pieces = [
            piece
            for s, e in pieces
            for piece in ((s, min(e, p_start)), (max(s, p_end), e))
            if piece[1] > piece[0]
        ]
    if pieces == [(start, end)]:
        return pieces
    kept = []
    for piece in pieces:
        s, e = trim(text, *piece)
        if re.search(r"\w", text[s:e]):
            kept.append((s, e))
    return kept


def _normalize(kind: PiiType, value: str) -> str:
    """The same entity written two ways gets one placeholder."""
    if kind in (PiiType.EMAIL, PiiType.IBAN, PiiType.NATIONAL_ID, PiiType.PASSPORT):
        return re.sub(r"[\s.-]", "", value).lower()
    if kind in (PiiType.PHONE, PiiType.CREDIT_CARD, PiiType.US_SSN):
        return re.sub(r"\D", "", value)
    if kind in (PiiType.PERSON, PiiType.ADDRESS):
        return " ".join(value.split()).lower()
    return value


__all__ = [
    "PLACEHOLDER",
    "PiiBackend",
    "RecordRedaction",
    "builtin_backend",
    "find_pii",
    "presidio_backend",
    "redact_record",
]
