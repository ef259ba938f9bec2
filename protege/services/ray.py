"""A local Ray head (`ray start --head --block`) with its dashboard, for submitting jobs locally.

The same job entrypoint a KubeRay RayJob runs is submitted here with Ray's job
submission API, so a laptop runs training exactly as a cluster does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from protege.services.process import ServiceProcess, free_port, pids_with_environment

HEAD_GRACE_SECONDS = 3.0


class LocalRay(ServiceProcess):
    name = "ray"
    own_group = True  # the head's agents outlived it by minutes: its process group goes with it

    def __init__(
        self,
        data_dir: Path,
        num_cpus: int | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__(data_dir, detach=detach, ready_timeout=120)
        self.env = env or {}  # for every worker: Serve replicas and job drivers inherit it
        self.host = host
        self.num_cpus = num_cpus
        self.port = free_port(host)
        self.dashboard_port = free_port(host)
        # Ray's sockets live under its temp dir, and a Unix socket path has at most 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        # Token authentication on, with a token of its own: the cluster does not depend on
        # (or clash with) ~/.ray/auth_token, and nothing else on the machine can submit jobs.
        self.token = secrets.token_hex(32)

    @property
    def address(self) -> str:
        """The job submission address (the dashboard)."""
        return f"http://{self.host}:{self.dashboard_port}"

    def command(self) -> Sequence[str]:
        ray = str(Path(sys.executable).parent / "ray")
        command = [
            ray, "start", "--head", "--block",
            "--node-ip-address", self.host,
            "--port", str(self.port),
            "--dashboard-host", self.host,
            "--dashboard-port", str(self.dashboard_port),
            "--include-dashboard", "true",
            "--disable-usage-stats",
            "--temp-dir", str(self.temp_dir),
            # Ray's fixed defaults (52365 for the job agent, ...) collide with another local Ray,
            # or with one still letting go of them: every port of its own, free now.
            "--dashboard-agent-listen-port", str(free_port(self.host)),
            "--dashboard-agent-grpc-port", str(free_port(self.host)),
            "--runtime-env-agent-port", str(free_port(self.host)),
            "--metrics-export-port", str(free_port(self.host)),
        ]  # fmt: skip
        if self.num_cpus is not None:
            command += ["--num-cpus", str(self.num_cpus)]
        return command

    @property
    def headers(self) -> dict[str, str]:
        """What a job submission client sends to be let in."""
        return {"Authorization": f"Bearer {self.token}"}

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def is_ready(self) -> bool:
        request = urllib.request.Request(f"{self.address}/api/version", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=0.5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the cluster's jobs, then the head.

        Ray starts a job's driver in a session of its own: after `protege demo` stopped the
        head, a training job went on (at nice 19, for minutes) until it was killed by hand.
        """
        if self.process is not None and self.process.poll() is None:
            self.stop_jobs(timeout)
        # Nothing of a local head outlives it (no GCS persistence, jobs stopped above): a short
        # grace, then its process group goes (its Serve replicas held `protege demo` 30 s).
        super().stop(min(timeout, HEAD_GRACE_SECONDS))
        self._kill_leftovers()
        self._keep_logs()

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever this head started and is still running, found by the token in its
        environment: a job driver launched as the head stopped is in a session of its own and,
        re-parented, out of reach of the group kill (one trained 15 min beside the next tests)."""
        for pid in pids_with_environment(f"RAY_AUTH_TOKEN={self.token}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _keep_logs(self) -> None:
        """Move the session's logs (job drivers', Serve's) next to the data; drop the temp dir."""
        for logs in self.temp_dir.glob("session_2*/logs"):  # a head restarted after a crash: both
            kept = self.data_dir / "logs" / logs.parent.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(logs, kept)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def stop_jobs(self, timeout: float) -> list[str]:
        """Stop every job not yet ended and wait (at most ``timeout``) until they have; the jobs stopped."""
        from ray.job_submission import JobSubmissionClient

        stopped: list[str] = []
        try:
            client = JobSubmissionClient(self.address, headers=self.headers)
            stopped = [
                job.submission_id
                for job in client.list_jobs()
                if job.submission_id and not job.status.is_terminal()
            ]
            for job_id in stopped:
                client.stop_job(job_id)
            running = stopped
            deadline = time.monotonic() + timeout
            while running and time.monotonic() < deadline:
                time.sleep(0.5)
                running = [j for j in running if not client.get_job_status(j).is_terminal()]
        except (RuntimeError, OSError):  # a head that does not answer: stopping it is what is left
            pass
        return stopped
