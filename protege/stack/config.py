"""What `protege up` runs: the pool, the policy for discovered tasks, the flywheel's pace."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protege.api.pool import SpecialistPoolSpec
from protege.flywheel.pace import FlywheelPace

# A pool for one CPU machine: SmolLM2-135M in vLLM's CPU build, one replica, four LoRA slots.
LOCAL_POOL: dict[str, Any] = {
    "baseModel": {"source": "smollm2-135m"},
    "engine": {
        "maxLoras": 4,
        "maxLoraRank": 16,
        "maxModelLen": 2048,
    },
    "replicas": {"min": 1, "max": 1, "targetOngoingRequests": 8},
    "resources": {"gpu": 0, "cpu": "1", "memory": "4Gi"},
    "teacher": {"url": "http://127.0.0.1/v1", "model": "teacher"},  # replaced by the stack's teacher
}

# Overrides for the Specialists created for discovered tasks: sized for a CPU and minutes.
LOCAL_POLICY: dict[str, Any] = {
    "data": {"minExamples": 40},
    "training": {
        "rank": 16,
        "epochs": 2,
        "batchSize": 8,
        "learningRate": 1e-3,
        "maxSeqLen": 768,
        "retrainAfterNewExamples": 40,
        "resources": {"gpu": 0, "cpu": "1", "memory": "6Gi"},
    },
    "evaluation": {"minRelativeToTeacher": 0.8},
    # Decisions at 90% confidence: with every call agreeing, 7 calls clear a bar of 0.7. A quarter of
    # the calls a specialist answers is also sent to the teacher, to score it live.
    "rollout": {
        "shadowCalls": 10,
        "canarySteps": [50, 100],
        "minCallsPerStep": 10,
        "minAgreement": 0.7,
        "confidence": 0.9,
        "teacherSampleRate": 0.25,
    },
}


class StackConfig(BaseModel):
    """`protege up`'s configuration (the demo builds one; `--config FILE` reads one)."""

    model_config = ConfigDict(extra="forbid")

    pool_name: str = Field(default="local", description="The pool's name (its Serve application).")
    pool: SpecialistPoolSpec = Field(default_factory=lambda: SpecialistPoolSpec.model_validate(LOCAL_POOL))
    policy: dict[str, Any] = Field(
        default_factory=lambda: dict(LOCAL_POLICY), description="Specialist overrides for new tasks."
    )
    flywheel: FlywheelPace = Field(default_factory=FlywheelPace)
    tenant: str = Field(default="local", description="Tenant of the agent key the stack makes.")
    app: str = Field(default="agent", description="App tag of that key's calls.")
    gateway_port: int | None = Field(default=8080, description="The gateway's port; a free one when null.")
    ray_cpus: int = Field(
        default=2,
        ge=2,
        description="Logical CPUs the local Ray offers: the replica's, the rest for jobs (one each).",
    )
    specialist_timeout_seconds: float = Field(
        default=120,
        gt=0,
        description="The gateway's router.timeoutSeconds. Here serving shares the CPUs with training: "
        "a tool call's answer took 38 s while a job ran, and a late answer counts as no answer.",
    )
    teacher_calls: int = Field(
        default=2000, ge=1, description="Workload calls the recorded teacher answers (no teacher.url)."
    )
    teacher_seed: int = Field(default=7, description="The recorded workload's seed.")
