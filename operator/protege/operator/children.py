"""What the operator applies for a SpecialistPool, in one list that ``protege render`` prints too."""

from __future__ import annotations

from typing import Any

from protege.api.pool import SpecialistPoolSpec
from protege.operator.gateway import (
    render_gateway,
    render_gateway_autoscaler,
    render_gateway_disruption_budget,
)
from protege.operator.isolation import NetworkIsolation, render_network_policies
from protege.operator.platform import Owner, Platform
from protege.operator.ray_service import render_ray_service


def render_pool(
    owner: Owner, pool: SpecialistPoolSpec, platform: Platform, isolation: NetworkIsolation | None
) -> list[dict[str, Any]]:
    """The pool's children the operator applies, in order (the routing ConfigMap is created once
    and left to the Specialists: not here); ``isolation`` None when network policies are off."""
    children = [
        render_ray_service(owner, pool, platform),
        *render_gateway(owner, pool, platform),
        render_gateway_autoscaler(owner, pool),  # owns the gateway's replica count
        render_gateway_disruption_budget(owner),
    ]
    if isolation is not None:
        children += render_network_policies(owner, isolation)
    return children
