"""`protege up` / `protege down` around the stack: refusals, and cleaning up after a killed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.cli.common import settings
from protege.services.nats import NatsServer
from protege.services.process import pid_alive
from protege.services.seaweedfs import SeaweedS3
from protege.stack.supervisor import STATE_FILE, STORE_URL, stop_stack
from protege.store.artifacts import ArtifactStore
from protege.testing.plugin import seed_task

runner = CliRunner()
STACK_S3_VARIABLES = (
    "PROTEGE_S3__ENDPOINT_URL",
    "PROTEGE_S3__ACCESS_KEY_ID",
    "PROTEGE_S3__SECRET_ACCESS_KEY",
)


def test_down_stops_the_supervisor_and_whatever_a_killed_one_left(tmp_path: Path) -> None:
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    state = {"supervisor": processes[0].pid, "pids": {"nats": processes[1].pid, "gateway": processes[2].pid}}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert stop_stack(tmp_path) == ["protege up", "nats", "gateway"]
    for process in processes:
        process.wait(timeout=10)
        assert not pid_alive(process.pid)
    assert not (tmp_path / STATE_FILE).exists()
    assert stop_stack(tmp_path) == []  # nothing up: nothing to do


def test_up_refuses_a_second_stack_and_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"supervisor": 0, "pids": {}}))
    again = runner.invoke(app, ["up", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already up" in again.output and "protege down" in again.output

    config = tmp_path / "stack.yaml"
    config.write_text("pool:\n  engine:\n    maxLoraRank: 7\n")
    bad = runner.invoke(app, ["up", "--dir", str(tmp_path / "other"), "--config", str(config)])
    assert bad.exit_code == 2 and "maxLoraRank" in bad.output, bad.output


def _started_in(directory: Path) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if str(directory) in " ".join(p.info["cmdline"] or [])
    ]


def test_a_terminated_demo_stops_what_it_started(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "protege.cli", "demo", "--dir", str(demo_dir)],
        env={**os.environ, "PROTEGE_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state = demo_dir / "stack" / STATE_FILE
    try:
        deadline = time.monotonic() + 120
        while "s3" not in (json.loads(state.read_text()).get("pids", {}) if state.exists() else {}):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo never started its S3 store"
            time.sleep(0.2)
        demo.send_signal(signal.SIGTERM)  # what `timeout` and `kill` send
        output, _ = demo.communicate(timeout=120)
        assert demo.returncode == 130 and "interrupted" in output, output
        assert not state.exists()
        assert _started_in(demo_dir) == []  # NATS, the S3 store and all else it started are gone
    finally:
        demo.kill()
        for process in _started_in(demo_dir):
            process.kill()


def test_commands_beside_a_running_stack_read_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seaweed_s3: SeaweedS3, nats_server: NatsServer
) -> None:
    """`protege tasks list|show` with the home of a running `protege up` read the tasks it discovered."""
    home = tmp_path / "home"
    monkeypatch.setenv("PROTEGE_HOME", str(home))
    for name in ("PROTEGE_ARTIFACT_STORE", "PROTEGE_NATS_URL", "PROTEGE_CONFIG", *STACK_S3_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    nothing = runner.invoke(app, ["tasks", "list"])
    assert nothing.exit_code == 3 and "no tasks discovered yet" in nothing.output

    seed_task(ArtifactStore(STORE_URL, seaweed_s3.storage_options()), "intent", 12, task_id="task-beside")
    state = {
        "supervisor": os.getpid(),  # alive: the stack is up
        "nats": nats_server.url,
        "nats_credentials": str(nats_server.credentials_dir),
        "s3": {"endpoint": seaweed_s3.endpoint_url, "dir": str(seaweed_s3.data_dir)},
        "pids": {},
    }
    (home / "up").mkdir(parents=True)
    (home / "up" / STATE_FILE).write_text(json.dumps(state))
    listed = runner.invoke(app, ["tasks", "list"])
    assert listed.exit_code == 0 and "task-beside" in listed.output, listed.output
    shown = runner.invoke(app, ["tasks", "show", "task-beside"])
    assert shown.exit_code == 0 and "fingerprint" in shown.output, shown.output
    # and its call log, each command with its own identity from the stack's NATS credentials
    assert settings().nats_auth.credentials_dir == nats_server.credentials_dir
