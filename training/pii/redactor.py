"""Replace PII with typed, consistent placeholders: ``<EMAIL_1>`` stays the same entity in a record.

Training data keeps its structure — the model still learns that an email goes here and
that the same address appears twice — without the values. One :class:`RecordRedaction`
covers one call record: every text of it (prompts, answers, tool-call arguments) shares
its numbering, and the counts per type feed the dataset manifest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from protege.training.pii.detectors import Finding, PiiType, detect


class PiiBackend(Protocol):
    """Something that finds PII spans in a text (the built-in detectors, or Presidio)."""

    def __call__(self, text: str) -> list[Finding]: ...


def builtin_backend(types: Iterable[PiiType] | None = None) -> PiiBackend:
    wanted = frozenset(types) if types is not None else None

    def find(text: str) -> list[Finding]:
        return detect(text, wanted)

    return find


def presidio_backend(language: str = "en") -> PiiBackend:
    """Microsoft Presidio's analyzer, when it and a spaCy model are installed (not offline here)."""
    try:
        from presidio_analyzer import AnalyzerEngine  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError(
            "the Presidio backend needs `pip install presidio-analyzer` and a spaCy model "
            "(`python -m spacy download en_core_web_lg`); the built-in detectors need neither"
        ) from None
    engine = AnalyzerEngine()
    mapping = {
        "EMAIL_ADDRESS": PiiType.EMAIL,
        "PHONE_NUMBER": PiiType.PHONE,
        "CREDIT_CARD": PiiType.CREDIT_CARD,
        "US_SSN": PiiType.US_SSN,
        "IBAN_CODE": PiiType.IBAN,
        "IP_ADDRESS": PiiType.IP_ADDRESS,
        "PERSON": PiiType.PERSON,
    }

    def find(text: str) -> list[Finding]:
        results = engine.analyze(text=text, language=language)
        found = [
            Finding(mapping[r.entity_type], r.start, r.end, text[r.start : r.end])
            for r in results
            if r.entity_type in mapping
        ]
        # Presidio has no secret detectors: keep the built-in ones for keys and credentials.
        secrets = detect(text, frozenset({PiiType.PRIVATE_KEY, PiiType.URL_CREDENTIALS, PiiType.API_KEY}))
        return sorted(found + secrets, key=lambda f: f.start)

    return find


PLACEHOLDER = re.compile(r"<(?:" + "|".join(t.value for t in PiiType) + r")_\d+>")


class RecordRedaction:
    """Redacts the texts of one record with one numbering; read :attr:`counts` afterwards."""

    def __init__(self, backend: PiiBackend | None = None) -> None:
        self.backend = backend or builtin_backend()
        self._numbers: dict[tuple[PiiType, str], int] = {}
        self._per_type: Counter[PiiType] = Counter()
        self.counts: Counter[str] = Counter()  # replacements made, by type

    def placeholder(self, kind: PiiType, value: str) -> str:
        key = (kind, _normalize(kind, value))
        if key not in self._numbers:
            self._per_type[kind] += 1
            self._numbers[key] = self._per_type[kind]
        return f"<{kind.value}_{self._numbers[key]}>"

    def text(self, text: str) -> str:
        if not text:
            return text
        out, last = [], 0
        for finding in self.backend(text):
            if PLACEHOLDER.fullmatch(finding.text):
                continue  # already redacted
            out.append(text[last : finding.start])
            out.append(self.placeholder(finding.type, finding.text))
            self.counts[finding.type.value] += 1
            last = finding.end
        out.append(text[last:])
        return "".join(out)

    def json_text(self, text: str) -> str:
        """Tool-call arguments: redact the string values of the JSON, keep it valid JSON.

        Text that is not JSON (a model may emit broken arguments) is redacted as text.
        """
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        return json.dumps(self.value(value), ensure_ascii=False)

    def value(self, value: Any) -> Any:
        """Any JSON-like value: strings redacted, structure kept (keys are left as they are)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value


def _normalize(kind: PiiType, value: str) -> str:
    """The same entity written two ways gets one placeholder."""
    if kind in (PiiType.EMAIL, PiiType.IBAN):
        return value.replace(" ", "").lower()
    if kind in (PiiType.PHONE, PiiType.CREDIT_CARD, PiiType.US_SSN):
        return re.sub(r"\D", "", value)
    if kind is PiiType.PERSON:
        return " ".join(value.split()).lower()
    return value
