"""The local Ray head: stopping it stops the jobs it runs and every process it started, and keeps
its logs with its data."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from protege.services.ray import LocalRay

pytestmark = pytest.mark.slow


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def _in_group(group: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def test_stopping_the_head_stops_a_running_job_and_its_agents(tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    marker = f"protege-job-{uuid.uuid4().hex}"
    with LocalRay(tmp_path / "ray", num_cpus=1) as ray:
        client = JobSubmissionClient(ray.address, headers=ray.headers)
        sleeper = f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"
        job = client.submit_job(entrypoint=sleeper)
        deadline = time.monotonic() + 60
        while client.get_job_status(job) is not JobStatus.RUNNING or not _processes_with(marker):
            assert time.monotonic() < deadline, client.get_job_logs(job)
            time.sleep(0.5)
        [driver] = [p for p in _processes_with(marker) if "python" in p.name()]
        assert ray.process is not None
        group = os.getpgid(ray.process.pid)
        assert len(_in_group(group)) > 3  # gcs, raylet, dashboard, agents
        # what the head started out of its tree's reach (a job driver launched as it stopped): its token
        stray = subprocess.Popen(
            ["sleep", "600"], env={**os.environ, "RAY_AUTH_TOKEN": ray.token}, start_new_session=True
        )
    assert _in_group(group) == []
    try:
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        stray.kill()
    assert not ray.temp_dir.exists()  # nothing left in /tmp; the job's log kept with the data
    assert list((tmp_path / "ray" / "logs").glob(f"session_*/job-driver-{job}.log"))
    _, alive = psutil.wait_procs([driver], timeout=15)
    for process in alive:  # not left behind by a failing run
        process.kill()
    assert not alive, f"job driver {driver.pid} outlived the Ray head"
