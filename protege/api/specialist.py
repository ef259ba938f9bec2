"""Specialist: one recurring task of an agent, learnt by a LoRA adapter in a SpecialistPool."""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, Field, field_validator, model_validator

from protege.api.calls import check_subject_token
from protege.api.meta import (
    CONDITIONS_LIST_MAP,
    ComputeResources,
    Condition,
    DnsLabel,
    KubeModel,
    Toleration,
)


class OutputKind(StrEnum):
    LABEL = "label"
    JSON = "json"
    TOOL_CALL = "tool_call"
    SQL = "sql"
    PROSE = "prose"


class TaskMatch(KubeModel):
    """Structural facts a call must have to belong to the task (all that are set must hold)."""

    apps: list[str] = Field(default_factory=list, description="App tags the calls come from; any when empty.")
    system_prompt_hash: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{8,64}$",
        description="Hash of the system-prompt template (from `protege tasks show`).",
    )
    tools: list[str] = Field(
        default_factory=list,
        description="Tools the task's answers call (for a final answer: whose results it reads).",
    )
    output_kind: OutputKind | None = Field(default=None, description="Kind of answer the task produces.")


class TaskSelector(KubeModel):
    id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][-a-z0-9]{0,62}$",
        description="Task id from task discovery (`protege tasks list`); stable across re-runs.",
    )
    tenant: str = Field(
        default="default", description="Tenant whose calls train this specialist; tenants never mix."
    )
    match: TaskMatch = Field(default_factory=TaskMatch, description="Structural match for the task's calls.")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return check_subject_token(value, "task.tenant")

    @model_validator(mode="after")
    def _something_selected(self) -> TaskSelector:
        m = self.match
        if self.id is None and not (m.apps or m.system_prompt_hash or m.tools or m.output_kind):
            raise ValueError(
                "task selects nothing: set task.id (see `protege tasks list`) or at least one field of "
                "task.match; `protege tasks suggest` prints both"
            )
        return self


class DataPolicy(KubeModel):
    min_examples: int = Field(
        default=500, ge=1, description="Curated examples needed before the first training."
    )
    max_examples: int | None = Field(
        default=None, ge=1, description="Newest examples used per training; all when unset."
    )
    retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Only examples logged in the last this many days go into a training's dataset.",
    )
    max_input_drift: float | None = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Retrain, once new examples arrived, when more than this share of the task's calls are "
        "unlike its training calls (status.drift: the lower bound of the novel share's interval at "
        "rollout.confidence is above it; about 5% are when the traffic has not changed); never when unset.",
    )


class TrainingMethod(StrEnum):
    LORA = "lora"
    QLORA = "qlora"


_MICRO_BATCH_MESSAGE = (
    "training.microBatchSize must divide training.batchSize / training.workers (the examples of one "
    "worker's step)"
)


