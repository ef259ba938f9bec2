"""A SpecialistPool's routing table, as the ``ConfigMap`` its gateway mounts."""

from __future__ import annotations

from typing import Any

from protege.api.routes import RoutingTable
from protege.operator.platform import Owner, child_metadata

ROUTES_KEY = "routes.json"


def routes_config_map_name(pool: str) -> str:
    return f"{pool}-routes"


def render_routes(owner: Owner, table: RoutingTable) -> dict[str, Any]:
    """The pool's routing table, mounted into its gateway (re-read when it changes)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(routes_config_map_name(owner.name), owner, "routes"),
        "data": {ROUTES_KEY: table.model_dump_json(indent=1)},
    }
