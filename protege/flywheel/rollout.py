"""Live rollout: what the traffic says about a candidate version, and the table after a move (pure).

The decision itself is :func:`protege.flywheel.policy.next_rollout_move`, shared by the
operator and the local driver; these functions feed it from call records and apply its
move to the routing table.

- In **shadow**, a candidate's answer is computed next to the one returned and scored
  against it with the task's metric (``alternate.agreement``): agreement is the mean
  score over the shadowed calls.
- In **canary**, the candidate's answers are returned, so there is no teacher answer to
  compare with; agreement is its validity — the share of its calls that passed the
  fallback checks and were returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from protege.api.calls import CallRecord, RouteReason, UpstreamKind
from protege.api.specialist import RolloutSpec
from protege.flywheel.policy import RolloutAction, RolloutMove, RolloutObservation, RolloutStage
from protege.serving.router.table import Candidate, SpecialistRoute

_FALLBACKS = {
    RouteReason.FALLBACK_INVALID_OUTPUT,
    RouteReason.FALLBACK_LOW_CONFIDENCE,
    RouteReason.FALLBACK_SPECIALIST_ERROR,
}


def observe(
    records: Iterable[CallRecord],
    route: SpecialistRoute,
    policy: RolloutSpec,
    since: datetime | None = None,
) -> RolloutObservation | None:
    """The candidate's calls (since its stage began) and agreement; None without a candidate.

    ``since`` defaults to when the candidate entered its stage or step (``Candidate.since``).
    """
    candidate = route.candidate
    if candidate is None:
        return None
    since = since or candidate.since
    step = 0
    if candidate.stage is RolloutStage.CANARY and candidate.traffic_percent in policy.canary_steps:
        step = policy.canary_steps.index(candidate.traffic_percent)
    scores: list[float] = []
    for record in records:
        if (since is not None and record.timestamp < since) or record.route.specialist != route.specialist:
            continue
        alternate = record.alternate
        if candidate.stage is RolloutStage.SHADOW:
            if alternate is not None and alternate.upstream.version == candidate.version:
                scores.append(alternate.agreement or 0.0)  # an error or no score counts as disagreement
        elif record.route.version == candidate.version:
            if record.route.target is UpstreamKind.SPECIALIST:
                scores.append(1.0)
            elif record.route.reason in _FALLBACKS:
                scores.append(0.0)
    agreement = sum(scores) / len(scores) if scores else None
    return RolloutObservation(stage=candidate.stage, step_index=step, calls=len(scores), agreement=agreement)


def apply(route: SpecialistRoute, move: RolloutMove, now: datetime | None = None) -> SpecialistRoute:
    """The route after ``move``: the candidate advanced (from ``now``), promoted, or withdrawn."""
    candidate = route.candidate
    if candidate is None or move.action is RolloutAction.WAIT:
        return route
    if move.action is RolloutAction.PROMOTE:
        return route.model_copy(update={"active": candidate.version, "candidate": None})
    if move.action is RolloutAction.ROLLBACK:
        return route.model_copy(update={"candidate": None})
    advanced = Candidate(
        version=candidate.version, stage=move.stage, traffic_percent=move.traffic_percent, since=now
    )
    return route.model_copy(update={"candidate": advanced})