class TrainingSpec(KubeModel):
    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.microBatchSize) || "
                    "(self.batchSize / self.workers) % self.microBatchSize == 0",
                    "message": _MICRO_BATCH_MESSAGE,
                }
            ]
        }
    }

    method: TrainingMethod = Field(
        default=TrainingMethod.LORA, description="'lora', or 'qlora' (4-bit, CUDA only)."
    )
    rank: int = Field(
        default=16, ge=1, le=512, description="LoRA rank; at most the pool's engine.maxLoraRank."
    )
    alpha: int | None = Field(default=None, ge=1, description="LoRA alpha; twice the rank when unset.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, description="Modules to adapt, or 'all-linear'."
    )
    epochs: float = Field(default=2, gt=0, le=100, description="Passes over the training split.")
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int = Field(
        default=8, ge=1, le=4096, description="Examples per optimizer step (all workers)."
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples per forward pass; each step accumulates batchSize / microBatchSize passes "
        "(the same update, less memory: activations grow with the tokens of one pass). Must divide "
        "batchSize (per worker). Unset: the whole batch on a GPU; on CPU, as many as keep a pass near "
        "512 tokens at the training examples' mean length.",
    )
    max_seq_len: int = Field(default=2048, ge=64, description="Longer examples are dropped, not cut.")
    packing: bool = Field(
        default=False,
        description="Concatenate each step's examples into one row without padding, attention kept "
        "within each example (fastest with flash-attention on GPUs); false pads length-bucketed batches.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for data order and initialisation.")
    workers: int = Field(default=1, ge=1, le=256, description="Ray Train workers (data parallel).")
    resources: ComputeResources = Field(
        default_factory=lambda: ComputeResources(gpu=1), description="Resources of each training worker."
    )
    retrain_after_new_examples: int | None = Field(
        default=2000, ge=1, description="Retrain once this many new examples arrived; never when unset."
    )
    schedule: str | None = Field(
        default=None,
        pattern=r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$",
        description="Cron schedule for retraining, in addition to the example count.",
    )
    active_deadline_seconds: int = Field(
        default=21600,
        ge=60,
        description="A training job still running after this long is stopped and recorded as failed "
        "(the RayJob's activeDeadlineSeconds).",
    )
    queue_name: DnsLabel | None = Field(
        default=None,
        description="Kueue LocalQueue of the training job (its label kueue.x-k8s.io/queue-name): Kueue "
        "admits it when the queue's quota allows.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels for the training workers; the pool's when unset."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations for the training workers; the pool's when unset."
    )

    @model_validator(mode="after")
    def _micro_batches_fill_a_step(self) -> TrainingSpec:
        if self.micro_batch_size is not None and (self.batch_size // self.workers) % self.micro_batch_size:
            raise ValueError(
                f"{_MICRO_BATCH_MESSAGE}: {self.micro_batch_size} does not divide "
                f"{self.batch_size} / {self.workers}"
            )
        return self

    @model_validator(mode="after")
    def _qlora_needs_gpu(self) -> TrainingSpec:
        if self.method is TrainingMethod.QLORA and self.resources.gpu < 1:
            raise ValueError(
                "training.method 'qlora' needs CUDA: set training.resources.gpu to 1 or more, "
                "or use method 'lora'"
            )
        return self


class EvaluationMetric(StrEnum):
    AUTO = "auto"
    EXACT_MATCH = "exact_match"
    JSON_FIELDS = "json_fields"
    TOOL_CALL = "tool_call"
    SQL_EXECUTION = "sql_execution"
    SIMILARITY = "similarity"


class EvaluationSpec(KubeModel):
    metric: EvaluationMetric = Field(
        default=EvaluationMetric.AUTO, description="Task score; 'auto' picks it from the task's output kind."
    )
    min_score: float | None = Field(default=None, ge=0, le=1, description="Absolute score a candidate needs.")
    min_relative_to_teacher: float = Field(
        default=0.95, ge=0, le=1.5, description="Candidate score divided by the teacher's that it needs."
    )


class RolloutSpec(KubeModel):
    model_config = KubeModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "size(self.canarySteps) == 0 "
                    "|| self.canarySteps[size(self.canarySteps) - 1] == 100",
                    "message": "rollout.canarySteps must end at 100",
                }
            ]
        }
    }

    shadow_calls: int = Field(
        default=20, ge=0, description="At least this many shadow answers scored before the canary (a floor)."
    )
    canary_steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100],
        max_length=20,
        description="Traffic percentages, ending at 100.",
    )
    min_calls_per_step: int = Field(
        default=20, ge=1, description="At least this many scored calls before a canary step moves (a floor)."
    )
    max_calls_per_step: int = Field(
        default=1000,
        ge=1,
        description="When the interval still spans minAgreement after this many calls, the mean decides.",
    )
    min_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Agreement with the teacher a version must show: it moves on once the interval's lower "
        "bound reaches it, and is rolled back once the upper bound falls below it (serving included).",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence level of the agreement interval (Wilson)."
    )
    teacher_sample_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of the calls a canary or serving version answers that the teacher also answers, "
        "off the request path, to score it (within the gateway's router.teacherSamplesPerMinute).",
    )
    watch_minutes: int = Field(
        default=60,
        ge=1,
        description="The serving version's agreement is estimated over the teacher samples of this window.",
    )
    auto_rollback: bool = Field(
        default=True,
        description="Roll back a version whose agreement falls below minAgreement (to the previous good "
        "version, or to the teacher), and retrain on the teacher's new answers.",
    )

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps):
            raise ValueError(f"rollout.canarySteps {steps}: every step is a percentage from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"rollout.canarySteps {steps} must increase strictly, e.g. [10, 50, 100]")
        if steps and steps[-1] != 100:
            raise ValueError(f"rollout.canarySteps {steps} must end at 100, e.g. [10, 50, 100]")
        return steps


class OutputValidation(StrEnum):
    NONE = "none"
    JSON = "json"
    JSON_SCHEMA = "json_schema"
    TOOL_CALL = "tool_call"
    SQL = "sql"


class ConfidenceSignal(StrEnum):
    MEAN = "mean"  # the mean token probability
    MINIMUM = "minimum"  # the least likely token: where one wrong decisive token shows
    LOW_DECILE = "low_decile"  # the bound of the lowest tenth of the token probabilities


class ConfidenceCheck(KubeModel):
    """A version's fallback check, calibrated on its held-out split: an answer whose signal is below
    the threshold goes to the teacher."""

    signal: ConfidenceSignal = Field(description="Which token-probability signal of the answer is read.")
    threshold: float = Field(ge=0, le=1, description="Answers whose signal is below it go to the teacher.")
    precision: float = Field(
        ge=0, le=1, description="Of the held-out answers it sends to the teacher, the share that disagreed."
    )
    recall: float = Field(
        ge=0, le=1, description="Of the held-out answers that disagreed, the share it catches."
    )
    fallback_rate: float = Field(
        ge=0, le=1, description="Share of the held-out answers it sends to the teacher."
    )
    examples: int = Field(ge=0, description="Held-out answers it was calibrated on.")
    disagreements: int = Field(ge=0, description="Of those, the answers that disagreed with the teacher.")


class FallbackSpec(KubeModel):
    validate_output: OutputValidation = Field(
        default=OutputValidation.NONE, description="Check each answer; invalid ones go to the teacher."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON schema answers must satisfy, for validateOutput 'json_schema'.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Mean token probability below which the teacher answers; when set, it replaces the "
        "calibrated check.",
    )
    calibrated_confidence: bool = Field(
        default=True,
        description="Send an answer to the teacher when the version's confidence check, calibrated on its "
        "held-out split (status.versions[].confidenceCheck), says it likely disagrees with the teacher.",
    )

    @model_validator(mode="after")
    def _schema_given(self) -> FallbackSpec:
        if self.validate_output is OutputValidation.JSON_SCHEMA and not self.json_schema:
            raise ValueError("fallback.validateOutput 'json_schema' needs fallback.jsonSchema")
        return self


class DeletionPolicy(StrEnum):
    """What deleting a Specialist does to its stored adapters and evaluation reports (as a
    PersistentVolume's reclaim policy, or Crossplane's deletionPolicy)."""

    DELETE = "Delete"
    RETAIN = "Retain"


class SpecialistSpec(KubeModel):
    pool: DnsLabel = Field(
        description="Name of the SpecialistPool (same namespace) that serves it; immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec.pool is immutable: its adapters are trained for that pool's base model; "
                    "delete the Specialist and create it for the other pool",
                }
            ]
        },
    )
    task: TaskSelector = Field(description="Which calls make up the task.")
    data: DataPolicy = Field(
        default_factory=DataPolicy, description="When there is enough data, and its care."
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="How adapters are trained.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="The gate a candidate passes."
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Shadow and canary steps.")
    fallback: FallbackSpec = Field(
        default_factory=FallbackSpec, description="When the teacher answers instead."
    )
    suspend: bool = Field(default=False, description="Stop training and rollout; serving stays as it is.")
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.DELETE,
        description="What deleting the Specialist does to its adapters and evaluation reports in the "
        "artifact store: 'Delete' removes them, 'Retain' keeps them (under adapter/<name>/ and "
        "report/<name>/). Either way its route is removed and its training jobs are stopped.",
    )


