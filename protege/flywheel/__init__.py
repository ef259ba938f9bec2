"""The flywheel: its decisions, as pure functions of (spec, observed state), and their drivers.

Written once and driven twice: by the kopf operator on Kubernetes and by the local driver
(``protege.flywheel.local``, ``.loop``). The policy (``.policy``, ``.rollout``) does no I/O;
the step that uses it (``.specialist``) acts only through a ``FlywheelIO``; the rest of a
Specialist's life around that step (``.lifecycle``: validation and a missing pool to status,
deletion, a status saved only when it changed) is the same for both drivers.
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
