"""The flywheel: its decisions, as pure functions of (spec, observed state), and their drivers.

Written once and driven twice: by the kopf operator on Kubernetes and by the local driver
(``protege.flywheel.local``, ``.loop``). The policy (``.policy``, ``.rollout``) does no I/O;
the step that uses it (``.specialist``) acts only through a ``FlywheelIO``.
"""

from protege.api.routes import RolloutStage
from protege.flywheel.policy import (
    GateResult,
    RolloutAction,
    RolloutMove,
    RolloutObservation,
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