class SpecialistPhase(StrEnum):
    PENDING = "Pending"
    COLLECTING_DATA = "CollectingData"
    TRAINING = "Training"
    SHADOW = "Shadow"
    CANARY = "Canary"
    SERVING = "Serving"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class VersionState(StrEnum):
    TRAINING = "Training"
    REJECTED = "Rejected"
    FAILED = "Failed"
    SHADOW = "Shadow"
    CANARY = "Canary"
    SERVING = "Serving"
    RETIRED = "Retired"
    ROLLED_BACK = "RolledBack"


class Scores(KubeModel):
    metric: EvaluationMetric = Field(description="Metric the scores are in.")
    specialist: float = Field(description="Candidate's score on the frozen test split.")
    teacher: float = Field(description="Teacher's score on the same split.")
    base_zero_shot: float | None = Field(default=None, description="Base model's zero-shot score.")
    relative_to_teacher: float = Field(description="specialist / teacher.")


class SpecialistVersion(KubeModel):
    version: str | None = Field(
        default=None, description="Content-addressed adapter version; unset until its job stored it."
    )
    state: VersionState = Field(description="Where the version is in its life.")
    dataset_version: str | None = Field(default=None, description="Dataset version it was trained on.")
    adapter_uri: str | None = Field(default=None, description="Where the adapter is stored.")
    job_name: str | None = Field(default=None, description="The RayJob (or local job) that trained it.")
    examples: int | None = Field(default=None, ge=0, description="Curated examples when training started.")
    scores: Scores | None = Field(default=None, description="Evaluation result.")
    confidence_check: ConfidenceCheck | None = Field(
        default=None,
        description="Its fallback check calibrated on the held-out split; none when too few held-out "
        "answers disagreed with the teacher, or no signal told them apart.",
    )
    created_at: AwareDatetime | None = Field(default=None, description="When training started.")
    message: str = Field(default="", description="Why it is in its state.")


