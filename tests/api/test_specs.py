from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.api import SPECIALIST, SPECIALIST_POOL, SpecificationError, parse_spec
from protege.api.meta import ConditionStatus, set_condition
from protege.api.pool import SpecialistPoolSpec
from protege.api.resources import kind_for
from protege.api.specialist import SpecialistSpec

TEACHER = {"url": "https://llm.example/v1", "model": "big"}


def examples(repo: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((repo / "examples").glob("*.yaml"))]


def test_examples_parse(repo: Path) -> None:
    parsed = {
        doc["kind"]: parse_spec(kind_for(doc["apiVersion"], doc["kind"]), doc["spec"])
        for doc in examples(repo)
    }
    pool, specialist = parsed["SpecialistPool"], parsed["Specialist"]
    assert isinstance(pool, SpecialistPoolSpec) and isinstance(specialist, SpecialistSpec)
    assert pool.engine.max_lora_rank == 32
    assert pool.teacher.api_key_secret_ref is not None and pool.teacher.api_key_secret_ref.key == "apiKey"
    assert specialist.rollout.canary_steps == [10, 50, 100]
    assert specialist.task.tenant == "acme"


def test_specs_fill_defaults_and_dump_camel_case() -> None:
    spec = parse_spec(SPECIALIST, {"pool": "p", "task": {"id": "t-1"}})
    assert spec.training.rank == 16 and spec.data.retention_days == 30
    with pytest.raises(SpecificationError, match="redactPii"):  # PII removal is curation's, per tenant
        parse_spec(SPECIALIST, {"pool": "p", "task": {"id": "t-1"}, "data": {"redactPii": True}})
    dumped = spec.to_kube()
    assert dumped["training"]["retrainAfterNewExamples"] == 2000
    assert SpecialistSpec.model_validate(dumped) == spec


POOL = {"baseModel": {"source": "smollm2-135m"}, "teacher": TEACHER}


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        (
            SPECIALIST_POOL,
            {**POOL, "replicas": {"min": 3, "max": 2}},
            "spec.replicas: replicas.min (3) exceeds replicas.max (2)",
        ),
        (
            SPECIALIST_POOL,
            {**POOL, "engine": {"maxLoraRank": 24}},
            "spec.engine.maxLoraRank: maxLoraRank 24 is not a rank vLLM supports",
        ),
        (
            SPECIALIST_POOL,
            {**POOL, "baseModel": {"source": "ftp://x"}},
            "spec.baseModel.source: model source 'ftp://x' has scheme 'ftp'",
        ),
        (
            SPECIALIST_POOL,
            {**POOL, "resources": {"memory": "lots"}},
            "spec.resources.memory: memory 'lots' is not a Kubernetes quantity",
        ),
        (SPECIALIST_POOL, {"baseModel": {"source": "smollm2-135m"}}, "spec.teacher: Field required"),
        (SPECIALIST_POOL, {**POOL, "replica": {"min": 1}}, "spec.replica: Extra inputs are not permitted"),
        (
            SPECIALIST_POOL,
            {**POOL, "engine": {"tensorParallelSize": 2}},
            "give each replica at least as many GPUs",
        ),
        (SPECIALIST, {"pool": "p", "task": {}}, "spec.task: task selects nothing: set task.id"),
        (SPECIALIST, {"pool": "Bad_Pool", "task": {"id": "t"}}, "spec.pool: String should match pattern"),
        (
            SPECIALIST,
            {"pool": "p", "task": {"id": "t"}, "rollout": {"canarySteps": [50, 10, 100]}},
            "must increase strictly",
        ),
        (
            SPECIALIST,
            {"pool": "p", "task": {"id": "t"}, "rollout": {"canarySteps": [10, 50]}},
            "must end at 100",
        ),
        (
            SPECIALIST,
            {"pool": "p", "task": {"id": "t"}, "training": {"method": "qlora", "resources": {"gpu": 0}}},
            "'qlora' needs CUDA",
        ),
        (
            SPECIALIST,
            {"pool": "p", "task": {"id": "t"}, "fallback": {"validateOutput": "json_schema"}},
            "needs fallback.jsonSchema",
        ),
        (
            SPECIALIST,
            {"pool": "p", "task": {"id": "t", "tenant": "a b"}},
            "spec.task.tenant: task.tenant 'a b' may only hold",
        ),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(kind: Any, spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecificationError) as raised:
        parse_spec(kind, spec)
    assert expected in str(raised.value)


def test_unknown_kind_or_version_is_refused() -> None:
    with pytest.raises(SpecificationError, match=r"use 'protege\.dev/v1alpha1'"):
        kind_for("protege.dev/v1", "Specialist")
    with pytest.raises(SpecificationError, match="use one of SpecialistPool, Specialist"):
        kind_for("protege.dev/v1alpha1", "Specialists")


def test_condition_transition_time_moves_only_on_status_change() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    conditions = set_condition([], "Ready", ConditionStatus.FALSE, "Training", now=t0)
    conditions = set_condition(
        conditions, "Ready", ConditionStatus.FALSE, "Evaluating", now=t0 + timedelta(1)
    )
    assert conditions[0].last_transition_time == t0 and conditions[0].reason == "Evaluating"
    conditions = set_condition(
        conditions, "Ready", ConditionStatus.TRUE, "Serving", observed_generation=3, now=t0 + timedelta(2)
    )
    assert conditions[0].last_transition_time == t0 + timedelta(2)
    assert conditions[0].to_kube()["observedGeneration"] == 3
