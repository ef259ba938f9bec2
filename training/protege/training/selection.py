"""Selection (S4): choose a small base model for a task, within a budget, and say why.

1. Hard constraints, from the catalogue's facts: bf16 weights within the memory budget,
   a context window that holds the task's longest example (plus room for the answer), a
   licence on the allow-list. Each excluded candidate gets its reason.
2. A cheap probe of those left that are available here: few-shot score of the base model
   on a validation sample, and its latency per example.
3. Ranking by score per cost (cost: weight memory in GiB, floored at 0.25 so the very
   smallest models do not win on size alone), ties to the smaller model.

The decision and every candidate's line of reasoning go into the result, for the
Specialist's status and for people.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.models.catalogue import CATALOGUE, CatalogueEntry
from protege.models.pull import MARKER

GIB = 1 << 30


@dataclass(frozen=True)
class Budget:
    max_memory_gib: float = 8.0  # weights in bf16, per replica
    licences: frozenset[str] | None = None  # None: any
    answer_tokens: int = 512  # room kept for the answer beyond the longest prompt


@dataclass
class Candidate:
    model: str
    params_millions: int
    memory_gib: float
    excluded: str | None = None
    probe_score: float | None = None
    latency_ms: float | None = None
    value: float | None = None  # probe score per GiB

    def line(self) -> str:
        if self.excluded:
            return f"{self.model}: excluded — {self.excluded}"
        return (
            f"{self.model}: few-shot score {self.probe_score:.3f}, {self.latency_ms:.0f} ms/example, "
            f"{self.memory_gib:.2f} GiB → {self.value:.3f} per GiB"
        )


@dataclass
class Selection:
    chosen: str | None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def reasoning(self) -> list[str]:
        head = (
            [f"chose {self.chosen}: best probe score per GiB within the budget"]
            if self.chosen
            else ["no candidate fits the budget and is available; relax the budget or pull a model"]
        )
        return head + [candidate.line() for candidate in self.candidates]


def longest_example_tokens(rows: Sequence[dict[str, Any]]) -> int:
    """A tokenizer-free upper estimate: 1 token per 3 characters of the whole chat."""
    return max((len(json.dumps(row["messages"])) // 3 for row in rows), default=0)


# A probe scores a model (its local directory) on the sample: (score, ms per example).
Probe = Callable[[Path], tuple[float, float]]


def select(
    rows: Sequence[dict[str, Any]],
    probe: Probe,
    model_store: Path,
    budget: Budget,
    candidates: Sequence[str] | None = None,
) -> Selection:
    entries: list[CatalogueEntry] = [e for e in CATALOGUE if candidates is None or e.id in candidates]
    needed = longest_example_tokens(rows) + budget.answer_tokens
    result = Selection(chosen=None)
    for entry in entries:
        candidate = Candidate(entry.id, entry.params_millions, entry.bf16_bytes / GIB)
        directory = model_store / entry.id
        if candidate.memory_gib > budget.max_memory_gib:
            candidate.excluded = (
                f"{candidate.memory_gib:.2f} GiB of weights > budget {budget.max_memory_gib:g} GiB"
            )
        elif entry.context_length < needed:
            candidate.excluded = f"context {entry.context_length} < {needed} tokens the task needs"
        elif budget.licences is not None and entry.licence not in budget.licences:
            candidate.excluded = f"licence {entry.licence} is not on the allow-list"
        elif not (directory / MARKER).exists():
            candidate.excluded = f"not available here (run `protege models pull {entry.id}`)"
        else:
            candidate.probe_score, candidate.latency_ms = probe(directory)
            candidate.value = candidate.probe_score / max(candidate.memory_gib, 0.25)
        result.candidates.append(candidate)
    probed = [c for c in result.candidates if c.value is not None]
    if probed:
        result.chosen = max(probed, key=lambda c: (c.value, -c.params_millions)).model
    return result


def few_shot_probe(
    sample: Sequence[dict[str, Any]],
    shots: Sequence[dict[str, Any]],
    metric: Any,
    database: Any = None,
    max_new_tokens: int = 64,
) -> Probe:
    """The cheap probe: the base model, few-shot, on a small validation sample."""

    def probe(model_dir: Path) -> tuple[float, float]:
        from protege.training.evaluation import TransformersGenerator, evaluate

        generator = TransformersGenerator(model_dir, max_new_tokens=max_new_tokens)
        result = evaluate(sample, generator, metric, database=database, shots=shots)
        return result.score, result.latency_ms_p50

    return probe