class CandidateStep(KubeModel):
    """Where the candidate version is in its rollout: the step the routing table routes it at."""

    stage: Literal["shadow", "canary"] = Field(
        description="shadow: its answers scored, not returned; canary: it answers a share of the calls."
    )
    traffic_percent: int = Field(
        default=0, ge=0, le=100, description="Share of the calls it answers in canary."
    )
    since: AwareDatetime | None = Field(
        default=None, description="When it entered this stage or step: calls before do not count."
    )


class LiveAgreement(KubeModel):
    """A version's agreement with the teacher on live traffic, with its confidence interval."""

    version: str = Field(description="The version measured.")
    stage: str = Field(description="shadow, canary or serving.")
    calls: int = Field(ge=0, description="Calls scored against the teacher.")
    agreement: float = Field(ge=0, le=1, description="Mean score against the teacher.")
    low: float = Field(ge=0, le=1, description="Lower bound of the interval.")
    high: float = Field(ge=0, le=1, description="Upper bound of the interval.")
    confidence: float = Field(gt=0, lt=1, description="The interval's confidence level.")


class InputDrift(KubeModel):
    """How many of the task's recent calls are unlike its training calls, with a confidence interval."""

    calls: int = Field(
        ge=0, description="The task's matched calls measured (those the router gave a novelty)."
    )
    novel: float = Field(
        ge=0,
        le=1,
        description="Share of them whose words the task's vocabulary lacks more than its novelty bar allows.",
    )
    low: float = Field(ge=0, le=1, description="Lower bound of the interval.")
    high: float = Field(ge=0, le=1, description="Upper bound of the interval.")
    confidence: float = Field(gt=0, lt=1, description="The interval's confidence level.")
    expected: float = Field(
        ge=0,
        le=1,
        description="The share expected of calls like the training calls (1 - the bar's quantile).",
    )


class SpecialistStatus(KubeModel):
    phase: SpecialistPhase = Field(default=SpecialistPhase.PENDING, description="Summary of the state.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Ready, DataReady, Trained, ...",
    )
    examples: int = Field(default=0, ge=0, description="Curated examples of the task.")
    new_examples: int = Field(default=0, ge=0, description="Examples since the active version's dataset.")
    active_version: str | None = Field(default=None, description="Version serving the task's traffic.")
    candidate_version: str | None = Field(default=None, description="Version in shadow or canary.")
    candidate_step: CandidateStep | None = Field(
        default=None, description="The candidate version's stage, traffic share and since when."
    )
    previous_version: str | None = Field(
        default=None,
        description="Version that served before the active one: where a rollback of it returns.",
    )
    traffic_share: int = Field(
        default=0, ge=0, le=100, description="Percent of the task's calls answered by a specialist version."
    )
    score_vs_teacher: float | None = Field(default=None, description="Active version's score / teacher's.")
    versions: list[SpecialistVersion] = Field(
        default_factory=list, description="Recent versions, newest last."
    )
    task_id: str | None = Field(default=None, description="The discovered task the selector resolved to.")
    handled_trigger: str | None = Field(
        default=None, description="Value of the protege.dev/train annotation last acted on."
    )
    live: LiveAgreement | None = Field(
        default=None, description="Live agreement with the teacher of the version in rollout or serving."
    )
    retrain_reason: str | None = Field(
        default=None, description="Why a retraining is due regardless of new examples (a rollback)."
    )
    drift: InputDrift | None = Field(
        default=None,
        description="Input drift: the share of the task's calls unlike its training calls, over the last "
        "rollout.watchMinutes since the newest training started (checked against data.maxInputDrift).",
    )
