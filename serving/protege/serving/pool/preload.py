"""Which adapters a pool replica loads before any call asks for them (pure).

Every replica reads the pool's routing table (``router.table``: the flywheel's file locally,
the pool's routes ConfigMap mounted into its pods on Kubernetes) and loads the versions it
routes to: so a candidate is resident on every replica from the moment it enters shadow, and
the first routed call after its promotion finds it loaded wherever Serve sends it.
"""

from __future__ import annotations

from collections.abc import Collection

from protege.api.routes import RoutingTable, adapter_name


def wanted(table: RoutingTable) -> list[str]:
    """The adapters the table routes to, most needed first: each specialist's active version,
    then the candidates (shadow or canary); none that failed to load."""
    active = [
        adapter_name(route.specialist, route.active)
        for route in table.routes
        if route.active is not None and route.active not in route.failed
    ]
    candidates = [
        adapter_name(route.specialist, route.candidate.version)
        for route in table.routes
        if route.candidate is not None and route.candidate.version not in route.failed
    ]
    return active + candidates


def to_preload(
    table: RoutingTable, resident: Collection[str], slots: int, failed: Collection[str]
) -> list[str]:
    """What to load now: the wanted adapters not resident, as many as the free slots hold.

    A preload never evicts: an adapter a call loaded stays. Those that failed to load on this
    replica (``failed``) are not tried again for the same table."""
    free = max(0, slots - len(resident))
    missing = [name for name in wanted(table) if name not in resident and name not in failed]
    return missing[:free]
