"""`protege up` / `protege down` around the stack: refusals, and cleaning up after a killed one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from protege.cli import app
from protege.services.process import pid_alive
from protege.stack.supervisor import STATE_FILE, stop_stack

runner = CliRunner()


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
