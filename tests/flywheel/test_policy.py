import pytest

from protege.api.specialist import (
    DataPolicy,
    EvaluationMetric,
    EvaluationSpec,
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


ROLLOUT = RolloutSpec(shadow_calls=200, canary_steps=[10, 50, 100], min_calls_per_step=100, min_agreement=0.9)


def move(stage: RolloutStage, step: int, calls: int, agreement: float | None, policy: RolloutSpec = ROLLOUT):  # type: ignore[no-untyped-def]
    return next_rollout_move(policy, RolloutObservation(stage, step, calls, agreement))


def test_rollout_walks_shadow_canary_serving() -> None:
    assert move(RolloutStage.SHADOW, 0, 150, 0.99).action is RolloutAction.WAIT
    to_canary = move(RolloutStage.SHADOW, 0, 200, 0.95)
    assert (to_canary.action, to_canary.stage, to_canary.traffic_percent) == (
        RolloutAction.ADVANCE,
        RolloutStage.CANARY,
        10,
    )
    waiting = move(RolloutStage.CANARY, 0, 99, 0.95)
    assert (waiting.action, waiting.traffic_percent) == (RolloutAction.WAIT, 10)
    to_50 = move(RolloutStage.CANARY, 0, 100, 0.95)
    assert (to_50.action, to_50.step_index, to_50.traffic_percent) == (RolloutAction.ADVANCE, 1, 50)
    promoted = move(RolloutStage.CANARY, 1, 100, 0.93)
    assert (promoted.action, promoted.stage, promoted.traffic_percent) == (
        RolloutAction.PROMOTE,
        RolloutStage.SERVING,
        100,
    )
    assert move(RolloutStage.SERVING, 0, 5, None).action is RolloutAction.WAIT


def test_rollout_rolls_back_below_the_bar_unless_disabled() -> None:
    rolled = move(RolloutStage.CANARY, 1, 120, 0.5)
    assert (rolled.action, rolled.traffic_percent) == (RolloutAction.ROLLBACK, 0)
    assert "agreement 0.500 < rollout.minAgreement 0.900" in rolled.reason
    held = move(RolloutStage.CANARY, 1, 120, 0.5, ROLLOUT.model_copy(update={"auto_rollback": False}))
    assert (held.action, held.traffic_percent) == (
        RolloutAction.WAIT,
        50,
    ) and "autoRollback is off" in held.reason


def test_rollout_without_shadow_or_canary() -> None:
    direct = RolloutSpec(shadow_calls=0, canary_steps=[])
    promoted = move(RolloutStage.SHADOW, 0, 0, None, direct)
    assert (promoted.action, promoted.traffic_percent) == (RolloutAction.PROMOTE, 100)
    no_shadow = RolloutSpec(shadow_calls=0, canary_steps=[25, 100])
    first = move(RolloutStage.SHADOW, 0, 0, None, no_shadow)
    assert (first.action, first.traffic_percent) == (RolloutAction.ADVANCE, 25)
