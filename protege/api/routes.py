"""The routing table's contract: which specialist version answers which task's calls, at which
rollout stage, with which fallback policy (pure types; written by the flywheel's drivers, read by
every gateway replica's router).

Versions are addressed as ``<specialist>@<version>``: immutable and content-addressed, so
a new version is always a new adapter name and never meets cached state of an older one.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protege.api.specialist import ConfidenceCheck, EvaluationMetric, FallbackSpec


class RolloutStage(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    SERVING = "serving"


ADAPTER_NAME = re.compile(
    r"^(?P<specialist>[a-z0-9][a-z0-9.-]{0,62})(?:@(?P<version>[A-Za-z0-9._-]{1,128}))?$"
)


class UnknownAdapterError(LookupError):
    """A caller named a specialist or version that is not served."""


def adapter_name(specialist: str, version: str) -> str:
    return f"{specialist}@{version}"


def parse_adapter_name(name: str) -> tuple[str, str | None]:
    """``<specialist>`` or ``<specialist>@<version>`` → (specialist, version or None)."""
    match = ADAPTER_NAME.match(name)
    if match is None:
        raise UnknownAdapterError(
            f"{name!r} is not a specialist name; use <specialist> or <specialist>@<version> "
            "(lowercase letters, digits, '-' and '.')"
        )
    return match["specialist"], match["version"]


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The candidate version being rolled out.")
    stage: RolloutStage = Field(description="shadow: answers compared only; canary: a traffic share.")
    traffic_percent: int = Field(default=0, ge=0, le=100, description="Share of calls it answers in canary.")
    since: datetime | None = Field(
        default=None, description="When it entered this stage or step: calls before do not count."
    )


class SpecialistRoute(BaseModel):
    """One specialist: its task, its versions and its fallback policy."""

    model_config = ConfigDict(extra="forbid")

    specialist: str = Field(description="Specialist name.")
    tenant: str = Field(description="Tenant whose calls it answers.")
    task_id: str = Field(description="Task from discovery whose calls it answers.")
    active: str | None = Field(
        default=None, description="Version answering the calls; None before the first."
    )
    previous: str | None = Field(
        default=None, description="The version that served before the active one: where a rollback returns."
    )
    candidate: Candidate | None = Field(default=None, description="Version in shadow or canary, if any.")
    failed: list[str] = Field(default_factory=list, description="Versions that failed to load: never routed.")
    fallback: FallbackSpec = Field(
        default_factory=FallbackSpec, description="When the teacher answers instead."
    )
    metric: EvaluationMetric | None = Field(
        default=None, description="The Specialist's evaluation.metric: how its answers are scored live."
    )
    teacher_sample_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of the calls it answers that the teacher answers too."
    )
    confidence_checks: dict[str, ConfidenceCheck] = Field(
        default_factory=dict,
        description="Each version's fallback check calibrated on its held-out split, by version.",
    )

    @model_validator(mode="after")
    def _versions(self) -> SpecialistRoute:
        if self.candidate is not None and self.candidate.version == self.active:
            raise ValueError(f"{self.specialist}: the candidate {self.active} is already the active version")
        return self

    @property
    def versions(self) -> list[str]:
        return [v for v in (self.active, self.candidate.version if self.candidate else None) if v]


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[SpecialistRoute] = Field(default_factory=list, description="One entry per specialist.")

    def replacing(self, specialist: str, route: SpecialistRoute | None) -> RoutingTable:
        """The table with ``specialist``'s route replaced by ``route`` (removed when None), sorted."""
        routes = [r for r in self.routes if r.specialist != specialist] + ([route] if route else [])
        return RoutingTable(routes=sorted(routes, key=lambda r: r.specialist))

    def for_task(self, tenant: str, task_id: str) -> SpecialistRoute | None:
        return next((r for r in self.routes if r.tenant == tenant and r.task_id == task_id), None)

    def for_specialist(self, specialist: str) -> SpecialistRoute | None:
        return next((r for r in self.routes if r.specialist == specialist), None)

    def pinned(self, name: str, tenant: str) -> tuple[SpecialistRoute, str]:
        """The route and version a caller named as its model; UnknownAdapterError otherwise."""
        specialist, version = parse_adapter_name(name)
        route = self.for_specialist(specialist)
        if route is None or route.tenant != tenant:  # another tenant's specialist is as good as unknown
            raise UnknownAdapterError(f"no specialist {specialist!r} is served; `protege specialists list`")
        version = version or route.active
        if version is None:
            raise UnknownAdapterError(f"specialist {specialist!r} has no active version yet")
        if version not in route.versions:
            raise UnknownAdapterError(
                f"specialist {specialist!r} has no version {version!r} served; served: {route.versions}"
            )
        if version in route.failed:
            raise UnknownAdapterError(f"{adapter_name(specialist, version)} failed to load and is not served")
        return route, version
