"""Discovered tasks and their router profiles: what the serving router matches calls against."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protege.api.specialist import OutputKind
from protege.training.examples import Example


class Fingerprint(BaseModel):
    """The structure of a call that does not change from call to call within a task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(description="Tasks never span tenants.")
    system_hash: str = Field(
        description="SHA-256 (16 hex) of the system prompt with numbers and spacing normalized."
    )
    tools: tuple[str, ...] = Field(default=(), description="Names of the tools offered, sorted.")
    response_format: str | None = Field(default=None, description="response_format.type, if any.")
    input_shape: str = Field(
        description="'code' when the user turn carries code (a query, a snippet), else 'text'."
    )
    output_kind: OutputKind = Field(description="What the answers are.")

    @property
    def structure(self) -> Structure:
        return (self.tenant, self.system_hash, self.tools, self.response_format, self.input_shape)

    @property
    def key(self) -> str:
        parts = [
            self.tenant,
            self.system_hash,
            ",".join(self.tools),
            self.response_format or "",
            self.input_shape,
        ]
        text = "|".join([*parts, self.output_kind])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalize_prompt(text: str) -> str:
    """Templated system prompts (a date, a user's name in quotes) hash alike."""
    text = re.sub(r"\d+", "0", text)
    return " ".join(text.split()).lower()


_CODE = re.compile(
    r"```|^\s*(?:def|class|import|function|const|let)\s|"
    r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b[\s\S]+?\b(?:FROM|INTO|SET|WHERE)\b",
    re.I | re.M,
)


def input_shape(text: str) -> str:
    return "code" if _CODE.search(text) else "text"


Structure = tuple[str, str, tuple[str, ...], str | None, str]


def call_structure(
    tenant: str,
    system_prompt: str,
    tools: list[dict[str, Any]] | None,
    response_format: dict[str, Any] | None,
    user_text: str,
) -> Structure:
    """What a call shows before it is answered: the fingerprint without the output kind.

    The router computes it from a request; discovery from an example (see ``fingerprint``).
    """
    return (
        tenant,
        hashlib.sha256(normalize_prompt(system_prompt).encode()).hexdigest()[:16],
        tuple(sorted(str(t.get("function", {}).get("name", "")) for t in tools or [])),
        (response_format or {}).get("type"),
        input_shape(user_text),
    )


def fingerprint(example: Example) -> Fingerprint:
    tenant, system_hash, tools, response_format, shape = call_structure(
        example.tenant, example.system_prompt, example.tools, example.response_format, example.user_text
    )
    return Fingerprint(
        tenant=tenant,
        system_hash=system_hash,
        tools=tools,
        response_format=response_format,
        input_shape=shape,
        output_kind=example.output_kind,
    )


class RouterProfile(BaseModel):
    """How the router recognizes a call of this task: same structure, and close enough in meaning."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: Fingerprint = Field(
        description="Structure a call must have (output kind aside: unknown before)."
    )
    centroids: list[list[float]] = Field(description="Unit-length mean embeddings of the task's user turns.")
    threshold: float = Field(ge=-1, le=1, description="Minimum cosine similarity to a centroid to match.")
    embedding_model: str = Field(description="The embedding model the centroids were made with.")


class Exemplar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Example (call record) id.")
    user_text: str = Field(description="The user turn, redacted, shortened for display.")


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable across re-runs: kept when the same task is found again.")
    name: str = Field(description="A proposed name, for people (rename freely in the Specialist).")
    size: int = Field(ge=0, description="Examples in the task at the last discovery run.")
    output_kind: OutputKind = Field(description="What the task's answers are; picks the evaluation metric.")
    example_ids: list[str] = Field(description="The examples of this task (record ids).")
    exemplars: list[Exemplar] = Field(description="A few representative examples.")
    router: RouterProfile = Field(description="What the serving router matches calls against.")
    first_seen: datetime = Field(description="When discovery first found this task.")


class TaskRegistry(BaseModel):
    """The result of a discovery run; the previous one is passed to the next run to keep ids stable."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, description="Format version.")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When this run ran.")
    examples: int = Field(default=0, description="Examples clustered in this run.")
    unassigned: list[str] = Field(
        default_factory=list, description="Examples in groups too small to be tasks."
    )
    tasks: list[Task] = Field(default_factory=list, description="The tasks, largest first.")

    def get(self, task_id: str) -> Task:
        for task in self.tasks:
            if task_id in (task.id, task.name):
                return task
        known = ", ".join(t.id for t in self.tasks) or "none yet (run `protege tasks discover`)"
        raise KeyError(f"no task {task_id!r}; known tasks: {known}")
