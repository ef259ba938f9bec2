"""A pool's readiness in KubeRay v1.7's words: the Ready condition, and Serve's per-application status."""

from __future__ import annotations

from typing import Any

from protege.api.pool import PoolPhase
from protege.operator.serve_state import readiness


def ready(status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message}


def apps(status: str, message: str = "", **deployments: str) -> dict[str, Any]:
    deployed = {name: {"status": status, "message": text} for name, text in deployments.items()}
    return {
        "applicationStatuses": {
            "pool": {"status": status, "message": message, "serveDeploymentStatuses": deployed}
        }
    }


def test_running_refused_failing_and_unhealthy_pools_say_so_in_kuberays_and_serves_words() -> None:
    running = readiness({"conditions": [ready("True", "NonZeroServeEndpoints")], "serviceStatus": "Running"})
    assert (running.phase, running.ready, running.warning) == (PoolPhase.READY, True, False)
    assert readiness({"serviceStatus": "Running"}).ready  # a KubeRay before the Ready condition

    refused = readiness(
        {"conditions": [ready("False", "ValidationFailed", "RayService name should be no more")]}
    )
    assert (refused.phase, refused.reason, refused.warning) == (PoolPhase.FAILED, "RayServiceInvalid", True)
    assert "RayService name should be no more" in refused.message

    failed = readiness(
        {"pendingServiceStatus": apps("DEPLOY_FAILED", "Deploying app 'pool' failed: rank 32")}
    )
    assert (failed.phase, failed.ready, failed.reason) == (
        PoolPhase.PROVISIONING,
        False,
        "ServeApplicationFailed",
    )
    assert failed.message == "Serve application pool is DEPLOY_FAILED; Deploying app 'pool' failed: rank 32"

    unhealthy = readiness(  # KubeRay keeps serviceStatus Running: only the application says it
        {
            "conditions": [ready("True", "NonZeroServeEndpoints")],
            "serviceStatus": "Running",
            "activeServiceStatus": apps(
                "UNHEALTHY", "The deployments are UNHEALTHY.", PoolEngine="replica died"
            ),
        }
    )
    assert (unhealthy.phase, unhealthy.ready, unhealthy.reason) == (
        PoolPhase.DEGRADED,
        False,
        "ServeApplicationUnhealthy",
    )
    assert "deployment PoolEngine: replica died" in unhealthy.message

    waiting = readiness({"conditions": [ready("False", "Initializing", "waiting for the cluster")]})
    assert (waiting.phase, waiting.message) == (
        PoolPhase.PROVISIONING,
        "RayService: Initializing: waiting for the cluster",
    )
    assert readiness({}).message == "RayService: no status yet"


def test_the_pool_status_is_kstatus_and_argocd_health_reads_it() -> None:
    from argocd_health import argocd_health

    from protege.operator.main import _status

    meta = {"name": "pool", "namespace": "team", "generation": 3}
    running_ready = [ready("True", "NonZeroServeEndpoints")]
    running = readiness({"conditions": running_ready, "serviceStatus": "Running"})
    refused = readiness({"conditions": [ready("False", "ValidationFailed", "name too long")]})
    unhealthy = readiness(
        {"conditions": running_ready, "activeServiceStatus": apps("UNHEALTHY", PoolEngine="replica died")}
    )
    provisioning = readiness({})
    seen = {}
    for state in (running, refused, unhealthy, provisioning):
        status = _status({}, meta, state.phase, ready=state.ready, reason=state.reason, message=state.message)
        held = {c["type"]: c["reason"] for c in status["conditions"] if c["status"] == "True"}
        seen[state.phase] = (held.get("Reconciling"), held.get("Stalled"), argocd_health(status, 3)[0])
    assert seen == {
        PoolPhase.READY: (None, None, "Healthy"),
        PoolPhase.FAILED: (None, "RayServiceInvalid", "Degraded"),
        PoolPhase.DEGRADED: (unhealthy.reason, None, "Degraded"),
        PoolPhase.PROVISIONING: (provisioning.reason, None, "Progressing"),
    }
    ahead = _status({}, meta, running.phase, ready=True, reason=running.reason, message="")
    assert argocd_health(ahead, 4) == ("Progressing", "waiting for the operator to observe generation 4")
    assert argocd_health(None, 1)[0] == "Progressing"  # no status yet
