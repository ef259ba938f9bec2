"""Rollouts driven by call records: shadow agreement, canary validity, and the table moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
from protege.api.specialist import RolloutSpec
from protege.flywheel.policy import RolloutAction, RolloutStage, next_rollout_move
from protege.flywheel.rollout import apply, observe
from protege.serving.router.table import Candidate, SpecialistRoute

POLICY = RolloutSpec(shadow_calls=4, canary_steps=[10, 50, 100], min_calls_per_step=3, min_agreement=0.75)
REQUEST = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def record(
    reason: RouteReason, target: UpstreamKind, version: str, shadow: tuple[str, float] | None = None
) -> CallRecord:
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
    )


def test_a_good_candidate_goes_from_shadow_through_canary_to_serving() -> None:
    route = SpecialistRoute(
        specialist="spec", tenant="acme", task_id="t", active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.SHADOW),
    )  # fmt: skip
    shadowed = [
        record(RouteReason.SPECIALIST, UpstreamKind.SPECIALIST, "v1", ("v2", score))
        for score in (1, 1, 1, 0.5)
    ]
    seen = observe(shadowed[:2], route, POLICY)
    assert (
        seen is not None and seen.calls == 2 and next_rollout_move(POLICY, seen).action is RolloutAction.WAIT
    )
    seen = observe(shadowed, route, POLICY)
    assert seen is not None and seen.agreement == 0.875
    route = apply(route, next_rollout_move(POLICY, seen))
    assert route.candidate == Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=10)

    canary = [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2") for _ in range(3)]
    canary.append(record(RouteReason.FALLBACK_INVALID_OUTPUT, UpstreamKind.TEACHER, "v2"))
    seen = observe(canary, route, POLICY)
    assert seen is not None and (seen.calls, seen.agreement, seen.step_index) == (4, 0.75, 0)
    route = apply(route, next_rollout_move(POLICY, seen))
    assert route.candidate is not None and route.candidate.traffic_percent == 50
    route = apply(route, next_rollout_move(POLICY, observe(canary, route, POLICY)))  # type: ignore[arg-type]
    assert route.active == "v2" and route.candidate is None  # the step to 100 is promotion


def test_a_bad_canary_is_rolled_back_and_old_records_do_not_count() -> None:
    route = SpecialistRoute(
        specialist="spec", tenant="acme", task_id="t", active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.CANARY, traffic_percent=50),
    )  # fmt: skip
    bad = [record(RouteReason.FALLBACK_LOW_CONFIDENCE, UpstreamKind.TEACHER, "v2") for _ in range(3)]
    good_but_old = [record(RouteReason.CANARY, UpstreamKind.SPECIALIST, "v2") for _ in range(9)]
    since = datetime.now(UTC) + timedelta(microseconds=1)
    for item in bad:
        item.timestamp = since + timedelta(seconds=1)
    seen = observe(good_but_old + bad, route, POLICY, since=since)
    assert seen is not None and (seen.calls, seen.agreement, seen.step_index) == (3, 0.0, 1)
    move = next_rollout_move(POLICY, seen)
    assert move.action is RolloutAction.ROLLBACK and "agreement 0.000 < rollout.minAgreement" in move.reason
    assert apply(route, move) == route.model_copy(update={"candidate": None})
    assert observe(bad, route.model_copy(update={"candidate": None}), POLICY) is None
