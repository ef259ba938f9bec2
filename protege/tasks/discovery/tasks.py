"""Discovered tasks and their router profiles: what the serving router matches calls against."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protege.api.specialist import OutputKind
from protege.tasks.discovery.features import (
    Novelty,
    SegmentCounts,
    Structure,
    call_structure,
    count_segments,
    novelty,
    words,
)
from protege.tasks.examples import Example


class Fingerprint(BaseModel):
    """The structure a task's calls share (see :mod:`.features`), its answers' kind, the tools called."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(description="Tasks never span tenants.")
    system_hash: str = Field(
        description="Hash of the system prompt's template: its recurring segments (features.system_skeleton)."
    )
    offers_tools: bool = Field(default=False, description="Whether the calls offer tools (which: any).")
    response_format: str | None = Field(default=None, description="response_format.type, if any.")
    input_shape: str = Field(
        description="'code' when the user turn carries code (a query, a snippet), else 'text'."
    )
    step: str = Field(
        default="user:0",
        description="Where the conversation is: the last message's role and the tool rounds before it.",
    )
    output_kind: OutputKind = Field(description="What the answers are.")
    tools: tuple[str, ...] = Field(
        default=(), description="Tools the task's answers call (evidence: not matched by the router)."
    )

    @property
    def structure(self) -> Structure:
        return Structure(
            self.tenant,
            self.system_hash,
            self.offers_tools,
            self.response_format,
            self.input_shape,
            self.step,
        )

    @property
    def key(self) -> str:
        text = "|".join([*(str(part) for part in self.structure), self.output_kind, ",".join(self.tools)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def of(cls, structure: Structure, output_kind: OutputKind, tools: tuple[str, ...] = ()) -> Fingerprint:
        return cls(
            tenant=structure.tenant,
            system_hash=structure.system,
            offers_tools=structure.offers_tools,
            response_format=structure.response_format,
            input_shape=structure.input_shape,
            step=structure.step,
            output_kind=output_kind,
            tools=tools,
        )


def example_structure(example: Example, counts: SegmentCounts) -> Structure:
    return call_structure(example.tenant, example.messages, example.tools, example.response_format, counts)


def tenant_segment_counts(examples: Iterable[Example], min_count: int = 1) -> dict[str, dict[str, int]]:
    """Per tenant, the recurring segments of the examples' system prompts (the registry's table)."""
    prompts: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        prompts[example.tenant].append(example.system_prompt)
    return {tenant: count_segments(prompts[tenant], min_count) for tenant in sorted(prompts)}


def fingerprint(example: Example, counts: SegmentCounts) -> Fingerprint:
    """One example's fingerprint, its system prompt read by the tenant's segment ``counts``."""
    return Fingerprint.of(example_structure(example, counts), example.output_kind)


class RouterProfile(BaseModel):
    """How the router recognizes a call of this task: same structure, and close enough in meaning."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: Fingerprint = Field(
        description="Structure a call must have (output kind aside: unknown before)."
    )
    centroids: list[list[float]] = Field(description="Unit-length mean embeddings of the task's user turns.")
    threshold: float = Field(ge=-1, le=1, description="Minimum cosine similarity to a centroid to match.")
    embedding_model: str = Field(description="The embedding model the centroids were made with.")
    words: dict[str, float] = Field(
        default_factory=dict,
        description="Log-probabilities of the most frequent words of its user turns (naive Bayes, among "
        "the tasks sharing its structure): settles most such calls before an embedding is needed. "
        "Its keys are the task's vocabulary, which a call's novelty is measured against.",
    )
    unseen_word: float = Field(default=0.0, description="Log-probability of a word not in `words`.")
    log_prior: float = Field(default=0.0, description="Log of its share of its structure's calls.")
    novelty_bar: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A call whose share of words the task's vocabulary lacks is above this is unlike "
        "the task's calls (novel): the 0.95 quantile of its own calls' leave-one-out share "
        "(features.novelty_bar). None for a task of fewer than 50 calls, and in registries written "
        "before it: no novelty is recorded.",
    )

    def novelty(self, text: str) -> Novelty | None:
        """How unlike the task's calls a user turn is; None without a bar or without words."""
        if self.novelty_bar is None:
            return None
        share = novelty(words(text), self.words)
        return None if share is None else Novelty(share, share > self.novelty_bar)


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

    version: Literal[2] = Field(default=2, description="Format version.")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When this run ran.")
    examples: int = Field(default=0, description="Examples clustered in this run.")
    unassigned: list[str] = Field(
        default_factory=list, description="Examples in groups too small to be tasks."
    )
    tasks: list[Task] = Field(default_factory=list, description="The tasks, largest first.")
    prompt_segments: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Per tenant, how many calls carried each recurring system-prompt segment "
        "(features.count_segments): what discovery and the router read templates by.",
    )

    def segment_counts(self, tenant: str) -> SegmentCounts:
        return self.prompt_segments.get(tenant, {})

    def with_other_tenants(self, previous: TaskRegistry | None, tenant: str) -> TaskRegistry:
        """This registry (one tenant's discovery) with every other tenant's tasks kept from ``previous``."""
        if previous is None:
            return self
        others = [t for t in previous.tasks if t.router.fingerprint.tenant != tenant]
        segments = {t: c for t, c in previous.prompt_segments.items() if t != tenant}
        return self.model_copy(
            update={
                "tasks": sorted([*self.tasks, *others], key=lambda t: (-t.size, t.id)),
                "prompt_segments": {**segments, **self.prompt_segments},
                "examples": self.examples + sum(t.size for t in others),
            }
        )

    def get(self, task_id: str) -> Task:
        for task in self.tasks:
            if task_id in (task.id, task.name):
                return task
        known = ", ".join(t.id for t in self.tasks) or "none yet (run `protege tasks discover`)"
        raise KeyError(f"no task {task_id!r}; known tasks: {known}")
