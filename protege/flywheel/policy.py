"""When to train, whether a candidate passes its gate, and how a rollout moves."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protege.api.routes import RolloutStage
from protege.api.specialist import DataPolicy, EvaluationSpec, InputDrift, RolloutSpec, Scores, TrainingSpec


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
    retrain_reason: str | None = None,
) -> TrainingDecision:
    """Whether to start a training job now.

    ``examples`` counts the task's curated examples; ``new_examples`` those that arrived after
    the newest version's dataset; ``has_version`` whether any version was trained before;
    ``retrain_reason`` why a retraining is due once new examples arrived (a version rolled back
    while serving, input drift: :func:`drift_retrain_reason`).
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
    if retrain_reason is not None and new_examples > 0:
        return TrainingDecision(True, f"retraining on {new_examples} new examples: {retrain_reason}")
    if schedule_due and new_examples > 0:
        return TrainingDecision(True, f"schedule due with {new_examples} new examples")
    threshold = training.retrain_after_new_examples
    if threshold is not None and new_examples >= threshold:
        return TrainingDecision(True, f"{new_examples} new examples reached training.retrainAfterNewExamples")
    wanted = f"/{threshold}" if threshold is not None else ""
    return TrainingDecision(False, f"up to date: {new_examples}{wanted} new examples")


def drift_retrain_reason(data: DataPolicy, drift: InputDrift | None) -> str | None:
    """Why the task's input drift calls for a retraining (``should_train``'s ``retrain_reason``), or None.

    Only when the drift is sure: the lower bound of the novel share's interval is above
    ``data.maxInputDrift`` (by the novelty bar's construction about ``drift.expected`` of the
    calls are novel while the traffic is like the training calls).
    """
    bar = data.max_input_drift
    if bar is None or drift is None or drift.low <= bar:
        return None
    return (
        f"input drift: {drift.novel:.0%} [{drift.low:.0%}, {drift.high:.0%}] of {drift.calls} calls unlike "
        f"the training data ({drift.expected:.0%} expected), over data.maxInputDrift {bar:.0%}"
    )


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


_Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.96, 0.98: 2.3263, 0.99: 2.5758}


@dataclass(frozen=True)
class Estimate:
    """Agreement with the teacher over ``calls`` scored calls, with a Wilson score interval.

    Scores are in [0, 1] (1: the answer agrees with the teacher's); their mean is treated
    as a proportion. The Wilson interval keeps its coverage near 0 and 1 and on few calls,
    where the normal approximation claims certainty it does not have.
    """

    calls: int
    mean: float
    low: float
    high: float
    confidence: float

    def __str__(self) -> str:
        return (
            f"agreement {self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] "
            f"({self.confidence:.0%} interval, {self.calls} calls)"
        )


def estimate(scores: list[float], confidence: float) -> Estimate | None:
    """The agreement estimate of these scores; None without any."""
    if not scores:
        return None
    n, mean = len(scores), sum(scores) / len(scores)
    low, high = wilson(mean, n, confidence)
    return Estimate(n, mean, low, high, confidence)


def wilson(mean: float, calls: int, confidence: float) -> tuple[float, float]:
    z = _Z.get(round(confidence, 2))
    if z is None:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    centre = (mean + z2 / (2 * calls)) / (1 + z2 / calls)
    half = z * ((mean * (1 - mean) / calls + z2 / (4 * calls * calls)) ** 0.5) / (1 + z2 / calls)
    return max(0.0, min(mean, centre - half)), min(1.0, max(mean, centre + half))  # rounding aside


def calls_to_decide(mean: float, bar: float, confidence: float, limit: int = 1_000_000) -> int | None:
    """The fewest calls at which an interval around ``mean`` clears ``bar`` on one side; None if never."""

    def decided(calls: int) -> bool:
        low, high = wilson(mean, calls, confidence)
        return low >= bar or high < bar

    if mean == bar or not decided(limit):
        return None
    low, high = 1, limit  # the interval narrows as calls grow: search for the first that decides
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle + 1, high)
    return low


@dataclass(frozen=True)
class RolloutObservation:
    """What live traffic said about a version in its current stage (the serving one included)."""

    stage: RolloutStage
    step_index: int  # index into rollout.canarySteps while in canary; 0 otherwise
    calls: int  # calls scored against the teacher (or failed) in this stage or step
    estimate: Estimate | None  # agreement with the teacher over those calls


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
    """Shadow → canary steps → serving, and the serving version watched; decisions with confidence.

    A stage moves on once the lower bound of the agreement interval reaches
    ``rollout.minAgreement``, and rolls back once the upper bound falls below it; in
    between more calls are needed (how many follows from the estimate and the bar). After
    ``rollout.maxCallsPerStep`` calls the point estimate decides. ``shadowCalls`` and
    ``minCallsPerStep`` are floors: no decision on fewer calls.
    """
    bar, est = policy.min_agreement, seen.estimate
    current = _traffic(policy, seen.stage, seen.step_index)

    def wait(reason: str) -> RolloutMove:
        return RolloutMove(RolloutAction.WAIT, seen.stage, seen.step_index, current, reason)

    def roll_back(reason: str) -> RolloutMove:
        if policy.auto_rollback:
            return RolloutMove(RolloutAction.ROLLBACK, seen.stage, seen.step_index, 0, reason)
        return wait(reason + "; autoRollback is off")

    if seen.stage is RolloutStage.SERVING:
        if est is None:
            return wait("serving: no call scored against the teacher yet")
        if est.high < bar:
            return roll_back(f"{est}: upper bound < rollout.minAgreement {bar:.3f}")
        return wait(f"serving: {est}")
    floor = policy.shadow_calls if seen.stage is RolloutStage.SHADOW else policy.min_calls_per_step
    if floor > 0 and (seen.calls < floor or est is None):
        return wait(f"observing: {seen.calls}/{floor} calls" + (f", {est}" if est else ""))
    if est is not None and est.high < bar:
        return roll_back(f"{est}: upper bound < rollout.minAgreement {bar:.3f}")
    if est is not None and est.low < bar:
        if est.calls < policy.max_calls_per_step:
            needed = calls_to_decide(est.mean, bar, est.confidence)
            more = f"about {max(needed - est.calls, 1)} more calls" if needed else "more calls"
            return wait(f"{est}: the interval spans rollout.minAgreement {bar:.3f}; {more} to decide")
        if est.mean < bar:
            return roll_back(f"{est}: below rollout.minAgreement {bar:.3f} after maxCallsPerStep")
    good = f"{est}: lower bound ≥ rollout.minAgreement {bar:.3f}" if est else f"{seen.stage} skipped"
    if est is not None and est.low < bar:
        good = f"{est}: at or above rollout.minAgreement {bar:.3f} after maxCallsPerStep"
    next_index = 0 if seen.stage is RolloutStage.SHADOW else seen.step_index + 1
    steps = policy.canary_steps
    if next_index >= len(steps) or steps[next_index] == 100:
        return RolloutMove(RolloutAction.PROMOTE, RolloutStage.SERVING, 0, 100, good)
    return RolloutMove(RolloutAction.ADVANCE, RolloutStage.CANARY, next_index, steps[next_index], good)


def _traffic(policy: RolloutSpec, stage: RolloutStage, step_index: int) -> int:
    if stage is RolloutStage.SHADOW:
        return 0
    if stage is RolloutStage.SERVING:
        return 100
    return policy.canary_steps[step_index]
