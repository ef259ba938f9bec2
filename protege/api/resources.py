"""The custom resources: their names, schemas and printer columns, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from protege.api.meta import API_VERSION, GROUP, KubeModel
from protege.api.pool import SpecialistPoolSpec, SpecialistPoolStatus
from protege.api.specialist import SpecialistSpec, SpecialistStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str
    spec: type[KubeModel]
    status: type[KubeModel]
    short_names: tuple[str, ...]
    description: str
    columns: tuple[PrinterColumn, ...] = field(default=())
    categories: tuple[str, ...] = ("protege",)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_READY = PrinterColumn(
    "Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready condition"
)
_PHASE = PrinterColumn("Phase", ".status.phase", description="Summary of the state")
_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

SPECIALIST_POOL = ResourceKind(
    kind="SpecialistPool",
    plural="specialistpools",
    spec=SpecialistPoolSpec,
    status=SpecialistPoolStatus,
    short_names=("spool",),
    description="One base model served by autoscaled multi-LoRA vLLM replicas (a RayService), "
    "shared by the Specialists that name it.",
    columns=(
        PrinterColumn("Base", ".spec.baseModel.source", description="Base model"),
        _PHASE,
        PrinterColumn("Replicas", ".status.readyReplicas", "integer", "Ready serving replicas"),
        _READY,
        _AGE,
    ),
)

SPECIALIST = ResourceKind(
    kind="Specialist",
    plural="specialists",
    spec=SpecialistSpec,
    status=SpecialistStatus,
    short_names=("sp",),
    description="A recurring task of an agent, learnt by a LoRA adapter trained on the task's logged "
    "calls, and rolled out from shadow through canary to serving.",
    columns=(
        PrinterColumn("Pool", ".spec.pool"),
        _PHASE,
        PrinterColumn("Active", ".status.activeVersion", description="Version serving traffic"),
        PrinterColumn("Traffic", ".status.trafficShare", "integer", "Percent of the task's calls answered"),
        PrinterColumn("VsTeacher", ".status.scoreVsTeacher", "number", "Score relative to the teacher"),
        PrinterColumn("Examples", ".status.examples", "integer", "Curated examples", priority=1),
        _READY,
        _AGE,
    ),
)

RESOURCE_KINDS = (SPECIALIST_POOL, SPECIALIST)


class SpecificationError(ValueError):
    """A custom resource's spec is invalid; the message names each field and how to fix it."""


def format_validation_error(error: ValidationError, root: str = "") -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in (root, *item["loc"]) if part != "")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{location or '(root)'}: {message}")
    return "; ".join(lines)


def parse_spec(kind: ResourceKind, spec: dict[str, Any] | None) -> Any:
    """Validate a resource's spec; raise SpecificationError naming every bad field."""
    try:
        return kind.spec.model_validate(spec or {})
    except ValidationError as error:
        raise SpecificationError(
            f"invalid {kind.kind} spec: {format_validation_error(error, 'spec')}"
        ) from None


def kind_for(api_version: str, kind: str) -> ResourceKind:
    if api_version != API_VERSION:
        raise SpecificationError(f"apiVersion {api_version!r} is not served; use {API_VERSION!r}")
    for candidate in RESOURCE_KINDS:
        if candidate.kind == kind:
            return candidate
    raise SpecificationError(
        f"kind {kind!r} is not a Protégé resource; use one of " + ", ".join(k.kind for k in RESOURCE_KINDS)
    )
