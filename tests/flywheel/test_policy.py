import pytest

from protege.api.specialist import (
    DataPolicy,
    EvaluationMetric,
    EvaluationSpec,
    InputDrift,
    RolloutSpec,
    Scores,
    TrainingSpec,
)
from protege.flywheel import (
    RolloutAction,
    RolloutObservation,
    RolloutStage,
    gate,
    next_rollout_move,
    should_train,
)
from protege.flywheel.policy import calls_to_decide, drift_retrain_reason, estimate

DATA = DataPolicy(min_examples=100)
TRAINING = TrainingSpec(retrain_after_new_examples=50)


@pytest.mark.parametrize(
    ("kwargs", "train", "reason"),
    [
        (
            {"examples": 99, "new_examples": 99, "has_version": False},
            False,
            "collecting data: 99/100 examples",
        ),
        ({"examples": 100, "new_examples": 100, "has_version": False}, True, "first training"),
        ({"examples": 500, "new_examples": 10, "has_version": True}, False, "up to date: 10/50 new examples"),
        (
            {"examples": 500, "new_examples": 50, "has_version": True},
            True,
            "reached training.retrainAfterNewExamples",
        ),
        (
            {"examples": 500, "new_examples": 50, "has_version": True, "job_running": True},
            False,
            "already running",
        ),
        ({"examples": 500, "new_examples": 50, "has_version": True, "suspended": True}, False, "suspended"),
        (
            {"examples": 500, "new_examples": 0, "has_version": True, "manual_trigger": True},
            True,
            "manual trigger",
        ),
        (
            {"examples": 5, "new_examples": 5, "has_version": False, "manual_trigger": True},
            False,
            "trigger ignored",
        ),
        (
            {"examples": 500, "new_examples": 3, "has_version": True, "schedule_due": True},
            True,
            "schedule due",
        ),
        (
            {"examples": 500, "new_examples": 0, "has_version": True, "schedule_due": True},
            False,
            "up to date",
        ),
    ],
)
def test_should_train(kwargs: dict[str, object], train: bool, reason: str) -> None:
    kwargs.setdefault("job_running", False)
    decision = should_train(DATA, TRAINING, **kwargs)  # type: ignore[arg-type]
    assert decision.train is train
    assert reason in decision.reason


def test_retraining_off_when_threshold_unset() -> None:
    decision = should_train(
        DATA, TrainingSpec(retrain_after_new_examples=None), examples=10_000, new_examples=9_000,
        has_version=True, job_running=False,
    )  # fmt: skip
    assert not decision.train and decision.reason == "up to date: 9000 new examples"


def scores(specialist: float, teacher: float) -> Scores:
    return Scores(
        metric=EvaluationMetric.EXACT_MATCH,
        specialist=specialist,
        teacher=teacher,
        relative_to_teacher=specialist / teacher,
    )


def test_gate_relative_and_absolute() -> None:
    policy = EvaluationSpec(min_relative_to_teacher=0.95, min_score=0.8)
    passed = gate(policy, scores(0.9, 0.92))
    assert passed.passed and len(passed.reasons) == 2
    low_relative = gate(policy, scores(0.85, 0.95))
    assert not low_relative.passed
    assert "0.895 of the teacher's score < evaluation.minRelativeToTeacher 0.950" in low_relative.reasons[1]
    low_absolute = gate(policy, scores(0.7, 0.7))
    assert not low_absolute.passed and "score 0.700 < evaluation.minScore 0.800" in low_absolute.reasons[0]


ROLLOUT = RolloutSpec(shadow_calls=10, canary_steps=[10, 50, 100], min_calls_per_step=10, min_agreement=0.9)


def move(stage: RolloutStage, step: int, scores: list[float], policy: RolloutSpec = ROLLOUT):  # type: ignore[no-untyped-def]
    seen = RolloutObservation(stage, step, len(scores), estimate(scores, policy.confidence))
    return next_rollout_move(policy, seen)


def test_the_wilson_interval_and_the_calls_a_decision_needs() -> None:
    perfect = estimate([1.0] * 35, 0.95)
    assert perfect is not None and perfect.high == 1.0 and perfect.low == pytest.approx(35 / (35 + 1.96**2))
    half = estimate([1.0, 0.0] * 50, 0.95)
    assert (
        half is not None
        and half.low == pytest.approx(0.404, abs=0.001)
        and half.high == pytest.approx(0.596, abs=0.001)
    )
    assert calls_to_decide(1.0, 0.9, 0.95) == 35  # all agree: 35 calls put the lower bound at 0.9
    assert calls_to_decide(0.5, 0.9, 0.95) is not None and calls_to_decide(0.5, 0.9, 0.95) < 10  # type: ignore[operator]
    assert calls_to_decide(0.9, 0.9, 0.95) is None  # right at the bar: never
    assert estimate([], 0.95) is None


