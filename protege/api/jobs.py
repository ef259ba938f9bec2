"""A training job's contract: what it is asked (``JobSpec``), its one name, and what it reports
(``JobResult``). Pure: the job (:mod:`protege.training.job`) runs it, the drivers start it and read
its result, the flywheel decides on the scores (the gate is the flywheel's, never the job's).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protege.api.naming import KUBERAY_NAME_MAX, child_name
from protege.api.specialist import ConfidenceCheck, EvaluationSpec, Scores, TrainingSpec

ADAPTER_KIND = "adapter"  # artifact kind of the adapters jobs store
REPORT_KIND = "report"  # artifact kind of their evaluation reports
RESULTS_AREA = "job-results"  # one object per job, under its name: what the drivers read back


class JobSpec(BaseModel):
    """What one training job does (the RayJob's entrypoint argument)."""

    model_config = ConfigDict(extra="forbid")

    specialist: str = Field(
        pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$", description="Specialist the adapter is for."
    )
    task: str = Field(description="Task id; its dataset is artifact dataset/<task>.")
    dataset_version: str | None = Field(default=None, description="Dataset version; the latest when unset.")
    base_model: str = Field(
        description="The pool's baseModel.source: a catalogue id, hf://org/name, s3://bucket/prefix, "
        "pvc://claim/path or file:///path."
    )
    base_model_revision: str | None = Field(
        default=None, description="The pool's baseModel.revision: the hub revision to train on."
    )
    max_lora_rank: int = Field(default=64, ge=1, description="The pool's engine.maxLoraRank.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="The Specialist's evaluation block: its metric scores."
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many steps (tests, smoke runs)."
    )
    few_shot: int = Field(default=3, ge=0, le=16, description="Examples from train shown to the base model.")
    max_new_tokens: int = Field(default=256, ge=1, description="Generation limit during evaluation.")
    min_train_examples: int = Field(default=8, ge=1, description="Refuse smaller training splits.")


# Fields added after jobs were named (dotted: nested): left out of the id while unset, so a spec without
# them keeps its job's name (an operator upgraded mid-job finds the job it started, rather than starting
# another).
_UNNAMED_WHEN_UNSET = ("base_model_revision", "training.micro_batch_size")


def job_id(spec: JobSpec) -> str:
    """Deterministic: the same spec always has the same id (the RayJob's name ends with it)."""
    unset: dict[str, Any] = {}
    for path in _UNNAMED_WHEN_UNSET:
        *parents, name = path.split(".")
        owner: Any = spec
        for parent in parents:
            owner = getattr(owner, parent)
        if getattr(owner, name) is None:
            node = unset
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = True
    return hashlib.sha256(spec.model_dump_json(exclude=unset).encode()).hexdigest()[:10]


def job_name(spec: JobSpec) -> str:
    """The job's one name: its Ray submission id, its RayJob's name, the key of its result.

    ``<specialist>-train-<id>``, cut and hashed to fit KubeRay's 47 characters
    (:func:`protege.api.naming.child_name`); nothing parses it back.
    """
    return child_name(spec.specialist, f"train-{job_id(spec)}", KUBERAY_NAME_MAX)


class JobResult(BaseModel):
    """What a job reports, stored under its name: the adapter and report it stored, its scores and
    fallback check; or only ``error``, when it refused to run."""

    model_config = ConfigDict(extra="forbid")

    adapter_version: str | None = Field(default=None, description="The adapter's content-addressed version.")
    adapter_uri: str | None = Field(default=None, description="Where the adapter is stored.")
    report_version: str | None = Field(default=None, description="The evaluation report's version.")
    dataset_version: str | None = Field(default=None, description="The dataset version it trained on.")
    scores: Scores | None = Field(default=None, description="Scores on the frozen test split.")
    confidence_check: ConfidenceCheck | None = Field(
        default=None, description="The fallback check calibrated on the test split, if one was found."
    )
    error: str | None = Field(default=None, description="Why the job refused to run.")
