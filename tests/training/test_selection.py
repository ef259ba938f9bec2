"""Selection (S4): budget filters with reasons, a probe, the best score per GiB."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.api.specialist import EvaluationMetric
from protege.models.pull import MARKER
from protege.tasks.examples import example_from_record
from protege.training.selection import Budget, few_shot_probe, longest_example_tokens, select
from protege.workload import generate


def rows(count: int) -> list[dict]:  # type: ignore[type-arg]
    examples = [example_from_record(c.to_record()) for c in generate(count, seed=4, families=("intent",))]
    return [{"id": e.id, "messages": e.chat()} for e in examples]


def test_budget_excludes_with_reasons_and_the_best_value_wins(tmp_path: Path) -> None:
    for model in ("smollm2-135m", "qwen2.5-0.5b", "llama3.2-1b"):
        (tmp_path / model).mkdir()
        (tmp_path / model / MARKER).write_text("{}")
    scores = {"smollm2-135m": (0.20, 20.0), "qwen2.5-0.5b": (0.90, 60.0), "llama3.2-1b": (0.95, 90.0)}
    probed = []

    def probe(directory: Path) -> tuple[float, float]:
        probed.append(directory.name)
        return scores[directory.name]

    budget = Budget(max_memory_gib=3, licences=frozenset({"Apache-2.0", "MIT"}))
    result = select(rows(20), probe, tmp_path, budget)
    assert sorted(probed) == [
        "qwen2.5-0.5b",
        "smollm2-135m",
    ]  # only the eligible, available ones cost a probe
    assert result.chosen == "qwen2.5-0.5b"  # 0.90 / 0.92 GiB beats 0.20 / 0.25 GiB (the floor)
    reasons = {c.model: c.excluded for c in result.candidates}
    assert "licence Llama-3.2-Community" in (reasons["llama3.2-1b"] or "")
    assert "> budget 3 GiB" in (reasons["phi3.5-mini"] or "")
    assert "protege models pull smollm2-360m" in (reasons["smollm2-360m"] or "")
    assert result.reasoning[0].startswith("chose qwen2.5-0.5b")
    tight = select(rows(20), probe, tmp_path, Budget(max_memory_gib=0.1))
    assert tight.chosen is None and "relax the budget" in tight.reasoning[0]
    assert longest_example_tokens(rows(5)) > 0


def test_context_window_is_a_hard_limit(tmp_path: Path) -> None:
    long_row = {
        "messages": [{"role": "user", "content": "x" * 40_000}, {"role": "assistant", "content": "ok"}]
    }
    result = select(
        [long_row], lambda d: (1.0, 1.0), tmp_path, Budget(max_memory_gib=100), candidates=["smollm2-135m"]
    )
    assert "context 8192 <" in (result.candidates[0].excluded or "")


@pytest.mark.slow
def test_the_real_probe_scores_smollm2(smollm2: Path) -> None:
    data = rows(12)
    probe = few_shot_probe(data[3:11], data[:3], EvaluationMetric.EXACT_MATCH, max_new_tokens=8)
    result = select(data, probe, smollm2.parent, Budget(), candidates=["smollm2-135m"])
    [candidate] = result.candidates
    assert (
        result.chosen == "smollm2-135m"
        and candidate.probe_score is not None
        and 0 <= candidate.probe_score <= 1
    )
    assert candidate.latency_ms is not None and candidate.latency_ms > 0
