"""PII detection and redaction.

- the shipped hand-written corpus (a regression floor for the types it has);
- a small seeded sample of the Faker corpus (values from Faker's locales: names, addresses,
  phones, national ids with their check digits...) and its hard negatives, per type;
- national-id checks against Faker's own implementations of them;
- tool-call arguments (string and number values, with their keys), message ``name`` fields,
  placeholders and their numbering, whole records;
- the NER backend (Presidio + spaCy), when installed: loaded once for the module.

The full corpus, with figures, is in ``bench/pii.py``.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from protege.api.calls import CallRecord
from protege.config import CurationSettings
from protege.pii import PiiType, RecordRedaction, backend_from_settings, detect, redact_record
from protege.pii.corpus import Snippet, build_corpus
from protege.pii.detectors import _API_KEYS, Finding, _WordStart, key_type
from protege.pii.evaluation import Score, score
from protege.pii.national_ids import CODICE_FISCALE, NATIONAL_ID_PATTERNS, SIX_DIGITS, national_id_ok
from protege.pii.redactor import PiiBackend, Remembering, builtin_backend
from protege.workload import generate

faker = pytest.importorskip("faker")
from protege.pii.faker_corpus import NATIONAL_IDS, _faker, build_faker_corpus  # noqa: E402

SEED = 11  # the bench uses another seed: this sample is not the one its figures come from


@pytest.fixture(scope="module")
def sample() -> list[Snippet]:
    return build_faker_corpus(per_type=10, negatives=60, mixed=4, seed=SEED)


@pytest.fixture(scope="module")
def ner() -> PiiBackend:
    from protege.pii import ner

    if not ner.available():
        pytest.skip(
            "Presidio, spaCy or the pinned pipeline is not installed (scripts/install.sh installs them)"
        )
    return ner.NerBackend()


# --- the hand-written corpus ------------------------------------------------------------------------
OLD_TYPES = sorted({kind for snippet in build_corpus() for kind, _ in snippet.entities})


def test_hand_written_corpus_is_large_and_has_negatives() -> None:
    corpus = build_corpus()
    kinds = Counter(kind for snippet in corpus for kind, _ in snippet.entities)
    assert len(corpus) >= 200 and min(kinds.values()) >= 3 and len(kinds) >= 10
    assert sum(not snippet.entities for snippet in corpus) >= 40


def test_hand_written_corpus_recall_and_precision() -> None:
    result = score(build_corpus(), builtin_backend())
    for kind in OLD_TYPES:
        assert result.recall(kind) >= 0.99, [m for m in result.misses if f" {kind}:" in m]
        assert result.precision(kind) >= 0.95, [m for m in result.misses if f" {kind}:" in m]


# --- the Faker sample, built-in detectors --------------------------------------------------------------
def _report(result: Score, kind: PiiType | None = None) -> list[str]:
    return [m for m in result.misses if kind is None or f" {kind}:" in m]


def test_sample_covers_every_type_and_has_hard_negatives(sample: list[Snippet]) -> None:
    kinds = Counter(kind for snippet in sample for kind, _ in snippet.entities)
    assert set(kinds) == set(PiiType) and min(kinds.values()) >= 10
    assert sum(not snippet.entities for snippet in sample) >= 60
    assert sum(snippet.key is not None for snippet in sample) >= 40  # tool-call argument values


@pytest.mark.parametrize("kind", [kind for kind in PiiType if kind is not PiiType.PERSON])
def test_builtin_detectors_find_each_type_in_the_faker_sample(sample: list[Snippet], kind: PiiType) -> None:
    result = score([s for s in sample if any(k is kind for k, _ in s.entities)], builtin_backend())
    assert result.recall(kind) >= 0.9, _report(result, kind)
    assert result.leaks[kind] <= 1, _report(result, kind)


def test_builtin_detectors_leave_hard_negatives_alone(sample: list[Snippet]) -> None:
    negatives = [s for s in sample if not s.entities]
    result = score(negatives, builtin_backend())
    assert sum(result.found.values()) <= 1, _report(result)


def test_builtin_precision_on_the_sample(sample: list[Snippet]) -> None:
    result = score(sample, builtin_backend())
    assert result.precision() >= 0.95, _report(result)


def test_national_id_checks_agree_with_fakers_own() -> None:
    fake = _faker(SEED)
    for name, make in NATIONAL_IDS:
        values = [make(fake) for _ in range(40)]
        assert all(national_id_ok(value) for value in values), (name, values)


def test_every_gated_pattern_match_holds_what_its_gate_finds(sample: list[Snippet]) -> None:
    """What find_people's and find_addresses' shortcuts rely on: the gate of a Gated pattern finds
    something inside each of the pattern's matches (so a text where it finds nothing has none)."""
    from protege.pii.detectors import _PERSON_CUES, _POSTCODE_LINES

    texts = [snippet.text for snippet in sample + build_corpus()]
    texts += ["Name: Ann Lee", "customer = Jo Park", "Best regards,\n  Ines Duarte", "Thanks, Ines"]
    texts += ["Mrs. Ana Ruiz", "I'm Jo Park", "APO AE 09012", "4835 RO Son en Breugel", "Girona, 02408"]
    for gated, least in ((_PERSON_CUES, 20), (_POSTCODE_LINES, 20)):
        found = 0
        for text in texts:
            for cue in gated:
                for match in cue.pattern.finditer(text):
                    inside = match.group().lower() if cue.folded else match.group()
                    assert cue.gate.search(inside), (cue.pattern.pattern, match.group())
                    found += 1
        assert found >= least


