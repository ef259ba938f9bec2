"""Argo CD's health check of Protégé's kinds, run as Argo CD runs it: the chart's Lua script in Lua 5.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "charts" / "protege" / "files" / "argocd-health.lua"


def argocd_health(status: dict[str, Any] | None, generation: int | None = 1) -> tuple[str, str]:
    """(status, message) Argo CD would show for an object with this ``.status`` and generation."""
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime()
    obj: dict[str, Any] = {"metadata": {} if generation is None else {"generation": generation}}
    if status is not None:
        obj["status"] = status
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return str(result["status"]), str(result["message"])
