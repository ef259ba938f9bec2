"""The kopf operator: ``kopf run -m protege.operator.main``.

Handlers adopt, apply and patch status; every child comes from :mod:`protege.operator.render`.
A SpecialistPool gets its RayService, routing ConfigMap and gateway; its status follows
the RayService (Ready once KubeRay reports the Serve application running).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from protege.api.meta import ConditionStatus, set_condition
from protege.api.pool import PoolPhase, SpecialistPoolSpec, SpecialistPoolStatus
from protege.operator.kube import Connection, KubeClient
from protege.operator.render import (
    Owner,
    Platform,
    ray_service_name,
    render_gateway,
    render_ray_service,
    render_routes,
)
from protege.serving.router.table import RoutingTable

GROUP, VERSION = "protege.dev", "v1alpha1"
STATUS_INTERVAL = float(os.environ.get("PROTEGE_OPERATOR_STATUS_INTERVAL", "30"))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = 20  # events for every transition (INFO and up)
    memo.kube = KubeClient(Connection.from_environment())
    memo.platform = Platform(
        **{
            field: os.environ[f"PROTEGE_OPERATOR_{field.upper()}"]
            for field in Platform.__dataclass_fields__
            if f"PROTEGE_OPERATOR_{field.upper()}" in os.environ
        }
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    server = os.environ.get("PROTEGE_OPERATOR_API_SERVER")
    if server:  # tests (kmock) and local development
        return kopf.ConnectionInfo(server=server, insecure=True)
    return kopf.login_via_client(**kwargs)


def _pool_spec(spec: kopf.Spec) -> SpecialistPoolSpec:
    try:
        return SpecialistPoolSpec.model_validate(dict(spec))
    except ValidationError as error:
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise kopf.PermanentError(f"invalid SpecialistPool: {problems}") from None


def _owner(body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(body["kind"], meta["name"], meta["namespace"], meta["uid"])


def _status(
    status: kopf.Status, meta: kopf.Meta, phase: PoolPhase, *, ready: bool, reason: str, message: str
) -> dict[str, Any]:
    current = SpecialistPoolStatus.model_validate(dict(status)) if status else SpecialistPoolStatus()
    generation = meta.get("generation")
    conditions = set_condition(
        current.conditions,
        "Ready",
        ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        reason,
        message=message,
        observed_generation=generation,
        now=datetime.now(UTC).replace(microsecond=0),
    )
    updated = current.model_copy(
        update={
            "phase": phase,
            "observed_generation": generation,
            "conditions": conditions,
            "service_name": ray_service_name(meta["name"]),
        }
    )
    return updated.to_kube()


@kopf.on.resume(GROUP, VERSION, "specialistpools")
@kopf.on.create(GROUP, VERSION, "specialistpools")
@kopf.on.update(GROUP, VERSION, "specialistpools", field="spec")
async def reconcile_pool(
    *,
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo, logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    try:
        pool = _pool_spec(spec)
    except kopf.PermanentError as error:
        patch.status.update(
            _status(status, meta, PoolPhase.FAILED, ready=False, reason="InvalidSpec", message=str(error))
        )
        raise
    owner = _owner(body)
    children = [render_ray_service(owner, pool, memo.platform), *render_gateway(owner, pool, memo.platform)]
    if await memo.kube.get("v1", "ConfigMap", owner.namespace, f"{owner.name}-routes") is None:
        children.append(render_routes(owner, RoutingTable()))  # the table itself is the specialists' to fill
    for child in children:
        await memo.kube.apply(child)
        logger.info(f"applied {child['kind']} {child['metadata']['name']}")
    patch.status.update(
        _status(
            status,
            meta,
            PoolPhase.PROVISIONING,
            ready=False,
            reason="Provisioning",
            message="waiting for the RayService",
        )
    )


@kopf.timer(GROUP, VERSION, "specialistpools", interval=STATUS_INTERVAL, initial_delay=1)
async def follow_pool(
    *, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Ready once KubeRay reports the pool's Serve application running."""
    phase = status.get("phase") if status else None
    if phase == PoolPhase.FAILED.value:
        return
    service = await memo.kube.get(
        "ray.io/v1", "RayService", meta["namespace"], ray_service_name(meta["name"])
    )
    if service is None:
        return
    ray_status = service.get("status") or {}
    if ray_status.get("serviceStatus") == "Running":
        new = _status(
            status,
            meta,
            PoolPhase.READY,
            ready=True,
            reason="ServeRunning",
            message="the Serve application is running",
        )
    else:
        detail = ray_status.get("serviceStatus") or "no status yet"
        new = _status(
            status,
            meta,
            PoolPhase.PROVISIONING,
            ready=False,
            reason="Provisioning",
            message=f"RayService: {detail}",
        )
    if phase != new["phase"]:
        kopf.info(body, reason=new["conditions"][-1]["reason"], message=new["conditions"][-1]["message"])
    patch.status.update(new)
