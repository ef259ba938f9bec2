"""Kubernetes-flavoured building blocks shared by the custom resources."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "protege.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=63)]
Quantity = Annotated[
    str | int,
    Field(
        description="A Kubernetes quantity, e.g. 4, '500m', '16Gi'.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    ),
]


def check_quantity(value: str | int, field: str) -> str | int:
    if isinstance(value, int) or re.match(_QUANTITY, value):
        return value
    raise ValueError(f"{field} {value!r} is not a Kubernetes quantity; write e.g. 4, '500m' or '16Gi'")


_SUFFIXES = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity_value(value: str | int) -> float:
    """A Kubernetes quantity as a number: '500m' → 0.5, '16Gi' → 17179869184."""
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", value)
    if match is None or match[2] not in ("", *_SUFFIXES):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(match[1]) * _SUFFIXES.get(match[2], 1.0)


class KubeModel(BaseModel):
    """A part of a custom resource: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=False
    )

    def to_kube(self) -> dict[str, Any]:
        """The object as the Kubernetes API stores it (camelCase, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_merge_patch(self) -> dict[str, Any]:
        """``to_kube`` with unset top-level fields as null, so a JSON merge patch removes them."""
        unset = {
            (field.alias or name): None
            for name, field in type(self).model_fields.items()
            if getattr(self, name) is None
        }
        return unset | self.to_kube()


ModelT = TypeVar("ModelT", bound=BaseModel)


def spec_problems(error: ValidationError) -> str:
    """Every wrong field of a spec, as ``spec.<path>: <what is wrong>`` joined by "; "."""
    return "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())


def spec_or_problems(model: type[ModelT], spec: Mapping[str, Any], kind: str) -> ModelT | str:
    """The spec as ``model``, or what is wrong with it: ``invalid <kind>: `` and every wrong field."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as error:
        return f"invalid {kind}: {spec_problems(error)}"


# Conditions are a list keyed by type, as in every built-in Kubernetes status.
CONDITIONS_LIST_MAP: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A metav1.Condition."""

    type: str = Field(description="Condition type in CamelCase, e.g. 'Ready'.", max_length=316)
    status: ConditionStatus = Field(description="'True', 'False' or 'Unknown'.")
    reason: str = Field(
        description="One CamelCase word saying why the condition is in its status.",
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
    )
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: AwareDatetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


def set_condition(
    conditions: list[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    *,
    message: str = "",
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type`` set; lastTransitionTime moves only when status changes."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    previous = next((c for c in conditions if c.type == type), None)
    changed_at = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=changed_at,
        observed_generation=observed_generation,
    )
    return [c for c in conditions if c.type != type] + [updated]


def set_progress(
    conditions: list[Condition],
    *,
    reconciling: tuple[str, str] | None = None,
    stalled: tuple[str, str] | None = None,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """Return ``conditions`` with kstatus's two abnormal-true conditions as they are now.

    ``Reconciling`` (reason, message) while the controller works towards the spec (a job runs,
    a rollout moves, a pool comes up), ``Stalled`` (reason, message) when it cannot get there
    without a change from outside (an invalid spec, a failed job with no new data). Each is
    removed when it does not hold: kstatus, Flux and ``kubectl wait`` read an absent one as
    False, and the resource is Current once neither is True and ``observedGeneration`` is
    the generation.
    """
    for type, held in (("Reconciling", reconciling), ("Stalled", stalled)):
        if held is None:
            conditions = [c for c in conditions if c.type != type]
        else:
            reason, message = held
            conditions = set_condition(
                conditions,
                type,
                ConditionStatus.TRUE,
                reason,
                message=message,
                observed_generation=observed_generation,
                now=now,
            )
    return conditions


class SecretKeyRef(KubeModel):
    """A key of a Secret in the resource's namespace; secrets are only ever referenced."""

    name: DnsLabel = Field(description="Name of the Secret.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key inside the Secret."
    )


class Toleration(KubeModel):
    """A corev1.Toleration, so GPU pools can run on tainted GPU nodes."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all.")
    operator: str = Field(default="Equal", pattern=r"^(Equal|Exists)$", description="'Equal' or 'Exists'.")
    value: str | None = Field(default=None, description="Taint value, for operator Equal.")
    effect: str | None = Field(
        default=None,
        pattern=r"^(NoSchedule|PreferNoSchedule|NoExecute)$",
        description="Taint effect to tolerate; empty tolerates all.",
    )
    toleration_seconds: int | None = Field(default=None, description="For NoExecute: how long to stay.")


class ComputeResources(KubeModel):
    """Resources of one Ray worker (serving replica or training worker)."""

    gpu: int = Field(default=0, ge=0, le=16, description="GPUs (nvidia.com/gpu) per worker.")
    cpu: Quantity = Field(default="4", description="CPU request and limit per worker.")
    memory: Quantity = Field(default="16Gi", description="Memory request and limit per worker.")
    accelerator_type: str | None = Field(
        default=None,
        description="Ray accelerator type to schedule on, e.g. 'H100' or 'L4'; any GPU when empty.",
    )

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | int) -> str | int:
        return check_quantity(value, "cpu")

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int) -> str | int:
        return check_quantity(value, "memory")
