"""The kopf operator: ``kopf run -m protege.operator.main``.

Handlers adopt, apply and patch status; every child comes from a pure renderer
(:mod:`protege.operator.children`, :mod:`~protege.operator.routing`, :mod:`~protege.operator.training_jobs`).
A SpecialistPool gets its RayService, routing ConfigMap and gateway, applied server-side again on
its timer (drift is undone within one interval); its status follows the RayService (Ready once KubeRay
reports the Serve application running). A Specialist
is driven by the lifecycle shared with the local driver (:mod:`protege.flywheel.lifecycle`:
validation and a missing pool to status, the decision core, deletion, a status written only
when it changed): RayJobs to train, its pool's routing table to roll out, events for every
transition, a finalizer to clean up its artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf

from protege.api.meta import ConditionStatus, KubeModel, set_condition, set_progress, spec_or_problems
from protege.api.pool import PoolPhase, SpecialistPoolSpec, SpecialistPoolStatus
from protege.api.routes import RoutingTable
from protege.api.specialist import SpecialistStatus
from protege.capture.access import OPERATOR
from protege.capture.connection import NatsEndpoint
from protege.config import load_settings
from protege.flywheel.data import StoreData
from protege.flywheel.lifecycle import (
    Pool,
    delete,
    deletion_policy,
    drive,
    invalid_status,
    parse_spec,
)
from protege.flywheel.specialist import TRIGGER_ANNOTATION, PoolFacts
from protege.operator import metrics
from protege.operator.allowlist import PoolAllowList
from protege.operator.children import render_pool
from protege.operator.flywheel_io import KubeFlywheelIO, RouteBook
from protege.operator.gateway import gateway_name
from protege.operator.kube import Connection, KubeClient
from protege.operator.metrics import PhaseBook
from protege.operator.passes import Passes
from protege.operator.platform import Owner, Platform
from protege.operator.ray_service import ray_service_name
from protege.operator.routing import render_routes, routes_config_map_name
from protege.operator.serve_state import readiness
from protege.operator.settings import OperatorSettings
from protege.store.artifacts import ArtifactStore

GROUP, VERSION = "protege.dev", "v1alpha1"
STATUS_INTERVAL = float(os.environ.get("PROTEGE_OPERATOR_STATUS_INTERVAL", "30"))
SPECIALIST_INTERVAL = float(os.environ.get("PROTEGE_OPERATOR_SPECIALIST_INTERVAL", "30"))
SpecT = TypeVar("SpecT", bound=KubeModel)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = 20  # events for every transition (INFO and up)
    # A deleted Specialist's timer may be mid-pass; kopf then checks every `cancellation_polling`
    # seconds (60 by default) whether it has exited before it releases the finalizer.
    settings.background.cancellation_polling = 1.0
    memo.kube = KubeClient(Connection.from_environment())
    # the installation, what pools may choose (pools.allowed*: images, extraArgs, service accounts,
    # priority classes) and their NetworkPolicies, if any: as `protege render --values` reads them
    operator = OperatorSettings.from_environment(os.environ)
    memo.platform, memo.allowed, memo.isolation = operator.platform, operator.allowed, operator.isolation
    memo.store = _store(memo.platform)
    # its own identity on the call log (PROTEGE_NATS_AUTH__*: the chart passes it from a Secret)
    memo.nats = NatsEndpoint.from_settings(load_settings(), OPERATOR).with_servers(memo.platform.nats_url)
    memo.data = StoreData(memo.store, ttl_seconds=min(10.0, SPECIALIST_INTERVAL))
    memo.routes = RouteBook(memo.kube)
    memo.phases = PhaseBook()
    memo.passes = Passes()
    metrics.serve(int(os.environ.get("PROTEGE_OPERATOR_METRICS_PORT", "9090")))


def _store(platform: Platform) -> ArtifactStore:
    """The platform's artifact store, with the operator's own S3 credentials (PROTEGE_S3__*)."""
    settings = load_settings()
    s3 = settings.s3.model_copy(update={"endpoint_url": platform.s3_endpoint or settings.s3.endpoint_url})
    return ArtifactStore.from_settings(
        settings.model_copy(update={"artifact_store": platform.artifact_store, "s3": s3})
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    # a pass reads the call log for at most 20 s (flywheel.data.call_records): wait a little longer
    passes: Passes = memo.passes
    if not await passes.drain(30):
        logger.warning(f"stopping with {passes.count} flywheel passes still under way")
    await memo.kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    server = os.environ.get("PROTEGE_OPERATOR_API_SERVER")
    if server:  # tests (kmock) and local development
        return kopf.ConnectionInfo(server=server, insecure=True)
    return kopf.login_via_client(**kwargs)


def _validated(model: type[SpecT], spec: Mapping[str, Any], kind: str) -> SpecT:
    """The spec as its model, or a PermanentError naming every wrong field and how to fix it."""
    parsed = spec_or_problems(model, spec, kind)
    if isinstance(parsed, str):
        raise kopf.PermanentError(parsed)
    return parsed


class NotAllowedError(kopf.PermanentError):
    """A valid pool that chooses what the platform does not allow (image, engine arguments, its pods'
    service accounts and priority classes)."""


def _allowed(pool: SpecialistPoolSpec, memo: kopf.Memo) -> SpecialistPoolSpec:
    allowed: PoolAllowList = memo.allowed
    refusals = allowed.refusals(
        pool, platform_image=memo.platform.serving_image, platform_pods=memo.platform.pod_templates
    )
    if refusals:
        raise NotAllowedError("SpecialistPool not allowed by the platform: " + "; ".join(refusals))
    return pool


def _owner(body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(body["kind"], meta["name"], meta["namespace"], meta["uid"])


# Pool phases on their way to Ready (kstatus Reconciling): KubeRay creates or recovers the cluster.
POOL_ON_ITS_WAY = frozenset({PoolPhase.PENDING, PoolPhase.PROVISIONING, PoolPhase.DEGRADED})


def _status(
    status: kopf.Status,
    meta: kopf.Meta,
    phase: PoolPhase,
    *,
    ready: bool,
    reason: str,
    message: str,
    ready_replicas: int | None = None,
) -> dict[str, Any]:
    current = SpecialistPoolStatus.model_validate(dict(status)) if status else SpecialistPoolStatus()
    generation, now = meta.get("generation"), datetime.now(UTC).replace(microsecond=0)
    conditions = set_condition(
        current.conditions,
        "Ready",
        ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        reason,
        message=message,
        observed_generation=generation,
        now=now,
    )
    conditions = set_progress(
        conditions,
        reconciling=(reason, message) if phase in POOL_ON_ITS_WAY else None,
        stalled=(reason, message) if phase is PoolPhase.FAILED else None,
        observed_generation=generation,
        now=now,
    )
    updated = current.model_copy(
        update={
            "phase": phase,
            "observed_generation": generation,
            "conditions": conditions,
            "service_name": ray_service_name(meta["name"]),
            "endpoint": f"http://{gateway_name(meta['name'])}.{meta['namespace']}.svc/v1",
            "ready_replicas": current.ready_replicas if ready_replicas is None else ready_replicas,
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
        pool = _allowed(_validated(SpecialistPoolSpec, spec, "SpecialistPool"), memo)
    except kopf.PermanentError as error:
        reason = "NotAllowed" if isinstance(error, NotAllowedError) else "InvalidSpec"
        patch.status.update(
            _status(status, meta, PoolPhase.FAILED, ready=False, reason=reason, message=str(error))
        )
        raise
    await _apply_children(_owner(body), pool, memo, logger)
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


async def _apply_children(
    owner: Owner, pool: SpecialistPoolSpec, memo: kopf.Memo, logger: kopf.Logger, *, healing: bool = False
) -> None:
    """Server-side apply every child (:func:`render_pool`), and create the routing ConfigMap if it is
    missing: created empty, never overwritten (the table is the Specialists' to fill)."""
    log = logger.debug if healing else logger.info  # the timer applies them every interval
    for child in render_pool(owner, pool, memo.platform, memo.isolation):
        await memo.kube.apply(child)
        log(f"applied {child['kind']} {child['metadata']['name']}")
    if await memo.kube.create(render_routes(owner, RoutingTable())):
        logger.info(f"created ConfigMap {routes_config_map_name(owner.name)}")


@kopf.timer(GROUP, VERSION, "specialistpools", interval=STATUS_INTERVAL, initial_delay=1)
async def follow_pool(
    *,
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo, logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """Heal drift, then follow KubeRay: every child is applied again (a deleted one comes back, an
    edited field the operator renders is set back), then the pool is Ready once KubeRay reports its
    Serve application running; otherwise why not, in KubeRay's and Serve's words (:func:`readiness`)."""
    try:
        pool = _allowed(_validated(SpecialistPoolSpec, spec, "SpecialistPool"), memo)
    except kopf.PermanentError:
        return  # Failed with the reason already (reconcile_pool): nothing of it to apply or follow
    await _apply_children(_owner(body), pool, memo, logger, healing=True)
    phase = status.get("phase") if status else None
    if phase == PoolPhase.FAILED.value:
        return
    service = await memo.kube.get(
        "ray.io/v1", "RayService", meta["namespace"], ray_service_name(meta["name"])
    )
    if service is None:
        return
    state = readiness(service.get("status") or {})
    conditions: list[dict[str, Any]] = list(status.get("conditions") or []) if status else []
    before = next((c.get("reason") for c in conditions if c.get("type") == "Ready"), None)
    if state.warning and before != state.reason:  # once, when the pool goes wrong
        kopf.warn(body, reason=state.reason, message=state.message)
    elif phase != state.phase.value:
        kopf.info(body, reason=state.reason, message=state.message)
    replicas = int((service.get("status") or {}).get("numServeEndpoints") or 0)  # KubeRay's ready count
    patch.status.update(
        _status(
            status,
            meta,
            state.phase,
            ready=state.ready,
            reason=state.reason,
            message=state.message,
            ready_replicas=replicas,
        )
    )


class StatusPatch:
    """The lifecycle's status sink on Kubernetes: the status subresource, by a merge patch."""

    def __init__(self, patch: kopf.Patch) -> None:
        self.patch = patch

    async def save(self, status: SpecialistStatus) -> None:
        self.patch.status.update(status.to_merge_patch())


def _specialist_status(status: kopf.Status) -> SpecialistStatus:
    return SpecialistStatus.model_validate(dict(status)) if status else SpecialistStatus()


@kopf.on.resume(GROUP, VERSION, "specialists")
@kopf.on.create(GROUP, VERSION, "specialists")
@kopf.on.update(GROUP, VERSION, "specialists", field="spec")
async def check_specialist(
    *, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any
) -> None:
    """Reject an invalid spec at once, naming the field (an error event besides the status); the
    flywheel timer does the rest."""
    problem = parse_spec(spec)
    if isinstance(problem, str):
        before = _specialist_status(status)
        invalid = invalid_status(before, problem, generation=meta.get("generation"))
        if invalid != before:
            await StatusPatch(patch).save(invalid)
        raise kopf.PermanentError(problem)


@kopf.timer(GROUP, VERSION, "specialists", interval=SPECIALIST_INTERVAL, initial_delay=0.5)
async def run_specialist(
    *,
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo, **_: Any,
) -> None:  # fmt: skip
    """One flywheel pass (:func:`protege.flywheel.lifecycle.drive`) with Kubernetes I/O; none once
    the operator is stopping (:func:`close` waits for those under way)."""
    passes: Passes = memo.passes
    if passes.stopping:
        return
    async with passes.one():
        await _specialist_pass(body=body, spec=spec, meta=meta, status=status, patch=patch, memo=memo)


async def _specialist_pass(
    *,
    body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch,
    memo: kopf.Memo,
) -> None:  # fmt: skip
    name, namespace = meta["name"], meta["namespace"]

    async def find_pool(pool: str) -> Pool | None:
        pool_body = await memo.kube.get(f"{GROUP}/{VERSION}", "SpecialistPool", namespace, pool)
        if pool_body is None:
            return None
        # a pool the platform does not allow trains nothing either: its training pods would run as
        # the service account and priority class it chose (its own status says NotAllowed)
        pool_spec = _allowed(_validated(SpecialistPoolSpec, pool_body["spec"], "SpecialistPool"), memo)
        io = KubeFlywheelIO(
            memo.data,
            memo.kube,
            memo.routes,
            memo.platform,
            owner=_owner(body),
            pool=_owner(pool_body),
            pool_spec=pool_spec,
            nats=memo.nats,
        )
        return Pool(PoolFacts.of(pool_spec), io)

    with metrics.PASS_SECONDS.time():
        try:
            driven = await drive(
                name,
                parse_spec(spec),
                _specialist_status(status),
                find_pool=find_pool,
                sink=StatusPatch(patch),
                where=f"in {namespace}",
                generation=meta.get("generation"),
                trigger=(meta.get("annotations") or {}).get(TRIGGER_ANNOTATION),
            )
        except Exception:
            metrics.PASSES.labels(result="error").inc()
            raise  # kopf retries with backoff and logs it
    if not driven.reconciled:  # an invalid spec or a missing pool: its status says so
        return
    metrics.PASSES.labels(result="ok").inc()
    memo.phases.set(namespace, name, driven.status.phase.value)
    for event in driven.events:
        metrics.EVENTS.labels(reason=event.reason).inc()
        (kopf.warn if event.warning else kopf.info)(body, reason=event.reason, message=event.message)


@kopf.on.delete(GROUP, VERSION, "specialists")
async def delete_specialist(
    *, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, **_: Any
) -> None:
    """Take the Specialist out of its pool's routes, then delete its job results, and its adapters
    and reports unless its ``spec.deletionPolicy`` is Retain (:func:`protege.flywheel.lifecycle.delete`).

    The RayJobs go with it by owner reference; the finalizer holds the deletion until this ran.
    """
    name, namespace = meta["name"], meta["namespace"]
    memo.phases.set(namespace, name, None)
    pool_name = spec.get("pool")
    pool_body = (
        await memo.kube.get(f"{GROUP}/{VERSION}", "SpecialistPool", namespace, pool_name)
        if pool_name
        else None
    )
    routes = memo.routes.of(_owner(pool_body)) if pool_body is not None else None
    await delete(
        name, _specialist_status(status), routes=routes, store=memo.store, policy=deletion_policy(spec)
    )
