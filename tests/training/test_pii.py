"""PII detection on a labelled corpus (recall and precision per type), and redaction behaviour."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from protege.training.pii import PiiType, RecordRedaction, detect
from protege.training.pii.corpus import build_corpus


def score_corpus() -> tuple[Counter[PiiType], Counter[PiiType], Counter[PiiType], list[str]]:
    """True positives, false negatives and false positives per type, and what went wrong."""
    tp: Counter[PiiType] = Counter()
    fn: Counter[PiiType] = Counter()
    fp: Counter[PiiType] = Counter()
    misses = []
    for snippet in build_corpus():
        findings = detect(snippet.text)
        spans = []
        for kind, value in snippet.entities:
            start = snippet.text.index(value)
            spans.append((kind, start, start + len(value)))
            if any(f.type is kind and f.start < start + len(value) and f.end > start for f in findings):
                tp[kind] += 1
            else:
                fn[kind] += 1
                misses.append(f"missed {kind}: {value!r} in {snippet.text!r}")
        for finding in findings:
            if not any(
                kind is finding.type and finding.start < end and finding.end > start
                for kind, start, end in spans
            ):
                fp[finding.type] += 1
                misses.append(f"false {finding.type}: {finding.text!r} in {snippet.text!r}")
    return tp, fn, fp, misses


def test_corpus_is_large_and_covers_every_type_with_negatives() -> None:
    corpus = build_corpus()
    assert len(corpus) >= 200
    kinds = Counter(kind for snippet in corpus for kind, _ in snippet.entities)
    assert set(kinds) == set(PiiType) and min(kinds.values()) >= 3
    assert sum(not snippet.entities for snippet in corpus) >= 40


@pytest.mark.parametrize("kind", list(PiiType))
def test_recall_and_precision_per_type(kind: PiiType) -> None:
    tp, fn, fp, misses = score_corpus()
    relevant = [m for m in misses if f" {kind}:" in m]
    recall = tp[kind] / (tp[kind] + fn[kind])
    precision = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0
    assert recall >= 0.99, relevant
    assert precision >= 0.95, relevant


def test_overall_recall_and_precision() -> None:
    tp, fn, fp, misses = score_corpus()
    recall = sum(tp.values()) / (sum(tp.values()) + sum(fn.values()))
    precision = sum(tp.values()) / (sum(tp.values()) + sum(fp.values()))
    assert recall >= 0.99 and precision >= 0.95, misses


def test_placeholders_are_typed_and_consistent_within_a_record() -> None:
    redaction = RecordRedaction()
    prompt = redaction.text("Email jane.doe@example.com or JANE.DOE@example.com; backup ops@example.com.")
    answer = redaction.text("I wrote to jane.doe@example.com and called (415) 555-0132.")
    assert prompt == "Email <EMAIL_1> or <EMAIL_1>; backup <EMAIL_2>."
    assert answer == "I wrote to <EMAIL_1> and called <PHONE_1>."
    assert redaction.counts == {"EMAIL": 4, "PHONE": 1}
    assert RecordRedaction().text("ops@example.com") == "<EMAIL_1>"  # a new record, a new numbering


def test_tool_call_arguments_stay_valid_json() -> None:
    redaction = RecordRedaction()
    arguments = json.dumps(
        {"customer": {"email": "a.b@example.com", "card": "4111-1111-1111-1111"}, "qty": 2}
    )
    redacted = json.loads(redaction.json_text(arguments))
    assert redacted == {"customer": {"email": "<EMAIL_1>", "card": "<CREDIT_CARD_1>"}, "qty": 2}
    assert redaction.json_text('{"broken": "a.b@example.com"') == '{"broken": "<EMAIL_1>"'


def test_redaction_is_idempotent_and_keeps_text_without_pii() -> None:
    redaction = RecordRedaction()
    once = redaction.text("Key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789 from 10.0.0.7")
    assert once == "Key <API_KEY_1> from <IP_ADDRESS_1>"
    assert redaction.text(once) == once
    clean = "Upgrade to version 2.10.4.1 and rerun order #4829103847."
    assert redaction.text(clean) == clean


def test_presidio_backend_explains_how_to_get_it() -> None:
    from protege.training.pii import presidio_backend

    try:
        import presidio_analyzer  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install presidio-analyzer"):
            presidio_backend()
    else:
        pytest.skip("Presidio is installed here; its own test suite covers it")
