"""The demo, CI-sized, with real parts: NATS, SeaweedFS, Ray + Serve + vLLM (CPU), PEFT training.

Two tasks of the shipped agent, a few training steps. Once the first specialist serves (the
other task's rollout may still go on), each part is killed in turn with SIGKILL — the serving
replica's vLLM, NATS, the flywheel and the gateway — and Ray Serve (for the replica) or the
stack starts each again. The loop must still
complete (tasks discovered, a specialist trained, evaluated, promoted and answering routed
traffic, fallbacks recorded: the dead replica's calls went to the teacher), every call the
agent got an answer for must be in the call log exactly once, and the specialist must end
where it was before the kills.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from ray.job_submission import JobSubmissionClient

from protege.config import RouterSettings
from protege.stack.demo import DEMO_STACK, Demo, DemoPlan

# the whole loop, two rollouts, four restarts: on a loaded 2-core machine it needs more than the
# suite's 600 s default (it ran past it locally while CI passed it)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

POLICY: dict[str, Any] = {
    **DEMO_STACK["policy"],
    "data": {"minExamples": 20},
    # no retraining within the test: the end state must be the one the kills interrupted
    "training": {**DEMO_STACK["policy"]["training"], "rank": 8, "epochs": 1, "retrainAfterNewExamples": None},
    "evaluation": {"minRelativeToTeacher": 0.0},
    # two canary steps: with one, a loaded machine's gateway could still be shadowing when the step's
    # scored calls were in, and the specialist served having answered no routed call (a CI run)
    "rollout": {"shadowCalls": 4, "canarySteps": [50, 100], "minCallsPerStep": 4, "minAgreement": 0.0},
}
PLAN = {
    "families": ["intent", "extract"],
    "calls": 150,
    "rate": 3,
    "collect_rate": 3,
    "drift_family": None,
    "heldout_per_task": 5,
    "min_promoted": 1,
    "finish_rollouts": False,  # the second task's rollout may go on: the kills start at the first
    "learn_minutes": 10,
    # the kills happen in it: four, 8 s apart (a killed part is back within 5 s), the last at ~26 s
    "settle_minutes": 0.6,
    # then until the specialists answer again: the restarted replica may still be loading (a CI run
    # ended with none answered)
    "settle_answers": 3,
    "stack": {
        **DEMO_STACK,
        "policy": POLICY,
        # the router's cluster default: calls to the killed replica go to the teacher without a long wait
        "specialist_timeout_seconds": RouterSettings.model_fields["timeout_seconds"].default,
        "flywheel": {
            **DEMO_STACK["flywheel"],
            "min_task_size": 10,
            "discover_every_seconds": 20,
            # 8 steps: with 4, most answers fell back on low confidence and the run took longer (433 s
            # against 312 s here, with settle_answers)
            "job_options": {"max_steps": 8, "few_shot": 0, "max_new_tokens": 48},
        },
    },
}


def _vllm_pids() -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        # the server itself, not the guard that started it (protege.services.guard)
        if command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--enable-lora" in command:
            found.append(process.pid)
    return found


class Chaos(threading.Thread):
    """Once a specialist serves, kill one part after another while the agent keeps calling."""

    def __init__(self, demo: Demo) -> None:
        super().__init__(daemon=True)
        self.demo = demo
        self.killed: list[str] = []
        self.serving_before: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            serving = {n: s.active_version for n, s in self.demo.statuses().items() if s.active_version}
            if serving:
                self.serving_before = serving
                break
            time.sleep(2)
        stack = self.demo.stack
        kills = [
            # the engine crashes whole: its server, engine core and workers (one process group);
            # first, so that Serve has its replica back by the time the report asks it
            ("vllm", lambda: [os.killpg(os.getpgid(pid), signal.SIGKILL) for pid in _vllm_pids()]),
            ("nats", lambda: os.kill(stack.nats.pid or 0, signal.SIGKILL)),
            ("flywheel", lambda: os.kill(stack.flywheel.pid or 0, signal.SIGKILL)),  # type: ignore[union-attr]
            ("gateway", lambda: os.kill(stack.gateway.pid or 0, signal.SIGKILL)),  # type: ignore[union-attr]
        ]
        for name, kill in kills:
            if self.stop.is_set():
                return
            kill()
            self.killed.append(name)
            time.sleep(8)


def test_the_demo_completes_the_loop_through_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2: Path
) -> None:
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROTEGE_MODEL_STORE", str(smollm2.parent))
    # The built-in PII detectors: Presidio's NER (the default) loads in every part that redacts and
    # costs ~4 ms a text; this test is about crashes. The full demo runs with it (docs/quickstart.md).
    monkeypatch.setenv("PROTEGE_CURATION__PII_DETECTOR", "builtin")
    lines: list[str] = []

    def say(line: str) -> None:  # kept for the assertions, shown live with -s
        lines.append(line)
        print(line, flush=True)

    demo = Demo(DemoPlan.model_validate(PLAN), tmp_path / "demo", say=say)
    chaos = Chaos(demo)
    chaos.start()
    try:
        result = demo.run()
        assert demo.stack.ray is not None
        jobs = JobSubmissionClient(demo.stack.ray.address, headers=demo.stack.ray.headers).list_jobs()
    finally:
        chaos.stop.set()
        demo.close()
    log = "\n".join(lines)
    assert chaos.killed == ["vllm", "nats", "flywheel", "gateway"], log
    assert {"nats", "flywheel", "gateway"} <= {
        line.split("] ")[-1].split()[0] for line in lines if "restarted" in line
    }, log

    report = (result.report_dir / "report.json").read_text()
    assert (result.report_dir / "report.html").exists() and (
        result.report_dir / "report.png"
    ).stat().st_size > 10_000

    statuses = result.statuses
    assert len(statuses) >= 2, log  # both tasks discovered, a Specialist each
    promoted = {n: s for n, s in statuses.items() if s.active_version}
    assert promoted, log
    for name, version in chaos.serving_before.items():  # the kills changed nothing it had decided
        assert statuses[name].active_version == version, log
    evaluated = [v for s in promoted.values() for v in s.versions if v.scores is not None]
    assert evaluated, log
    served = [row for row in result.rows if row.traffic_share > 0]
    assert served, report  # routed traffic answered by a specialist
    assert result.fallbacks, report  # at least the calls the dead replica could not answer
    assert result.calls > 0 and result.logged == result.calls, (result.calls, result.logged)
    # the base model answered the held-out calls early; at the report no training job was left
    assert any("held-out: the base model answered" in line for line in lines), log
    assert all(job.status.is_terminal() for job in jobs), [(j.submission_id, j.status) for j in jobs]
