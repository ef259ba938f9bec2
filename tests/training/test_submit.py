"""One launcher for training jobs on Ray: the job's name is its submission id, its Specialist is in its
metadata (never read back from a name prefix)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from protege.api.jobs import JobSpec, job_name
from protege.flywheel.local import RayJobs
from protege.training.submit import RESERVED_CPUS, SPECIALIST, submit


class FakeJobClient:
    """Ray's JobSubmissionClient as far as the launcher uses it; ``busy`` refusals first (a fresh head)."""

    def __init__(self, busy: int = 0) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.busy = busy

    def get_job_info(self, name: str) -> Any:
        if name not in self.jobs:
            raise RuntimeError(f"Job {name} does not exist")
        return SimpleNamespace(**self.jobs[name])

    def submit_job(self, *, submission_id: str, **options: Any) -> str:
        if self.busy:
            self.busy -= 1
            raise RuntimeError("No available agent to submit job, please try again later.")
        assert submission_id not in self.jobs, "submitted twice"
        self.jobs[submission_id] = {
            "submission_id": submission_id,
            "status": SimpleNamespace(value="RUNNING"),
        }
        self.jobs[submission_id] |= options
        return submission_id

    def list_jobs(self) -> list[Any]:
        return [SimpleNamespace(**job) for job in self.jobs.values()]


def spec(specialist: str) -> JobSpec:
    return JobSpec(specialist=specialist, task="t", base_model="smollm2-135m")


def test_the_same_spec_is_one_job_and_a_busy_head_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = FakeJobClient(busy=2)
    name = submit(client, spec("intent"), env={"PROTEGE_HOME": "/x"}, reserved_cpus=2, yield_cpus=True)
    assert name == job_name(spec("intent")) and submit(client, spec("intent"), env={}) == name
    [job] = client.jobs.values()
    assert job["metadata"] == {SPECIALIST: "intent", RESERVED_CPUS: "2"}
    assert job["entrypoint"].endswith(" --yield-cpus") and job["entrypoint_num_cpus"] == 2


def test_a_specialists_running_jobs_are_its_own_whatever_the_names_share() -> None:
    """Two Specialists whose names share 50 characters (job names were matched on a 40-character prefix)."""
    client = FakeJobClient()
    first, second = "a" * 50 + "-invoices", "a" * 50 + "-receipts"
    names = {s: submit(client, spec(s), env={}) for s in (first, second)}
    jobs = object.__new__(RayJobs)
    jobs.client = client  # type: ignore[assignment]
    assert jobs.running(first) == [names[first]] and jobs.running(second) == [names[second]]


def test_a_job_that_yields_the_cpus_trains_in_the_idle_class_with_every_thread_it_starts() -> None:
    """What ``--yield-cpus`` does (in a child process: a process cannot leave SCHED_IDLE unprivileged)."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, threading\n"
        "from protege.training.job import yield_cpus\n"
        "print(yield_cpus())\n"
        "policies = []\n"
        "policy = lambda: policies.append(os.sched_getscheduler(threading.get_native_id()))\n"
        "worker = threading.Thread(target=policy)\n"
        "worker.start(); worker.join()\n"
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE, policies == [os.SCHED_IDLE])\n"
    )
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("no SCHED_IDLE here: the job falls back to niceness 19")
    before = os.sched_getscheduler(0)
    output = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert output.split() == ["SCHED_IDLE", "True", "True"]
    assert os.sched_getscheduler(0) == before  # this process is untouched