def test_every_national_id_but_the_codice_fiscale_holds_six_digits(sample: list[Snippet]) -> None:
    """What find_national_ids' shortcut relies on: no pattern but the codice fiscale's matches where
    SIX_DIGITS finds nothing. Checked on Faker's ids of each kind, the corpora (their ids among
    words, and their hard negatives) and hand-written forms: spaced, dotted, a Corsican département."""
    fake = _faker(SEED)
    texts = [make(fake) for _, make in NATIONAL_IDS for _ in range(40)]
    texts += [snippet.text for snippet in sample + build_corpus()]
    texts += ["AB 12 34 56 C", "2 84 12 2A 123 456 78", "85.07.30-033.28", "811218-9876", "12 150859 A 123"]
    checked = 0
    for text in texts:
        for pattern, _, _ in NATIONAL_ID_PATTERNS:
            for match in pattern.finditer(text) if pattern is not CODICE_FISCALE else ():
                assert SIX_DIGITS.search(match.group()), (pattern.pattern, match.group())
                checked += 1
    assert checked > 400


@pytest.mark.parametrize(
    "value",
    [
        "ZZ 12 34 56 T",
        "QQ123456A",
        "AB123456E",
        "12345678A",
        "X1234567A",
        "269 05 75 123 456 00",
        "1234567890",
    ],
)
def test_malformed_or_wrong_check_national_ids_are_not_ids(value: str) -> None:
    assert not national_id_ok(value)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Reach me at +44 20 7946 0958 tomorrow", PiiType.PHONE),
        ("Tel. 06-12 34 56 78", PiiType.PHONE),
        ("call 0612345678 please", PiiType.PHONE),
        ("born 3 March 1984 in Lyon", PiiType.DATE_OF_BIRTH),
        ("passport no. C01X00T47 issued in Köln", PiiType.PASSPORT),
        ("github_pat_11ABCDEFG0123456789abc_" + "a" * 59, PiiType.API_KEY),
        ("glpat-abcdefghij0123456789", PiiType.API_KEY),
        ("xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx", PiiType.API_KEY),
        ("sk-ant-api03-" + "x" * 93 + "AA", PiiType.API_KEY),
        ("AIza" + "b" * 35, PiiType.API_KEY),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
            PiiType.API_KEY,
        ),
        ("Ship it to 221B Baker Street, London NW1 6XE", PiiType.ADDRESS),
        ("Lieferung an Hauptstraße 5, 10115 Berlin", PiiType.ADDRESS),
    ],
)
def test_new_types_in_text(text: str, kind: PiiType) -> None:
    assert kind in {f.type for f in detect(text)}, detect(text)


@pytest.mark.parametrize(
    "text",
    [
        "Order 0612345678 shipped",  # digits without a phone cue
        "Meeting on 03/12/1984 about the audit",  # a date that is no birth date
        "Invoice 2024-05-01 for 1,234.56 EUR",
        "Release 10.0.19045.1 on 2024-05-01T12:30:45Z",
        "Request 3f2504e0-4f89-11d3-9a0c-0305e82c3301 took 812 ms",
        "ISBN 978-3-16-148410-0, EAN 4006381333931",
    ],
)
def test_hard_negatives_in_text(text: str) -> None:
    assert detect(text) == []


