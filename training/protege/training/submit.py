"""Run the training job through Ray's job submission API (a local Ray here, a RayJob in a cluster)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any

from protege.api.jobs import JobResult, JobSpec, job_name

SPECIALIST = "protege.dev/specialist"  # job metadata: whose job it is (exact, never a name prefix)
RESERVED_CPUS = "protege.dev/reserved-cpus"  # job metadata: the CPUs its entrypoint holds
SUBMIT_ATTEMPTS = 60


class JobFailedError(RuntimeError):
    """The training job ended without a result; the message carries the end of its logs."""


def entrypoint(spec: JobSpec, python: str = sys.executable, *, yield_cpus: bool = False) -> str:
    """The command a RayJob runs and a local submission runs: one and the same (``yield_cpus``:
    the job trains only on CPU time nothing else wants, :func:`protege.training.job.yield_cpus`)."""
    command = f"{shlex.quote(python)} -m protege.training.job --spec {shlex.quote(spec.model_dump_json())}"
    return command + " --yield-cpus" if yield_cpus else command


def submit(
    client: Any,
    spec: JobSpec,
    *,
    env: dict[str, str],
    reserved_cpus: float | None = None,
    yield_cpus: bool = False,
) -> str:
    """Start the job on Ray unless it is there already; its name (:func:`job_name`) is its submission
    id, so the same spec is always one job. The one way a job is launched through Ray's job API.

    ``client`` is a ``ray.job_submission.JobSubmissionClient``; ``env`` the job's environment;
    ``reserved_cpus`` the CPUs its entrypoint holds (None: none); ``yield_cpus`` whether it
    gives the CPUs to anything else that wants them (a machine that also serves).
    """
    name = job_name(spec)
    try:
        client.get_job_info(name)
        return name  # submitted before (by this process or one before it)
    except RuntimeError:  # the client's way of saying 404
        pass
    command = entrypoint(spec, yield_cpus=yield_cpus)
    metadata = {SPECIALIST: spec.specialist, RESERVED_CPUS: str(reserved_cpus or 0)}
    for attempt in range(SUBMIT_ATTEMPTS):
        try:
            client.submit_job(
                entrypoint=command,
                submission_id=name,
                runtime_env={"env_vars": env},
                entrypoint_num_cpus=reserved_cpus,
                metadata=metadata,
            )
            break
        except RuntimeError as error:  # a fresh head's job agent comes up after its dashboard
            if "No available agent" not in str(error) or attempt == SUBMIT_ATTEMPTS - 1:
                raise
            time.sleep(1)
    return name


def job_environment() -> dict[str, str]:
    """What a job reads its settings from: this process's PROTEGE_* (and HF_*) variables."""
    return {name: value for name, value in os.environ.items() if name.startswith(("PROTEGE_", "HF_"))}


def run_on_ray(
    spec: JobSpec,
    address: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 3600,
    poll: float = 2.0,
) -> JobResult:
    """Submit the job, wait for it, and return the result it printed last.

    ``headers`` authenticate to a cluster with token authentication (``Authorization:
    Bearer <token>``); without them Ray's own token discovery applies.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address, headers=headers)
    job_id = job_name(spec)
    try:  # the same spec ran before: a success is returned again, a failure runs anew
        if client.get_job_status(job_id) in (JobStatus.FAILED, JobStatus.STOPPED):
            client.delete_job(job_id)
    except RuntimeError:  # never submitted
        pass
    submit(client, spec, env=job_environment())
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
    return JobResult.model_validate_json(logs.strip().splitlines()[-1])
