"""The flywheel's decisions, as pure functions of (spec, observed state).

Written once and driven twice: by the kopf operator on Kubernetes and by `protege up`
locally. Nothing here does I/O.
"""

from protege.flywheel.policy import (
    GateResult,
    RolloutAction,
    RolloutMove,
    RolloutObservation,
    RolloutStage,
    TrainingDecision,
    gate,
    next_rollout_move,
    should_train,
)

__all__ = [
    "GateResult",
    "RolloutAction",
    "RolloutMove",
    "RolloutObservation",
    "RolloutStage",
    "TrainingDecision",
    "gate",
    "next_rollout_move",
    "should_train",
]