def test_rollout_moves_when_the_interval_clears_the_bar() -> None:
    assert move(RolloutStage.SHADOW, 0, [1.0] * 9).action is RolloutAction.WAIT  # under the floor
    unsure = move(RolloutStage.SHADOW, 0, [1.0] * 30)  # lower bound 0.886 < 0.9
    assert unsure.action is RolloutAction.WAIT and "about 5 more calls to decide" in unsure.reason
    to_canary = move(RolloutStage.SHADOW, 0, [1.0] * 40)
    assert (to_canary.action, to_canary.stage, to_canary.traffic_percent) == (
        RolloutAction.ADVANCE,
        RolloutStage.CANARY,
        10,
    )
    assert "lower bound ≥ rollout.minAgreement" in to_canary.reason and "40 calls" in to_canary.reason
    to_50 = move(RolloutStage.CANARY, 0, [1.0] * 40)
    assert (to_50.action, to_50.step_index, to_50.traffic_percent) == (RolloutAction.ADVANCE, 1, 50)
    promoted = move(RolloutStage.CANARY, 1, [1.0] * 60)
    assert (promoted.action, promoted.stage, promoted.traffic_percent) == (
        RolloutAction.PROMOTE,
        RolloutStage.SERVING,
        100,
    )


def test_a_version_below_the_bar_is_rolled_back_as_soon_as_the_interval_says_so() -> None:
    rolled = move(RolloutStage.CANARY, 1, [1.0, 0.0] * 6)  # 0.5 over 12 calls
    assert (rolled.action, rolled.traffic_percent) == (RolloutAction.ROLLBACK, 0)
    assert "upper bound < rollout.minAgreement 0.900" in rolled.reason and "12 calls" in rolled.reason
    held = move(RolloutStage.CANARY, 1, [1.0, 0.0] * 6, ROLLOUT.model_copy(update={"auto_rollback": False}))
    assert (held.action, held.traffic_percent) == (
        RolloutAction.WAIT,
        50,
    ) and "autoRollback is off" in held.reason
    # right at the bar the interval never clears it: after maxCallsPerStep the mean decides
    capped = ROLLOUT.model_copy(update={"max_calls_per_step": 50})
    at_bar = move(RolloutStage.CANARY, 0, [1.0] * 45 + [0.0] * 5, capped)
    assert at_bar.action is RolloutAction.ADVANCE and "after maxCallsPerStep" in at_bar.reason
    under = move(RolloutStage.CANARY, 0, [1.0] * 44 + [0.0] * 6, capped)
    assert under.action is RolloutAction.ROLLBACK and "after maxCallsPerStep" in under.reason


def test_the_serving_version_is_watched() -> None:
    assert move(RolloutStage.SERVING, 0, []).action is RolloutAction.WAIT
    fine = move(RolloutStage.SERVING, 0, [1.0] * 8 + [0.0])
    assert fine.action is RolloutAction.WAIT and fine.reason.startswith("serving: agreement 0.889")
    fallen = move(RolloutStage.SERVING, 0, [0.0] * 5 + [1.0] * 3)
    assert (fallen.action, fallen.stage) == (RolloutAction.ROLLBACK, RolloutStage.SERVING)


def test_rollout_without_shadow_or_canary() -> None:
    direct = RolloutSpec(shadow_calls=0, canary_steps=[])
    promoted = move(RolloutStage.SHADOW, 0, [], direct)
    assert (promoted.action, promoted.traffic_percent) == (RolloutAction.PROMOTE, 100)
    no_shadow = RolloutSpec(shadow_calls=0, canary_steps=[25, 100])
    first = move(RolloutStage.SHADOW, 0, [], no_shadow)
    assert (first.action, first.traffic_percent) == (RolloutAction.ADVANCE, 25)


def test_input_drift_retrains_only_when_its_lower_bound_is_over_the_bar() -> None:
    def drift(novel: int, calls: int) -> InputDrift:
        est = estimate([1.0] * novel + [0.0] * (calls - novel), 0.95)
        assert est is not None
        return InputDrift(
            calls=calls, novel=est.mean, low=est.low, high=est.high, confidence=0.95, expected=0.05
        )

    data = DataPolicy()  # maxInputDrift 0.25
    assert data.max_input_drift == 0.25
    assert drift_retrain_reason(data, None) is None
    assert drift_retrain_reason(data, drift(6, 120)) is None  # 5%: as expected
    assert drift_retrain_reason(data, drift(4, 10)) is None  # 40%, but of 10 calls: low 0.17
    assert drift_retrain_reason(data, drift(37, 120)) is None  # 31%: low 0.232, not sure yet
    reason = drift_retrain_reason(data, drift(48, 120))  # 40%: low 0.316
    assert reason == (
        "input drift: 40% [32%, 49%] of 120 calls unlike the training data (5% expected), "
        "over data.maxInputDrift 25%"
    )
    assert drift_retrain_reason(DataPolicy(max_input_drift=None), drift(120, 120)) is None
    facts = {"examples": 500, "has_version": True, "job_running": False, "retrain_reason": reason}
    decision = should_train(data, TRAINING, new_examples=1, **facts)  # type: ignore[arg-type]
    assert decision.train and decision.reason == f"retraining on 1 new examples: {reason}"
    # the new calls must be curated first: they are the new data
    assert not should_train(data, TRAINING, new_examples=0, **facts).train  # type: ignore[arg-type]
