"""A SpecialistPool's routing table, as the ``ConfigMap`` its gateway and its serving pods mount."""

from __future__ import annotations

from typing import Any

from protege.api.routes import RoutingTable
from protege.operator.platform import Owner, child_metadata

ROUTES_KEY = "routes.json"
ROUTES_DIR = "/etc/protege/routes"
ROUTES_TABLE = f"{ROUTES_DIR}/{ROUTES_KEY}"  # the table where it is mounted: router.table


def routes_config_map_name(pool: str) -> str:
    return f"{pool}-routes"


def routes_volume(pool: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod volume of the pool's routing ConfigMap, and its read-only mount at ROUTES_DIR."""
    return (
        {"name": "routes", "configMap": {"name": routes_config_map_name(pool)}},
        {"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True},
    )


def render_routes(owner: Owner, table: RoutingTable) -> dict[str, Any]:
    """The pool's routing table, mounted into its gateway and serving pods (re-read when it changes)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(routes_config_map_name(owner.name), owner, "routes"),
        "data": {ROUTES_KEY: table.model_dump_json(indent=1)},
    }
