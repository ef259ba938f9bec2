"""The local flywheel's pace: how often it ticks and discovers (`protege up` sets it per stack)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FlywheelPace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(default=5, gt=0, description="Pause between two heartbeats.")
    discover_every_seconds: float = Field(default=30, ge=0, description="Least time between discoveries.")
    min_task_size: int = Field(default=20, ge=2, description="Examples a cluster needs to be a task.")
    job_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra training-job fields (max_steps, few_shot, max_new_tokens)."
    )
