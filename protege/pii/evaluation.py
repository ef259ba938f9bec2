"""Score a PII backend on a labelled corpus: recall and precision per type, and leaks.

- recall of a type: its labelled values that a finding of the same type overlaps;
- precision of a type: its findings that overlap a labelled value of the same type (a
  finding in a hard negative, or of another type, is a false positive);
- a leak: a labelled value with a letter or digit that no finding covers, so that some of
  it is still there after redaction (a name whose surname was missed leaks; a value found
  under another type does not).

A snippet with a ``key`` is scored as a tool-call argument value under that key, the way
the redactor sees it (:func:`~protege.pii.redactor.find_pii`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from protege.pii.corpus import Snippet
from protege.pii.detectors import PiiType
from protege.pii.redactor import PiiBackend, find_pii


@dataclass
class Score:
    tp: Counter[PiiType] = field(default_factory=Counter)  # labelled values found with their type
    fn: Counter[PiiType] = field(default_factory=Counter)
    fp: Counter[PiiType] = field(default_factory=Counter)  # findings that are not a value of their type
    found: Counter[PiiType] = field(default_factory=Counter)  # findings, by type
    leaks: Counter[PiiType] = field(default_factory=Counter)
    misses: list[str] = field(default_factory=list)

    def recall(self, kind: PiiType | None = None) -> float:
        tp = self.tp[kind] if kind else sum(self.tp.values())
        fn = self.fn[kind] if kind else sum(self.fn.values())
        return tp / (tp + fn) if tp + fn else 1.0

    def precision(self, kind: PiiType | None = None) -> float:
        found = self.found[kind] if kind else sum(self.found.values())
        fp = self.fp[kind] if kind else sum(self.fp.values())
        return (found - fp) / found if found else 1.0

    def entities(self, kind: PiiType | None = None) -> int:
        if kind:
            return self.tp[kind] + self.fn[kind]
        return sum(self.tp.values()) + sum(self.fn.values())


def score(corpus: Iterable[Snippet], backend: PiiBackend) -> Score:
    result = Score()
    for snippet in corpus:
        findings = find_pii(backend, snippet.text, snippet.key)
        spans = []
        for kind, value in snippet.entities:
            start = snippet.text.index(value)
            end = start + len(value)
            spans.append((kind, start, end))
            if any(f.type is kind and f.start < end and f.end > start for f in findings):
                result.tp[kind] += 1
            else:
                result.fn[kind] += 1
                result.misses.append(f"missed {kind}: {value!r} in {snippet.text!r}")
            covered = [False] * (end - start)
            for f in findings:
                for i in range(max(f.start, start), min(f.end, end)):
                    covered[i - start] = True
            left = "".join(c for c, done in zip(value, covered, strict=True) if not done and c.isalnum())
            if left:
                result.leaks[kind] += 1
                result.misses.append(f"leaked {kind}: {left!r} of {value!r}")
        for finding in findings:
            result.found[finding.type] += 1
            if not any(
                kind is finding.type and finding.start < end and finding.end > start
                for kind, start, end in spans
            ):
                result.fp[finding.type] += 1
                result.misses.append(f"false {finding.type}: {finding.text!r} in {snippet.text!r}")
    return result
