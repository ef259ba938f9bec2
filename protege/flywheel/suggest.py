"""A Specialist for a discovered task: `protege tasks suggest` prints it, `protege up` applies it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from protege.api.naming import as_dns_1035_label
from protege.api.specialist import OutputKind, OutputValidation, SpecialistSpec
from protege.evaluation import METRIC_FOR_KIND
from protege.tasks.discovery.tasks import Task

VALIDATION = {
    OutputKind.JSON: OutputValidation.JSON,
    OutputKind.TOOL_CALL: OutputValidation.TOOL_CALL,
    OutputKind.SQL: OutputValidation.SQL,
}


def specialist_name(task: Task, taken: Collection[str] = ()) -> str:
    """The task's proposed name as a DNS label (its id when nothing is left), unique among ``taken``.

    A name another Specialist already has gets the task id's tail: each task keeps its own
    Specialist, and the name stays the same on every heartbeat.
    """
    name = as_dns_1035_label(task.name) or as_dns_1035_label(task.id)
    if name in taken:
        name = f"{as_dns_1035_label(name, 52)}-{task.id.removeprefix('task-')[:10]}"
    return name


def suggest_specialist(task: Task, pool: str, policy: dict[str, Any] | None = None) -> SpecialistSpec:
    """Selects ``task`` by id and structure, scores it with its output kind's metric, validates
    answers of that kind before returning them; ``policy`` overrides spec fields (camelCase)."""
    shape = task.router.fingerprint
    spec: dict[str, Any] = {
        "pool": pool,
        "task": {
            "id": task.id,
            "tenant": shape.tenant,
            "match": {
                "systemPromptHash": shape.system_hash,
                "tools": list(shape.tools),
                "outputKind": task.output_kind.value,
            },
        },
        "evaluation": {"metric": METRIC_FOR_KIND[task.output_kind].value},
        "fallback": {"validateOutput": VALIDATION.get(task.output_kind, OutputValidation.NONE).value},
    }
    for field, value in (policy or {}).items():
        spec[field] = {**spec[field], **value} if isinstance(value, dict) and field in spec else value
    return SpecialistSpec.model_validate(spec)