# --- tool-call arguments, names, records ------------------------------------------------------------
def test_tool_call_arguments_strings_and_numbers_under_their_keys() -> None:
    redaction = RecordRedaction()
    arguments = json.dumps(
        {
            "customer": {"full_name": "ana souza", "email": "a.b@example.com", "phone": 4155550132},
            "dob": "1984-03-12",
            "passport_number": "X1234567",
            "ssn": 219098765,
            "card": "4111-1111-1111-1111",
            "order_id": 48291038,
            "qty": 2,
            "amount": 19.99,
            "gift": True,
        }
    )
    redacted = json.loads(redaction.json_text(arguments))
    assert redacted == {
        "customer": {"full_name": "<PERSON_1>", "email": "<EMAIL_1>", "phone": "<PHONE_1>"},
        "dob": "<DATE_OF_BIRTH_1>",
        "passport_number": "<PASSPORT_1>",
        "ssn": "<US_SSN_1>",
        "card": "<CREDIT_CARD_1>",
        "order_id": 48291038,
        "qty": 2,
        "amount": 19.99,
        "gift": True,
    }
    assert redaction.json_text('{"broken": "a.b@example.com"') == '{"broken": "<EMAIL_1>"'


def test_a_key_gives_its_type_only_to_a_value_of_its_shape() -> None:
    assert key_type("customerName", "Ana Souza") is PiiType.PERSON
    assert key_type("name", "get_weather_v2") is None
    assert key_type("dateOfBirth", "12/03/1984") is PiiType.DATE_OF_BIRTH
    assert key_type("dob", "unknown") is None
    assert key_type("order_id", "48291038") is None


def test_message_names_are_redacted_and_tool_names_kept() -> None:
    redaction = RecordRedaction()
    user = redaction.message({"role": "user", "name": "jdoe_42", "content": "hi, jdoe_42 here"})
    assistant = redaction.message({"role": "assistant", "name": "Maria Gonzalez", "content": "hello"})
    bot = redaction.message({"role": "assistant", "name": "support_bot", "content": "hello"})
    tool = redaction.message({"role": "tool", "name": "lookup_order", "content": "Order 42 shipped"})
    assert user["name"] == "<PERSON_1>" and assistant["name"] == "<PERSON_2>"
    assert bot["name"] == "support_bot" and tool["name"] == "lookup_order"


def test_placeholders_are_typed_and_consistent_within_a_record() -> None:
    redaction = RecordRedaction()
    prompt = redaction.text("Email jane.doe@example.com or JANE.DOE@example.com; backup ops@example.com.")
    answer = redaction.text("I wrote to jane.doe@example.com and called (415) 555-0132.")
    assert prompt == "Email <EMAIL_1> or <EMAIL_1>; backup <EMAIL_2>."
    assert answer == "I wrote to <EMAIL_1> and called <PHONE_1>."
    assert redaction.counts == {"EMAIL": 4, "PHONE": 1}
    assert RecordRedaction().text("ops@example.com") == "<EMAIL_1>"  # a new record, a new numbering


def test_redaction_is_idempotent_and_keeps_text_without_pii() -> None:
    redaction = RecordRedaction()
    once = redaction.text("Key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 from 10.0.0.7")
    assert once == "Key <API_KEY_1> from <IP_ADDRESS_1>"
    assert redaction.text(once) == once
    clean = "Upgrade to version 2.10.4.1 and rerun order #4829103847."
    assert redaction.text(clean) == clean


