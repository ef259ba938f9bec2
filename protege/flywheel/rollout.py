"""Live rollout: what the traffic says about a version against the teacher, and the table after a move (pure).

The decision itself is :func:`protege.flywheel.policy.next_rollout_move`, shared by the
operator and the local driver; these functions feed it from call records and apply its
move to the routing table. Every score is against the **teacher**, with the Specialist's
own metric (the gateway scores, see docs/flywheel.md):

- a **shadow** answer is scored against the teacher's answer to the same call: the one the
  caller got, or, when a serving version answered it, a teacher sample;
- an answer a **canary** or the **serving** version returned is scored against a teacher
  sample (``CallRecord.teacher_sample``; ``rollout.teacherSampleRate`` of its calls);
- a call that fell back (invalid output, low confidence, an error) scores 0, as does a
  shadow answer that failed. Calls nobody scored do not count.

The same records give the task's **input drift** (:func:`input_drift`): the share of its
matched calls the router found novel, unlike the task's training calls (``RouteDecision.novel``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from protege.api.calls import CallRecord, RouteReason, UpstreamKind
from protege.api.routes import Candidate, RolloutStage, SpecialistRoute
from protege.api.specialist import RolloutSpec
from protege.flywheel.policy import Estimate, RolloutAction, RolloutMove, RolloutObservation, estimate
from protege.tasks.discovery.features import NOVELTY_QUANTILE

_FALLBACKS = {
    RouteReason.FALLBACK_INVALID_OUTPUT,
    RouteReason.FALLBACK_LOW_CONFIDENCE,
    RouteReason.FALLBACK_SPECIALIST_ERROR,
}


def record_scores(record: CallRecord, version: str | None = None) -> list[float]:
    """The scores against the teacher a record holds for ``version`` (for any version when None).

    A shadow answer scored against the teacher (0 when it failed); an answer the version
    returned, scored against its teacher sample; 0 for a call of the version that fell back.
    """
    scores = []
    alternate = record.alternate  # a shadow answer, unless the router rejected it (a fallback)
    if (
        alternate is not None
        and alternate.rejection is None
        and alternate.upstream.version is not None
        and version in (None, alternate.upstream.version)
    ):
        if alternate.error is not None:  # a shadow answer that failed
            scores.append(0.0)
        elif alternate.agreement is not None:
            scores.append(alternate.agreement)
    if version not in (None, record.route.version):
        return scores
    if record.route.target is UpstreamKind.SPECIALIST:
        sample = record.teacher_sample
        if sample is not None and sample.agreement is not None:
            scores.append(sample.agreement)
    elif record.route.reason in _FALLBACKS:
        scores.append(0.0)
    return scores


def version_scores(
    records: Iterable[CallRecord], specialist: str, version: str, since: datetime | None = None
) -> list[float]:
    """The version's scores against the teacher, one per scored call since ``since``."""
    return [
        score
        for record in records
        if (since is None or record.timestamp >= since) and record.route.specialist == specialist
        for score in record_scores(record, version)
    ]


def observe(
    records: Iterable[CallRecord],
    route: SpecialistRoute,
    policy: RolloutSpec,
    since: datetime | None = None,
) -> RolloutObservation | None:
    """The candidate's scored calls (since its stage began) and agreement; None without a candidate.

    ``since`` defaults to when the candidate entered its stage or step (``Candidate.since``).
    """
    candidate = route.candidate
    if candidate is None:
        return None
    step = 0
    if candidate.stage is RolloutStage.CANARY and candidate.traffic_percent in policy.canary_steps:
        step = policy.canary_steps.index(candidate.traffic_percent)
    scores = version_scores(records, route.specialist, candidate.version, since or candidate.since)
    return RolloutObservation(candidate.stage, step, len(scores), estimate(scores, policy.confidence))


def watch(
    records: Iterable[CallRecord], route: SpecialistRoute, policy: RolloutSpec, since: datetime | None
) -> RolloutObservation | None:
    """The serving version's scored calls since ``since`` (the watch window); None when none serves."""
    if route.active is None:
        return None
    scores = version_scores(records, route.specialist, route.active, since)
    return RolloutObservation(RolloutStage.SERVING, 0, len(scores), estimate(scores, policy.confidence))


# The share of calls like the training calls that the router finds novel, by the bar's construction.
EXPECTED_NOVEL_SHARE = round(1 - NOVELTY_QUANTILE, 4)


def novel_flags(
    records: Iterable[CallRecord], task_id: str | None, since: datetime | None = None
) -> list[float]:
    """1.0 for each of the task's matched calls since ``since`` that the router found novel, else 0.0.

    ``task_id`` None: the calls of any task. Calls without a novelty (no bar in the router's
    task registry, a user turn without words) do not count.
    """
    return [
        float(record.route.novel)
        for record in records
        if task_id in (None, record.route.task_id)
        and record.route.novel is not None
        and (since is None or record.timestamp >= since)
    ]


def input_drift(
    records: Iterable[CallRecord], task_id: str | None, confidence: float, since: datetime | None = None
) -> Estimate | None:
    """The share of the task's calls unlike its training calls, with its Wilson interval; None
    without any measured call. About ``EXPECTED_NOVEL_SHARE`` when the traffic is unchanged."""
    return estimate(novel_flags(records, task_id, since), confidence)


def apply(route: SpecialistRoute, move: RolloutMove, now: datetime | None = None) -> SpecialistRoute:
    """The route after ``move``: the candidate advanced (from ``now``), promoted, or withdrawn."""
    if move.action is RolloutAction.ROLLBACK and move.stage is RolloutStage.SERVING:
        # the serving version goes; the previous good one serves again, or the teacher alone
        return route.model_copy(update={"active": route.previous, "previous": None})
    candidate = route.candidate
    if candidate is None or move.action is RolloutAction.WAIT:
        return route
    if move.action is RolloutAction.PROMOTE:
        return route.model_copy(
            update={"active": candidate.version, "previous": route.active, "candidate": None}
        )
    if move.action is RolloutAction.ROLLBACK:
        return route.model_copy(update={"candidate": None})
    advanced = Candidate(
        version=candidate.version, stage=move.stage, traffic_percent=move.traffic_percent, since=now
    )
    return route.model_copy(update={"candidate": advanced})
