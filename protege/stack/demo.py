"""`protege demo`: the whole loop, end to end, on this machine, with a report of what it saved.

1. start the stack (`protege up`'s parts) with the recorded teacher of the shipped workload;
2. an agent replays the workload's training calls through the gateway, without end;
3. the flywheel curates, discovers tasks, trains and evaluates a specialist per task, and
   shadows, canaries and promotes the ones that pass;
4. drift: the agent's next release changes a tool (search_flights gains a required cabin
   class); the specialist's calls fail validation and fall back, the teacher's answers
   accumulate, it is retrained and the new version rolled out (or back);
5. the report: on the held-out calls (never trained on) the teacher, the base model
   zero-shot and each specialist, scored against the teacher's answers; from the call log,
   latency, tokens, cost per 1,000 calls, traffic share and fallback reasons; versions over time.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from protege.api.calls import CallRecord, CallStatus
from protege.api.jobs import JobSpec
from protege.api.specialist import EvaluationMetric, SpecialistPhase, SpecialistStatus
from protege.capture.access import OPERATOR
from protege.evaluation.metrics import scorer
from protege.flywheel.data import call_records
from protege.flywheel.specialist import WAITING_FOR_SLOT
from protege.serving.pool.auth import bearer
from protege.stack.agent import Agent
from protege.stack.config import LOCAL_POLICY, StackConfig
from protege.stack.report import (
    HeldOutScores,
    PriceModel,
    TaskRow,
    agreement_over_time,
    html_report,
    markdown_table,
    plots_png,
    rows_as_dicts,
    task_rows,
    traffic_over_time,
    version_timeline,
)
from protege.stack.supervisor import Stack
from protege.testing.recorded_teacher import RecordedTeacher
from protege.workload import WorkloadCall, build_database, generate
from protege.workload.replay import Outcome

ROLLING_OUT = (
    SpecialistPhase.TRAINING,
    SpecialistPhase.SHADOW,
    SpecialistPhase.CANARY,
)


# The local stack, paced for minutes: smaller data thresholds, a shorter evaluation, retraining
# after a few dozen new teacher answers (fallbacks on invalid answers are how drift shows).
DEMO_STACK: dict[str, Any] = {
    "gateway_port": None,
    "tenant": "demo",
    "app": "order-desk",
    "policy": {
        **LOCAL_POLICY,
        "data": {"minExamples": 40},
        # Above what the agent's ~120 distinct calls per task can add after a first training at
        # 40: before the drift nothing retrains; after it, ~30 fallen-back calls do.
        # A task waiting for the one training slot trains on what arrived meanwhile (the intent
        # task failed its gate on 49 examples twice, passed on 117); max_steps caps each job: intent's
        # validation loss reaches 0.015 by 26 steps; at 16 and at 20 its rollout was rolled back (shadow
        # agreement 0.63 and 0.50 over 8 calls), though it passed once at 20.
        "training": {**LOCAL_POLICY["training"], "epochs": 6, "retrainAfterNewExamples": 110},
        # A family gets a third of the agent's 1 call/s and a CPU engine answers a canary call in
        # seconds: at 10 calls a step, the intent rollout's shadow alone took 2.3 min. The floor is
        # 6 calls; the interval decides (7 calls when all agree, at 90% for a bar of 0.7). The recorded
        # teacher costs nothing: every specialist-answered call is scored against it.
        "rollout": {
            **LOCAL_POLICY["rollout"],
            "shadowCalls": 6,
            "minCallsPerStep": 6,
            "teacherSampleRate": 1.0,
        },
    },
    "flywheel": {
        "interval_seconds": 5,
        "discover_every_seconds": 45,
        "job_options": {"few_shot": 0, "max_new_tokens": 64, "max_steps": 26},
    },
}


class DemoPlan(BaseModel):
    """How big the demo is (the CI test runs a small one)."""

    model_config = ConfigDict(extra="forbid")

    families: list[str] = Field(
        default_factory=lambda: ["intent", "extract", "tool"],
        description="Agent tasks replayed (FAMILIES).",
    )
    calls: int = Field(default=450, ge=10, description="Workload size; about 20% of it is held out.")
    seed: int = 7
    rate: float = Field(default=1.0, gt=0, description="Agent calls per second.")
    collect_rate: float = Field(
        default=2.0,
        gt=0,
        description="Agent calls per second until a first training starts: the teacher answers them all, "
        "the engine has nothing to do yet, and the first dataset fills sooner.",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Agent calls in flight at most: a few slow canary answers must not stall the rest.",
    )
    drift_family: str | None = Field(
        default="tool", description="The family the agent's next release changes (DRIFTED); none: no drift."
    )
    drift_calls: int = Field(default=300, ge=1)
    heldout_per_task: int = Field(default=20, ge=1, description="Held-out calls scored per task.")
    min_promoted: int = Field(default=2, ge=1, description="Specialists serving before the drift starts.")
    learn_minutes: float = Field(default=14, gt=0, description="Most time for the first rollouts.")
    finish_rollouts: bool = Field(
        default=True, description="Once min_promoted serve, also wait for the other rollouts under way."
    )
    settle_minutes: float = Field(default=0, ge=0, description="Traffic through the promoted specialists.")
    settle_answers: int = Field(
        default=0,
        ge=0,
        description="After settle_minutes, the agent goes on calling until each serving specialist has "
        "answered this many calls (a restarted replica may still be loading).",
    )
    settle_answers_minutes: float = Field(default=5, gt=0, description="Most time for settle_answers.")
    drift_minutes: float = Field(default=9, ge=0, description="Most time for retraining after the drift.")
    stack: StackConfig = Field(default_factory=lambda: StackConfig.model_validate(DEMO_STACK))
    prices: PriceModel = Field(default_factory=PriceModel)


@dataclass
class DemoResult:
    rows: list[TaskRow]
    seconds: float
    calls: int  # calls the agent made that were answered
    logged: int  # of those, found in the call log
    report_dir: Path
    marks: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, SpecialistStatus] = field(default_factory=dict)
    fallbacks: Counter[str] = field(default_factory=Counter)
    # per task: (seconds, agreement with the teacher, low, high) over its last scored calls
    agreement: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)


class Demo:
    def __init__(self, plan: DemoPlan, directory: Path, say: Callable[[str], None] = print) -> None:
        self.plan, self.dir, self.say = plan, directory, say
        families = tuple(plan.families)
        workload = generate(plan.calls, seed=plan.seed, families=families)
        self.train = [c for c in workload if not c.heldout]
        self.heldout = [c for c in workload if c.heldout]
        self.drift: list[WorkloadCall] = []
        if plan.drift_family:
            drifted = generate(
                plan.drift_calls, seed=plan.seed + 1, families=(plan.drift_family,), drifted=True
            )
            self.drift = [c for c in drifted if not c.heldout]
        self.family_of = {_user_text(c.request["messages"]): c.task for c in [*workload, *self.drift]}
        self.stack = Stack(
            directory / "stack", plan.stack, teacher=RecordedTeacher([*workload, *self.drift]), say=say
        )
        self.started = time.monotonic()
        self._phases: dict[str, str] = {}
        self.agent: Agent | None = None
        self.first_call = time.time()
        self.marks: dict[str, float] = {}  # seconds since the first call: promotions, the drift
        self._active: dict[str, str | None] = {}
        self.base_answers: dict[str, dict[str, Any]] = {}  # held-out call id → the base model's answer

    # --- watching ---------------------------------------------------------------------
    def statuses(self) -> dict[str, SpecialistStatus]:
        found = {}
        for path in sorted((self.stack.flywheel_state / "status").glob("*.json")):
            try:
                found[path.stem] = SpecialistStatus.model_validate_json(path.read_text())
            except ValueError:  # being replaced this instant
                continue
        return found

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _report_changes(self, statuses: dict[str, SpecialistStatus]) -> None:
        for name, status in statuses.items():
            if status.active_version and status.active_version != self._active.get(name):
                self.marks[f"{name} {status.active_version[:7]}"] = time.time() - self.first_call
            self._active[name] = status.active_version
            detail = f"{status.phase.value}"
            if status.candidate_version:
                detail += f" candidate {status.candidate_version} at {status.traffic_share}%"
            if status.active_version:
                detail += f", serving {status.active_version}"
            if any(c.type == "Trained" and c.reason == WAITING_FOR_SLOT for c in status.conditions):
                detail += ", ready to train: waiting for the running job"
            if self._phases.get(name) != detail:
                self._phases[name] = detail
                latest = status.versions[-1].message if status.versions else ""
                self.say(f"[{self.elapsed()}] {name}: {detail}" + (f" — {latest}" if latest else ""))

    def watch(self, until: Callable[[dict[str, SpecialistStatus]], bool], minutes: float) -> bool:
        deadline = time.monotonic() + minutes * 60
        last_traffic = time.monotonic()
        while time.monotonic() < deadline:
            for line in self.stack.check():
                self.say(f"[{self.elapsed()}] {line}")
            statuses = self.statuses()
            self._report_changes(statuses)
            self._pace_agent(statuses)
            if until(statuses):
                return True
            if time.monotonic() - last_traffic > 60:
                last_traffic = time.monotonic()
                outcomes = self.agent_outcomes()
                recent = outcomes[-200:]
                share = sum(o.specialist is not None for o in recent) / len(recent) if recent else 0
                failed = sum(o.error is not None for o in outcomes)
                self.say(
                    f"[{self.elapsed()}] agent: {len(outcomes)} calls, {failed} failed, "
                    f"{share:.0%} of the last {len(recent)} answered by specialists"
                )
            time.sleep(3)
        return False

    def _pace_agent(self, statuses: dict[str, SpecialistStatus]) -> None:
        """Once a first training starts, the agent calls at its steady rate: the engine has work now."""
        agent = self.agent
        if agent is None or agent.rate == self.plan.rate:
            return
        if any(
            s.phase not in (SpecialistPhase.PENDING, SpecialistPhase.COLLECTING_DATA)
            for s in statuses.values()
        ):
            agent.rate = self.plan.rate
            self.say(f"[{self.elapsed()}] agent: a first training started; {self.plan.rate:g}/s from now on")

    def specialist_for(self, family: str | None, statuses: dict[str, SpecialistStatus]) -> str | None:
        """The serving specialist that answers ``family``'s calls (from who answered the agent)."""
        answered = Counter(
            o.specialist.partition("@")[0]
            for o in self.agent_outcomes()
            if o.call.task == family and o.specialist
        )
        for name, _ in answered.most_common():
            if statuses.get(name) is not None and statuses[name].active_version:
                return name
        return None

    def agent_outcomes(self) -> list[Outcome]:
        return list(self.agent.outcomes) if self.agent is not None else []

    def watch_answers(self, answers: int, minutes: float) -> bool:
        """Until each serving specialist has answered ``answers`` of the agent's calls from now on."""
        since = len(self.agent_outcomes())

        def answered(statuses: dict[str, SpecialistStatus]) -> bool:
            counts = Counter(
                o.specialist.partition("@")[0] for o in self.agent_outcomes()[since:] if o.specialist
            )
            return all(counts[name] >= answers for name, s in statuses.items() if s.active_version)

        self.say(f"[{self.elapsed()}] serving: until each specialist has answered {answers} calls")
        done = self.watch(answered, minutes)
        if not done:
            self.say(f"[{self.elapsed()}] serving: still under {answers} answers after {minutes:g} min")
        return done

    # --- held-out evaluation ---------------------------------------------------------------
    def scored_calls(self, family: str) -> list[WorkloadCall]:
        """The held-out calls of ``family`` that the report scores."""
        return [c for c in self.heldout if c.task == family][: self.plan.heldout_per_task]

    async def _answers(self, asks: Sequence[tuple[WorkloadCall, str | None]]) -> list[dict[str, Any] | None]:
        """The engine's answers to (call, adapter) pairs (no adapter: the base model's), at most
        ``concurrency`` in flight; None where it gave none."""
        model = self.plan.stack.pool.base_model.source
        # the training job's evaluation limit: the base model's rambling is cut where the gate cut it
        limit = self.plan.stack.flywheel.job_options.get(
            "max_new_tokens", JobSpec.model_fields["max_new_tokens"].default
        )
        slots = asyncio.Semaphore(self.plan.concurrency)
        # the engine answers holders of the pool token only (the gateway, and the report here)
        async with httpx.AsyncClient(timeout=300, headers=bearer(self.stack.pool_token())) as client:

            async def ask(call: WorkloadCall, adapter: str | None) -> dict[str, Any] | None:
                headers = {"serve_multiplexed_model_id": adapter} if adapter else {}
                body = {**call.request, "model": adapter or model, "temperature": 0, "max_tokens": limit}
                async with slots:
                    try:
                        reply = await client.post(
                            f"{self.stack.engine_url}/v1/chat/completions", json=body, headers=headers
                        )
                    except httpx.HTTPError:
                        return None
                if reply.status_code != 200:
                    return None
                message = reply.json()["choices"][0]["message"]
                answer = {"role": "assistant", "content": message.get("content")}
                if message.get("tool_calls"):
                    answer["tool_calls"] = message["tool_calls"]
                return answer

            return list(await asyncio.gather(*(ask(call, adapter) for call, adapter in asks)))

    def answer_base_early(self) -> None:
        """The base model's held-out answers, asked while the engine has no specialist to serve yet.

        They do not depend on anything the flywheel does; the report asks again for any missing.
        """
        try:
            self.stack.wait_serving()
            calls = [c for family in self.plan.families for c in self.scored_calls(family)]
            answers = asyncio.run(self._answers([(c, None) for c in calls]))
        except Exception as error:  # a failure here must not end the demo: the report asks again
            self.say(f"[{self.elapsed()}] base model's held-out answers left to the report: {error}")
            return
        self.base_answers.update({c.id: a for c, a in zip(calls, answers, strict=True) if a is not None})
        self.say(f"[{self.elapsed()}] held-out: the base model answered {len(self.base_answers)} calls")

    async def score_heldout(
        self, specialist_of: dict[str, str], statuses: dict[str, SpecialistStatus]
    ) -> dict[str, HeldOutScores]:
        database = build_database()
        adapters: dict[str, tuple[str, EvaluationMetric]] = {}
        for family, name in sorted(specialist_of.items()):
            status = statuses.get(name)
            if status is None:
                continue
            active = next((v for v in status.versions if v.version == status.active_version), None)
            if active is not None and active.scores is not None:
                adapters[family] = (f"{name}@{active.version}", EvaluationMetric(active.scores.metric))
        missing = [c for f in adapters for c in self.scored_calls(f) if c.id not in self.base_answers]
        specialist_asks: list[tuple[WorkloadCall, str | None]] = [
            (c, adapter) for f, (adapter, _) in adapters.items() for c in self.scored_calls(f)
        ]
        answers = await self._answers([(c, None) for c in missing] + specialist_asks)
        self.base_answers.update(
            {c.id: a for c, a in zip(missing, answers[: len(missing)], strict=True) if a is not None}
        )
        specialist_answers = {
            (c.id, adapter): a
            for (c, adapter), a in zip(specialist_asks, answers[len(missing) :], strict=True)
        }
        empty = {"role": "assistant", "content": ""}  # no answer scores like a wrong one
        scores: dict[str, HeldOutScores] = {}
        for family, (adapter, metric) in adapters.items():
            calls = self.scored_calls(family)
            score = scorer(metric, database)
            scores[family] = HeldOutScores(
                metric=metric.value,
                calls=len(calls),
                base_zero_shot=sum(score(self.base_answers.get(c.id, empty), c.answer) for c in calls)
                / len(calls),
                specialist=sum(score(specialist_answers[c.id, adapter] or empty, c.answer) for c in calls)
                / len(calls),
            )
            self.say(
                f"[{self.elapsed()}] held-out {family}: base zero-shot "
                f"{scores[family].base_zero_shot:.2f}, {adapter} {scores[family].specialist:.2f} "
                f"over {len(calls)} calls"
            )
        return scores

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> DemoResult:
        plan = self.plan
        self.stack.start()
        agent = self.agent = Agent(
            f"{self.stack.gateway_url}/v1", self.stack.agent_key(), self.stack.teacher_model, self.train,
            rate=plan.collect_rate, concurrency=plan.concurrency,
        )  # fmt: skip
        self.first_call = time.time()
        agent.start()
        threading.Thread(target=self.answer_base_early, name="demo-base-answers", daemon=True).start()
        try:
            pace = f"{plan.rate:g}/s"
            if plan.collect_rate != plan.rate:
                pace = f"{plan.collect_rate:g}/s until a first training starts, then at {pace}"
            self.say(
                f"[{self.elapsed()}] agent: replaying {len(self.train)} training calls "
                f"of {', '.join(plan.families)} at {pace}"
            )

            def learned(statuses: dict[str, SpecialistStatus]) -> bool:
                serving = [s for s in statuses.values() if s.active_version]
                drifting = self.specialist_for(plan.drift_family, statuses)
                if plan.drift_family:  # drift starts once its task's specialist serves
                    return len(serving) >= plan.min_promoted and drifting is not None
                return len(serving) >= plan.min_promoted and not (
                    plan.finish_rollouts and any(s.phase in ROLLING_OUT for s in statuses.values())
                )

            self.watch(learned, plan.learn_minutes)
            if plan.settle_minutes:
                self.say(
                    f"[{self.elapsed()}] serving: the agent keeps calling for {plan.settle_minutes:g} min"
                )
                self.watch(lambda _: False, plan.settle_minutes)
                if plan.settle_answers:
                    self.watch_answers(plan.settle_answers, plan.settle_answers_minutes)
            if plan.drift_family and self.drift:
                self.marks["drift"] = time.time() - self.first_call
                mixed = [c for c in self.train if c.task != plan.drift_family] + self.drift
                random.Random(plan.seed).shuffle(mixed)  # the new release's calls among the others
                agent.switch(mixed)
                self.say(
                    f"[{self.elapsed()}] drift: {plan.drift_family} calls now come from the agent's next "
                    "release (protege.workload.DRIFTED: search_flights requires a cabin class)"
                )
                at_drift = self.statuses()
                drifting = self.specialist_for(plan.drift_family, at_drift)
                before = len(at_drift[drifting].versions) if drifting else 0

                # the rollouts under way at the drift, not first trainings that start after it
                under_way = {n for n, s in at_drift.items() if s.phase in ROLLING_OUT and n != drifting}

                def others_settled(statuses: dict[str, SpecialistStatus]) -> bool:
                    return not any(statuses[n].phase in ROLLING_OUT for n in under_way if n in statuses)

                def retrained(statuses: dict[str, SpecialistStatus]) -> bool:
                    status = statuses.get(drifting or "")
                    done = (
                        status is not None
                        and len(status.versions) > before
                        and status.phase not in ROLLING_OUT
                    )
                    return done and others_settled(statuses)

                if drifting is not None:  # specialist_for names only a serving specialist
                    self.watch(retrained, plan.drift_minutes)
                else:  # no specialist serves the drifted calls: the teacher does, nothing to refine
                    self.say(
                        f"[{self.elapsed()}] drift: no {plan.drift_family} specialist serves yet; "
                        "its calls go to the teacher and will be in its first dataset"
                    )

                    # its own first training may be under way, for longer than the others took
                    def promoted_or_settled(statuses: dict[str, SpecialistStatus]) -> bool:
                        serving = sum(s.active_version is not None for s in statuses.values())
                        return serving >= plan.min_promoted or others_settled(statuses)

                    self.watch(promoted_or_settled, plan.drift_minutes)
        finally:
            agent.stop()
        return self.report(agent)

    def report(self, agent: Agent) -> DemoResult:
        statuses = self.statuses()
        stopped = self.stack.stop_training()  # what is not serving by now will not be in this report
        if stopped:
            self.say(f"[{self.elapsed()}] end: flywheel stopped, training stopped: {', '.join(stopped)}")
        records = asyncio.run(self._records())
        by_family: dict[str, list[CallRecord]] = defaultdict(list)
        considered: dict[str, Counter[str]] = defaultdict(Counter)
        for record in sorted(records, key=lambda r: r.timestamp):
            messages = record.request.model_dump(exclude_none=True)["messages"]
            family = self.family_of.get(_user_text(messages))
            if family is None:
                continue
            by_family[family].append(record)
            if record.route.specialist:
                considered[family][record.route.specialist] += 1
        specialist_of = {family: names.most_common(1)[0][0] for family, names in considered.items()}
        self.stack.wait_serving(timeout=600)  # a replica restarted late in the run comes back first
        held_out = asyncio.run(self.score_heldout(specialist_of, statuses))
        rows = task_rows(by_family, specialist_of, statuses, held_out, prices=self.plan.prices)
        answered = [o for o in agent.outcomes if o.error is None]
        result = DemoResult(
            rows=rows,
            seconds=time.monotonic() - self.started,
            calls=len(answered),
            logged=sum(r.status is CallStatus.OK for r in records),
            report_dir=self.dir / "report",
            marks=self.marks,
            statuses=statuses,
            fallbacks=Counter(
                r.route.reason.value for r in records if r.route.reason.value.startswith("fallback_")
            ),
            agreement={family: agreement_over_time(calls) for family, calls in by_family.items()},
        )
        self.write(result, records)
        return result

    async def _records(self) -> Sequence[CallRecord]:
        reader = self.stack.nats.endpoint(OPERATOR)
        return await call_records(reader, self.plan.stack.tenant, None, limit_seconds=300)

    def write(self, result: DemoResult, records: Sequence[CallRecord]) -> None:
        out = result.report_dir
        out.mkdir(parents=True, exist_ok=True)
        png = plots_png(
            result.rows,
            traffic_over_time(records),
            result.marks,
            self.plan.prices,
            agreement=result.agreement,
        )
        timeline = version_timeline(result.statuses)
        summary = {
            "runtime": f"{result.seconds / 60:.1f} min",
            "agent calls answered": result.calls,
            "calls in the call log": result.logged,
            "fallbacks": dict(result.fallbacks) or "none",
            "price model": self.plan.prices.describe(),
            "teacher latency": "the recorded teacher's (a lookup, not a model): compare costs, not speed",
        }
        (out / "report.png").write_bytes(png)
        (out / "report.html").write_text(html_report(result.rows, png, timeline, summary))
        (out / "report.md").write_text(markdown_table(result.rows) + "\n")
        (out / "report.json").write_text(
            json.dumps(
                {"summary": summary, "tasks": rows_as_dicts(result.rows), "versions": timeline},
                indent=1,
                default=str,
            )
        )

    def close(self) -> None:
        self.stack.stop()


def _user_text(messages: Sequence[dict[str, Any]]) -> str:
    """A call's last user message: what tells the workload's calls apart (for the report)."""
    return str(next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""))
