"""Rollouts driven by call records scored against the teacher, the serving watch, and the table moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protege.api.calls import (
    AlternateAnswer,
    CallRecord,
    ChatRequest,
    ChatResponse,
    Latency,
    RouteDecision,
    RouteReason,
    Upstream,
    UpstreamKind,
)
from protege.api.routes import RolloutStage
from protege.api.specialist import RolloutSpec
from protege.flywheel.policy import RolloutAction, next_rollout_move
from protege.flywheel.rollout import apply, observe, watch
from protege.serving.router.table import Candidate, SpecialistRoute

POLICY = RolloutSpec(
    shadow_calls=4, canary_steps=[10, 50, 100], min_calls_per_step=3, min_agreement=0.5, confidence=0.8
)
REQUEST = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
TEACHER = Upstream(kind=UpstreamKind.TEACHER, model="big")


def record(
    reason: RouteReason,
    target: UpstreamKind,
    version: str,
    shadow: tuple[str, float | None] | None = None,
    sampled: float | None = None,
) -> CallRecord:
    """A call record; ``shadow``: (version, score against the teacher); ``sampled``: teacher-sample score."""
    alternate = None
    if shadow is not None:
        upstream = Upstream(
            kind=UpstreamKind.SPECIALIST, model=f"spec@{shadow[0]}", specialist="spec", version=shadow[0]
        )
        alternate = AlternateAnswer(upstream=upstream, agreement=shadow[1])
    return CallRecord(
        tenant="acme",
        request=REQUEST,
        response=ChatResponse.model_validate({"choices": [{"index": 0, "message": {"content": "ok"}}]}),
        latency=Latency(total_ms=1),
        route=RouteDecision(target=target, reason=reason, specialist="spec", version=version),
        alternate=alternate,
        teacher_sample=AlternateAnswer(upstream=TEACHER, agreement=sampled) if sampled is not None else None,
    )


def test_a_good_candidate_goes_from_shadow_through_canary_to_serving() -> None:
    route = SpecialistRoute(
        specialist="spec", tenant="acme", task_id="t", active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.SHADOW),
    )  # fmt: skip
    # version 2's shadow answers are scored against the teacher (a teacher sample of v1's calls);
    # a shadowed call without one has nothing to be scored against and does not count
    shadowed = [
        record(RouteReason.SPECIALIST, UpstreamKind.SPECIALIST, "v1", ("v2", score), sampled=0.0)
        for score in (1, 1, 1, 0.5, None, 1, 1, 1)
    ]
    seen = observe(shadowed[:2], route, POLICY)
    assert (
        seen is not None and seen.calls == 2 and next_rollout_move(POLICY, seen).action is RolloutAction.WAIT
    )
    seen = observe(shadowed, route, POLICY)
    assert seen is not None and seen.calls == 7 and seen.estimate is not None
    assert seen.estimate.mean == pytest.approx(6.5 / 7)
    route = apply(route, next_rollout_move(POLICY, seen))
    assert route.candidate == Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=10)

    # in canary, v2's returned answers count by their teacher samples; unsampled ones not at all
    canary = [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2", sampled=1.0) for _ in range(6)]
    canary += [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2") for _ in range(5)]
    canary.append(record(RouteReason.FALLBACK_INVALID_OUTPUT, UpstreamKind.TEACHER, "v2"))
    seen = observe(canary, route, POLICY)
    assert seen is not None and (seen.calls, seen.step_index) == (7, 0)
    assert seen.estimate is not None and seen.estimate.mean == pytest.approx(6 / 7)
    route = apply(route, next_rollout_move(POLICY, seen))
    assert route.candidate is not None and route.candidate.traffic_percent == 50
    route = apply(route, next_rollout_move(POLICY, observe(canary, route, POLICY)))  # type: ignore[arg-type]
    assert (route.active, route.previous, route.candidate) == ("v2", "v1", None)  # 100 is promotion


def test_a_canary_worse_than_the_teacher_but_never_invalid_is_not_promoted() -> None:
    route = SpecialistRoute(
        specialist="spec", tenant="acme", task_id="t", active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=10),
    )  # fmt: skip
    scores = [0.0, 0.0, 1.0] * 8  # valid answers, a third of them as the teacher's
    valid_but_wrong = [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2", sampled=x) for x in scores]
    seen = observe(valid_but_wrong, route, POLICY)
    assert seen is not None and seen.estimate is not None
    move = next_rollout_move(POLICY, seen)
    assert move.action is RolloutAction.ROLLBACK and "upper bound < rollout.minAgreement" in move.reason


def test_a_bad_canary_is_rolled_back_and_old_records_do_not_count() -> None:
    route = SpecialistRoute(
        specialist="spec", tenant="acme", task_id="t", active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=50),
    )  # fmt: skip
    bad = [record(RouteReason.FALLBACK_LOW_CONFIDENCE, UpstreamKind.TEACHER, "v2") for _ in range(3)]
    good_but_old = [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2", sampled=1.0) for _ in range(9)]
    since = datetime.now(UTC) + timedelta(microseconds=1)
    for item in bad:
        item.timestamp = since + timedelta(seconds=1)
    seen = observe(good_but_old + bad, route, POLICY, since=since)
    assert seen is not None and (seen.calls, seen.step_index) == (3, 1)
    move = next_rollout_move(POLICY, seen)
    assert move.action is RolloutAction.ROLLBACK and "agreement 0.000" in move.reason
    assert apply(route, move) == route.model_copy(update={"candidate": None})
    assert observe(bad, route.model_copy(update={"candidate": None}), POLICY) is None


def test_a_serving_version_that_turns_wrong_is_rolled_back_to_the_previous_one() -> None:
    route = SpecialistRoute(specialist="spec", tenant="acme", task_id="t", active="v2", previous="v1")
    fine = [record(RouteReason.SPECIALIST, UpstreamKind.SPECIALIST, "v2", sampled=1.0) for _ in range(6)]
    seen = watch(fine, route, POLICY, since=None)
    assert seen is not None and next_rollout_move(POLICY, seen).action is RolloutAction.WAIT
    wrong = [record(RouteReason.SPECIALIST, UpstreamKind.SPECIALIST, "v2", sampled=0.0) for _ in range(20)]
    move = next_rollout_move(POLICY, watch(fine + wrong, route, POLICY, since=None))  # type: ignore[arg-type]
    assert (move.action, move.stage) == (RolloutAction.ROLLBACK, RolloutStage.SERVING)
    back = apply(route, move)
    assert (back.active, back.previous) == ("v1", None)
    assert apply(back, move).active is None  # with no previous good version, the teacher answers
