"""The routing table: which specialist version answers which task's calls, and how much of them.

Written by the flywheel driver (locally) or the operator (from Specialist status) and
read by every gateway replica; the choice for one call is a pure function of the table
and a draw in [0, 1), so rollouts are testable without traffic. The draw comes from the
call's conversation (:func:`conversation_key`, :func:`conversation_draw`): every turn of one
conversation meets the same version, on every gateway replica and after restarts.

Versions are addressed as ``<specialist>@<version>``: immutable and content-addressed, so
a new version is always a new adapter name and never meets cached state of an older one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protege.api.calls import ChatRequest, RouteReason
from protege.api.specialist import ConfidenceCheck, EvaluationMetric, FallbackSpec
from protege.flywheel.policy import RolloutStage

ADAPTER_NAME = re.compile(
    r"^(?P<specialist>[a-z0-9][a-z0-9.-]{0,62})(?:@(?P<version>[A-Za-z0-9._-]{1,128}))?$"
)


# A caller's name for its conversation: the canary draw is made from it when present.
CONVERSATION_HEADER = "x-protege-conversation"
# OpenAI request fields that name the end user or the conversation, in the order they are read.
_CONVERSATION_FIELDS = ("user", "safety_identifier", "prompt_cache_key")


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


@dataclass(frozen=True)
class Choice:
    """Where one call goes: the version that answers it (None: the teacher), and a shadow."""

    version: str | None
    reason: RouteReason
    shadow: str | None = None


def choose(route: SpecialistRoute, draw: float) -> Choice:
    """The version for one call of ``route``'s task.

    ``draw`` is uniform in [0, 1) over calls (the router's: :func:`conversation_draw`); a
    canary answers the calls whose draw is below its ``traffic_percent``.
    """
    active = route.active if route.active not in route.failed else None
    candidate = route.candidate if route.candidate and route.candidate.version not in route.failed else None
    if (
        candidate is not None
        and candidate.stage is RolloutStage.CANARY
        and draw * 100 < candidate.traffic_percent
    ):
        return Choice(candidate.version, RouteReason.CANARY)
    shadow = candidate.version if candidate is not None and candidate.stage is RolloutStage.SHADOW else None
    if active is None:
        return Choice(None, RouteReason.SHADOW if shadow else RouteReason.NO_ACTIVE_SPECIALIST, shadow)
    return Choice(active, RouteReason.SPECIALIST, shadow)


def conversation_key(request: ChatRequest, header: str | None = None) -> str:
    """What makes calls one conversation, for the canary draw.

    The caller's ``x-protege-conversation`` header when it sent one; else the request's
    ``user``, ``safety_identifier`` or ``prompt_cache_key`` (the first present); else the
    system prompt and the first user message, which every later turn of the conversation
    repeats (two conversations that open alike are one to the draw).
    """
    if header:
        return "header:" + header
    extra = request.model_extra or {}
    for field in _CONVERSATION_FIELDS:
        value = request.user if field == "user" else extra.get(field)
        if isinstance(value, str) and value:
            return f"{field}:{value}"
    opening = []
    for message in request.messages:
        if message.role in ("system", "developer", "user"):
            opening.append([message.role, message.content])
        if message.role == "user":
            break
    return "opening:" + json.dumps(opening, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def conversation_draw(route: SpecialistRoute, key: str) -> float:
    """The draw in [0, 1) for a conversation of ``route``'s task: uniform over keys, and stable.

    The first 8 bytes of a sha256 over the key and the candidate, as a fraction of 2**64:
    the same on every replica and after restarts. With the candidate in it, each rollout
    draws its own canary conversations (not always the same ones), and the conversations a
    canary step holds stay in it at the next, larger step.
    """
    candidate = route.candidate.version if route.candidate is not None else ""
    digest = hashlib.sha256(f"{route.specialist}@{candidate}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
