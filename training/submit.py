"""Run the training job through Ray's job submission API (a local Ray here, a RayJob in a cluster)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any

from protege.training.job import JobSpec


class JobFailedError(RuntimeError):
    """The training job ended without a result; the message carries the end of its logs."""


def entrypoint(spec: JobSpec, python: str = sys.executable) -> str:
    """The command a RayJob runs and a local submission runs: one and the same."""
    return f"{shlex.quote(python)} -m protege.training.job --spec {shlex.quote(spec.model_dump_json())}"


def run_on_ray(
    spec: JobSpec,
    address: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 3600,
    poll: float = 2.0,
) -> dict[str, Any]:
    """Submit the job, wait for it, and return the JSON result it printed last.

    ``headers`` authenticate to a cluster with token authentication (``Authorization:
    Bearer <token>``); without them Ray's own token discovery applies.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address, headers=headers)
    # The job reads the same settings as this process: pass the PROTEGE_* variables on.
    env = {name: value for name, value in os.environ.items() if name.startswith(("PROTEGE_", "HF_"))}
    job_id = client.submit_job(entrypoint=entrypoint(spec), runtime_env={"env_vars": env})
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in (
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    ):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobFailedError(f"training job {job_id} did not finish in {timeout:.0f} s; stopped it")
        time.sleep(poll)
    logs = client.get_job_logs(job_id)
    if status is not JobStatus.SUCCEEDED:
        raise JobFailedError(f"training job {job_id} {status.value.lower()}:\n{logs[-3000:]}")
    return dict(json.loads(logs.strip().splitlines()[-1]))
