"""When to train, whether a candidate passes its gate, and how a rollout moves."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protege.api.specialist import DataPolicy, EvaluationSpec, RolloutSpec, Scores, TrainingSpec


@dataclass(frozen=True)
class TrainingDecision:
    train: bool
    reason: str


def should_train(
    data: DataPolicy,
    training: TrainingSpec,
    *,
    examples: int,
    new_examples: int,
    has_version: bool,
    job_running: bool,
    manual_trigger: bool = False,
    schedule_due: bool = False,
    suspended: bool = False,
) -> TrainingDecision:
    """Whether to start a training job now.

    ``examples`` counts the task's curated examples; ``new_examples`` those that arrived after
    the newest version's dataset; ``has_version`` whether any version was trained before.
    """
    if suspended:
        return TrainingDecision(False, "suspended")
    if job_running:
        return TrainingDecision(False, "a training job is already running")
    if examples < data.min_examples:
        if manual_trigger:
            return TrainingDecision(
                False,
                f"trigger ignored: {examples} examples, fewer than data.minExamples ({data.min_examples})",
            )
        return TrainingDecision(False, f"collecting data: {examples}/{data.min_examples} examples")
    if not has_version:
        return TrainingDecision(True, f"first training: {examples} examples reached data.minExamples")
    if manual_trigger:
        return TrainingDecision(True, "manual trigger")
    if schedule_due and new_examples > 0:
        return TrainingDecision(True, f"schedule due with {new_examples} new examples")
    threshold = training.retrain_after_new_examples
    if threshold is not None and new_examples >= threshold:
        return TrainingDecision(True, f"{new_examples} new examples reached training.retrainAfterNewExamples")
    wanted = f"/{threshold}" if threshold is not None else ""
    return TrainingDecision(False, f"up to date: {new_examples}{wanted} new examples")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]


def gate(policy: EvaluationSpec, scores: Scores) -> GateResult:
    """Pass or fail a candidate on its frozen-test-split scores; the reasons say why either way."""
    reasons = []
    passed = True
    if policy.min_score is not None:
        ok = scores.specialist >= policy.min_score
        passed &= ok
        reasons.append(
            f"score {scores.specialist:.3f} {'≥' if ok else '<'} evaluation.minScore {policy.min_score:.3f}"
        )
    ok = scores.relative_to_teacher >= policy.min_relative_to_teacher
    passed &= ok
    reasons.append(
        f"{scores.relative_to_teacher:.3f} of the teacher's score {'≥' if ok else '<'} "
        f"evaluation.minRelativeToTeacher {policy.min_relative_to_teacher:.3f}"
    )
    return GateResult(passed, tuple(reasons))


class RolloutStage(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    SERVING = "serving"


@dataclass(frozen=True)
class RolloutObservation:
    """What live traffic said about the candidate in its current stage."""

    stage: RolloutStage
    step_index: int  # index into rollout.canarySteps while in canary; 0 otherwise
    calls: int  # calls the candidate answered (or shadowed) in this stage or step
    agreement: float | None  # share of those calls that agreed with the teacher and were valid


class RolloutAction(StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class RolloutMove:
    action: RolloutAction
    stage: RolloutStage
    step_index: int
    traffic_percent: int  # share of the task's calls the candidate answers after the move
    reason: str


def next_rollout_move(policy: RolloutSpec, seen: RolloutObservation) -> RolloutMove:
    """Shadow → canary steps → serving, rolling back when agreement falls below the bar."""
    steps = policy.canary_steps
    current = _traffic(policy, seen.stage, seen.step_index)
    if seen.stage is RolloutStage.SERVING:
        return RolloutMove(RolloutAction.WAIT, seen.stage, 0, 100, "serving")
    needed = policy.shadow_calls if seen.stage is RolloutStage.SHADOW else policy.min_calls_per_step
    if needed > 0 and (seen.calls < needed or seen.agreement is None):
        return RolloutMove(
            RolloutAction.WAIT,
            seen.stage,
            seen.step_index,
            current,
            f"observing: {seen.calls}/{needed} calls",
        )
    if seen.agreement is not None and seen.agreement < policy.min_agreement:
        verdict = f"agreement {seen.agreement:.3f} < rollout.minAgreement {policy.min_agreement:.3f}"
        if policy.auto_rollback:
            return RolloutMove(RolloutAction.ROLLBACK, seen.stage, seen.step_index, 0, verdict)
        return RolloutMove(
            RolloutAction.WAIT, seen.stage, seen.step_index, current, verdict + "; autoRollback is off"
        )
    good = f"agreement {seen.agreement:.3f} over {seen.calls} calls" if needed else f"{seen.stage} skipped"
    next_index = 0 if seen.stage is RolloutStage.SHADOW else seen.step_index + 1
    if next_index >= len(steps) or steps[next_index] == 100:
        return RolloutMove(RolloutAction.PROMOTE, RolloutStage.SERVING, 0, 100, good)
    return RolloutMove(RolloutAction.ADVANCE, RolloutStage.CANARY, next_index, steps[next_index], good)


def _traffic(policy: RolloutSpec, stage: RolloutStage, step_index: int) -> int:
    if stage is RolloutStage.SHADOW:
        return 0
    if stage is RolloutStage.SERVING:
        return 100
    return policy.canary_steps[step_index]