def test_a_whole_record_is_redacted_with_one_numbering() -> None:
    raw = CallRecord.model_validate(
        {
            "tenant": "acme",
            "request": {
                "model": "m",
                "user": "jane.doe@example.com",
                "messages": [
                    {"role": "user", "name": "jane", "content": "I'm Jane Doe, card 4111 1111 1111 1111"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "function": {
                                    "name": "refund",
                                    "arguments": '{"email": "jane.doe@example.com"}',
                                },
                            }
                        ],
                    },
                ],
            },
            "response": {"choices": [{"message": {"content": "Refunded jane.doe@example.com"}}]},
            "latency": {"total_ms": 1},
        }
    )
    redacted = redact_record(raw)
    dumped = redacted.model_dump_json()
    # The card's whole number: a bare "4111" can occur in the record's own timestamp or id.
    for value in ("jane.doe@example.com", "Jane Doe", "4111 1111 1111 1111", "1111 1111", '"jane"'):
        assert value not in dumped
    assert redacted.request.user == "<EMAIL_1>" and redacted.response is not None
    assert redacted.response.content == "Refunded <EMAIL_1>"
    assert redacted.id == raw.id and redacted.tenant == "acme"


def test_a_value_found_anywhere_in_a_record_is_replaced_everywhere_in_it() -> None:
    """The user's ``name`` field marks a handle as a person's; where the handle recurs in text,
    where no detector would mark it, it is that person too."""
    record = CallRecord.model_validate(
        {
            "tenant": "acme",
            "request": {
                "model": "m",
                "messages": [{"role": "user", "name": "jdoe_42", "content": "jdoe_42 here, send 2 kettles"}],
            },
            "response": {"choices": [{"message": {"content": '{"customer": "jdoe_42", "qty": 2}'}}]},
            "latency": {"total_ms": 1},
        }
    )
    assert RecordRedaction().text("jdoe_42 here, send 2 kettles") == "jdoe_42 here, send 2 kettles"
    redacted = redact_record(record)
    assert "jdoe_42" not in redacted.model_dump_json()
    assert redacted.request.messages[0].content == "<PERSON_1> here, send 2 kettles"
    assert redacted.response is not None
    assert redacted.response.content == '{"customer": "<PERSON_1>", "qty": 2}'


def test_a_name_the_answer_gives_away_is_redacted_in_the_prompt_too() -> None:
    from protege.tasks.examples import example_from_record

    answer = {"customer_name": "Farid Haddad", "phone_number": "+44 20 7946 0958"}
    record = CallRecord.model_validate(
        {
            "tenant": "acme",
            "request": {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Return the customer's details as JSON."},
                    {"role": "user", "content": "Hi, Farid here, my number changed. Thanks, Farid"},
                ],
            },
            "response": {"choices": [{"message": {"content": json.dumps(answer)}}]},
            "latency": {"total_ms": 1},
        }
    )
    assert key_type("customer_name", "Farid Haddad") is PiiType.PERSON
    example = example_from_record(record)
    assert "Farid" not in json.dumps(example.model_dump())
    assert example.messages[1]["content"] == "Hi, <PERSON_1> here, my number changed. Thanks, <PERSON_1>"
    assert example.answer["content"] == '{"customer_name": "<PERSON_1>", "phone_number": "<PHONE_1>"}'
    assert example.redactions == {"PERSON": 3, "PHONE": 1}
    assert example.name_words == {"<PERSON_1>": 2}  # the full name's, where a part of it stood alone too
    assert RecordRedaction().text("Thanks, Farid") == "Thanks, <PERSON_1>"  # found alone too: one name


def test_surrogates_replace_placeholders_consistently_and_keep_arguments_json() -> None:
    from protege.pii.redactor import PLACEHOLDER
    from protege.pii.surrogates import with_surrogates

    arguments = {"to": "<EMAIL_1>", "who": ["<PERSON_2>"], "n": 2}
    row = {
        "id": "0190-abc",
        "messages": [
            {"role": "user", "content": "I'm <PERSON_1>, write to <EMAIL_1>; my colleague <PERSON_2> too."},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "notify", "arguments": json.dumps(arguments)},
                    }
                ],
            },
            {"role": "assistant", "content": "Done, <PERSON_1>."},
        ],
        "tools": [{"type": "function", "function": {"name": "notify"}}],
    }
    once, again = with_surrogates(row), with_surrogates(row)
    assert once == again  # seeded by the row's id
    assert not PLACEHOLDER.search(json.dumps(once))
    first = once["messages"][0]["content"]
    arguments = json.loads(once["messages"][1]["tool_calls"][0]["function"]["arguments"])
    person_1 = once["messages"][2]["content"].removeprefix("Done, ").removesuffix(".")
    colleague = arguments["who"][0]
    assert first == f"I'm {person_1}, write to {arguments['to']}; my colleague {colleague} too."
    assert person_1 != arguments["who"][0] and "@" in arguments["to"] and arguments["n"] == 2
    assert once["tools"] == row["tools"] and row["messages"][0]["content"].startswith("I'm <PERSON_1>")
    assert with_surrogates({**row, "id": "another"}) != once
    assert len(person_1.split()) == 2 == len(colleague.split())  # a row that does not say: two words
    shaped = with_surrogates({**row, "name_words": {"<PERSON_1>": 1, "<PERSON_2>": 3}})
    assert len(shaped["messages"][2]["content"].removeprefix("Done, ").removesuffix(".").split()) == 1
    assert (
        len(json.loads(shaped["messages"][1]["tool_calls"][0]["function"]["arguments"])["who"][0].split())
        == 3
    )
    plain = {"id": "x", "messages": [{"role": "user", "content": "no pii"}]}
    assert with_surrogates(plain) is plain


