"""A pool's readiness from its RayService's status, as KubeRay v1.7 reports it (pure).

KubeRay says whether the Serve application runs in the ``Ready`` condition (``serviceStatus``
is kept for older readers), and says why an application does not only in
``activeServiceStatus``/``pendingServiceStatus.applicationStatuses``: a ``DEPLOY_FAILED``
application of a new pool leaves ``serviceStatus`` empty, an ``UNHEALTHY`` one of a running
pool leaves it ``Running``. A RayService KubeRay refuses gets ``Ready=False, reason
ValidationFailed`` and no cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protege.api.pool import PoolPhase

_FAILED_APPS = ("DEPLOY_FAILED", "UNHEALTHY")


@dataclass(frozen=True)
class Readiness:
    phase: PoolPhase
    ready: bool
    reason: str
    message: str
    warning: bool = False  # worth a Warning event when it starts


def readiness(status: dict[str, Any]) -> Readiness:
    """The pool's phase and Ready condition from its RayService's ``status``."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    running = (ready or {}).get("status") == "True" or status.get("serviceStatus") == "Running"
    failed = _failed_application(status)
    if failed is not None:
        if running:
            return Readiness(PoolPhase.DEGRADED, False, "ServeApplicationUnhealthy", failed, warning=True)
        return Readiness(PoolPhase.PROVISIONING, False, "ServeApplicationFailed", failed, warning=True)
    if running:
        return Readiness(PoolPhase.READY, True, "ServeRunning", "the Serve application is running")
    if ready is not None and ready.get("reason") == "ValidationFailed":
        message = f"KubeRay refused the RayService: {ready.get('message', '')}"
        return Readiness(PoolPhase.FAILED, False, "RayServiceInvalid", message, warning=True)
    if ready is not None:
        detail = ": ".join(part for part in (ready.get("reason"), ready.get("message")) if part)
        return Readiness(PoolPhase.PROVISIONING, False, "Provisioning", f"RayService: {detail}")
    return Readiness(
        PoolPhase.PROVISIONING,
        False,
        "Provisioning",
        f"RayService: {status.get('serviceStatus') or 'no status yet'}",
    )


def _failed_application(status: dict[str, Any]) -> str | None:
    """Serve's own words for the first failed application (and its deployments), if any."""
    for side in ("activeServiceStatus", "pendingServiceStatus"):
        applications = (status.get(side) or {}).get("applicationStatuses") or {}
        for name, app in sorted(applications.items()):
            if app.get("status") not in _FAILED_APPS:
                continue
            parts = [f"Serve application {name} is {app['status']}"]
            if app.get("message"):
                parts.append(str(app["message"]).strip())
            for deployment, state in sorted((app.get("serveDeploymentStatuses") or {}).items()):
                if state.get("message"):
                    parts.append(f"deployment {deployment}: {state['message']}")
            return "; ".join(parts)
    return None
