"""The demo's agent fills the first datasets fast, then calls at its steady rate once a job trains."""

from __future__ import annotations

from pathlib import Path

from protege.api.specialist import SpecialistPhase, SpecialistStatus
from protege.stack.agent import Agent
from protege.stack.demo import Demo, DemoPlan


def test_the_agent_slows_to_its_rate_once_a_first_training_starts(tmp_path: Path) -> None:
    lines: list[str] = []
    demo = Demo(DemoPlan(calls=30, rate=1, collect_rate=3, drift_family=None), tmp_path, say=lines.append)
    agent = demo.agent = Agent("http://127.0.0.1:9/v1", "key", "teacher", demo.train, rate=3)

    collecting = SpecialistStatus(phase=SpecialistPhase.COLLECTING_DATA)
    demo._pace_agent({"intent": SpecialistStatus(), "extract": collecting})
    assert agent.rate == 3 and not lines

    demo._pace_agent({"intent": collecting, "extract": SpecialistStatus(phase=SpecialistPhase.TRAINING)})
    assert agent.rate == 1
    assert lines and "1/s from now on" in lines[-1]


def test_held_out_calls_scored_per_task_are_the_plans_number(tmp_path: Path) -> None:
    demo = Demo(DemoPlan(calls=200, heldout_per_task=4, drift_family=None), tmp_path)
    for family in demo.plan.families:
        calls = demo.scored_calls(family)
        assert len(calls) == 4 and {c.task for c in calls} == {family} and all(c.heldout for c in calls)