# --- the NER backend ------------------------------------------------------------------------------------
def test_ner_finds_names_without_a_cue(ner: PiiBackend) -> None:
    for text, name in [
        ("Please escalate this to Fedra Castellanos in billing.", "Fedra Castellanos"),
        ("Ticket reassigned from Bartholomew Okonkwo after the call.", "Bartholomew Okonkwo"),
        ("I spoke with Anneliese Brandt yesterday about the refund.", "Anneliese Brandt"),
    ]:
        names = [f.text for f in ner(text) if f.type is PiiType.PERSON]
        assert any(name in found or found in name for found in names), (text, names)


def test_ner_person_recall_and_overall_precision_on_the_sample(
    ner: PiiBackend, sample: list[Snippet]
) -> None:
    result = score(sample, ner)
    assert result.recall(PiiType.PERSON) >= 0.9, _report(result, PiiType.PERSON)
    assert result.recall() >= 0.95 and result.precision() >= 0.95, _report(result)


def test_curation_uses_the_ner_backend_where_installed(ner: PiiBackend) -> None:
    from protege.pii.ner import NerBackend

    assert isinstance(backend_from_settings(CurationSettings()).backend, NerBackend)  # auto
    assert isinstance(backend_from_settings(CurationSettings(pii_detector="presidio")).backend, NerBackend)
    assert not isinstance(backend_from_settings(CurationSettings(pii_detector="builtin")).backend, NerBackend)


def test_word_start_patterns_match_as_their_leading_word_boundary_would() -> None:
    """The API-key patterns are searched without their leading \\b (fast), the boundary checked
    apart: the same matches as the pattern with it, on keys inside and beside other words."""
    keys = [
        "sk-" + "a" * 24,
        "sk-ant-api03-" + "b" * 24,
        "pgk-" + "c" * 24,
        "AKIA" + "D" * 16,
        "ghp_" + "e" * 36,
        "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJlMTIz",
        "xoxb-" + "1" * 12,
        "AIza" + "f" * 35,
    ]
    beside = ("{}", "x{} {}", "é{}", "_{}", "({})", "a-{}")
    texts = [shape.format(key, key) for key in keys for shape in beside]
    texts += [call.request["messages"][-1]["content"] for call in generate(200, seed=5)]
    for pattern in _API_KEYS:
        if isinstance(pattern, _WordStart):
            bounded = re.compile(r"\b" + pattern.pattern.pattern)
            for text in texts:
                spans = [match.span() for match in pattern.finditer(text)]
                assert spans == [match.span() for match in bounded.finditer(text)], (pattern.pattern, text)


def test_a_remembering_backend_detects_each_distinct_text_once_and_forgets_the_oldest() -> None:
    scanned: list[str] = []

    def counting(text: str) -> list[Finding]:
        scanned.append(text)
        return builtin_backend()(text)

    backend = Remembering(counting, size=2)
    prompt = "You are the support agent of Acme. Escalate to Jane Miller (jane@acme.example)."
    first = backend(prompt)
    assert {f.type for f in first} >= {PiiType.EMAIL}
    first.clear()  # a caller's list is its own
    assert backend(prompt) == builtin_backend()(prompt) and scanned == [prompt]
    backend("call me at (415) 555-0132")
    backend("nothing here")  # the third distinct text: the prompt, used least recently, goes
    backend(prompt)
    assert scanned == [prompt, "call me at (415) 555-0132", "nothing here", prompt]
