"""`protege render`: the exact child manifests the operator would create, for review in Git.

With ``--values`` the operator's settings are those the chart gives it for these values files:
Helm renders the chart's operator Deployment and the operator's own
:meth:`~protege.operator.settings.OperatorSettings.from_environment` reads its container's
variables (:mod:`protege.operator.settings`). Without, they come from this process's
``PROTEGE_OPERATOR_*`` variables, as the operator reads its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from pydantic import ValidationError

from protege.api.meta import spec_problems
from protege.api.pool import SpecialistPoolSpec
from protege.api.specialist import SpecialistSpec
from protege.cli.common import console, fail

if TYPE_CHECKING:
    from protege.operator.settings import OperatorSettings


def render(
    *,
    files: list[Path] = typer.Option(
        ..., "-f", "--filename", help="SpecialistPool and Specialist manifests."
    ),
    namespace: str = typer.Option("default", "-n", "--namespace", help="Namespace of resources without one."),
    dataset_version: str = typer.Option(
        "latest", help="Dataset version a Specialist's training RayJob would train on."
    ),
    values_files: list[Path] | None = typer.Option(
        None,
        "--values",
        help="A values file of the chart, as `helm install -f` takes it; repeat it (later files override "
        "earlier ones). The operator's settings (images, artifact store, NATS, platform.podTemplate, "
        "pools.allowed*, networkPolicies) are those the chart gives it for these values: rendered by Helm "
        "(the Python package helm-python-sdk). Without: the PROTEGE_OPERATOR_* variables, as the operator "
        "reads them; unset: the defaults.",
    ),
    set_values: list[str] | None = typer.Option(
        None,
        "--set",
        help="Chart values on the command line, as `helm install --set` takes them (Helm's own parser: "
        "a.b=1,c[0]=x); repeat it. Set over the --values files, as Helm does.",
    ),
    chart: Path | None = typer.Option(
        None,
        "--chart",
        help="The chart's directory, for --values and --set. Default: charts/protege of this checkout.",
    ),
    release: str = typer.Option("protege", "--release", help="The chart's release name, for --values/--set."),
    release_namespace: str = typer.Option(
        "protege-system", "--release-namespace", help="The chart's release namespace, for --values/--set."
    ),
    allowed_images: list[str] | None = typer.Option(
        None,
        "--allowed-image",
        help="A glob pattern of the images a pool may choose (the chart's pools.allowedImages); repeat it. "
        "Default: the chart's, else PROTEGE_OPERATOR_ALLOWED_IMAGES (a JSON list), as the operator "
        "reads it; unset: any.",
    ),
    allowed_extra_args: list[str] | None = typer.Option(
        None,
        "--allowed-extra-arg",
        help="A glob pattern of the engine.extraArgs a pool may set (pools.allowedExtraArgs); repeat it. "
        "Default: the chart's, else PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS, as the operator reads it; "
        "unset: any.",
    ),
    allowed_service_accounts: list[str] | None = typer.Option(
        None,
        "--allowed-service-account",
        help="A glob pattern of the serviceAccountNames a pool's podTemplate may set "
        "(pools.allowedServiceAccounts); repeat it. "
        "Default: the chart's, else PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS, "
        "as the operator reads it; unset: any.",
    ),
    allowed_priority_classes: list[str] | None = typer.Option(
        None,
        "--allowed-priority-class",
        help="A glob pattern of the priorityClassNames a pool's podTemplate may set "
        "(pools.allowedPriorityClasses); repeat it. "
        "Default: the chart's, else PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES, "
        "as the operator reads it; unset: any.",
    ),
) -> None:
    """Print what the operator would apply: the RayService, gateway (with its autoscaler, disruption
    budget and, with the chart's networkPolicies, network policies), routing ConfigMap and training
    RayJobs, with the operator's settings from --values (the chart's) or PROTEGE_OPERATOR_*."""
    from protege.api.jobs import JobSpec
    from protege.api.routes import RoutingTable
    from protege.operator.allowlist import PoolAllowList
    from protege.operator.children import render_pool
    from protege.operator.platform import Owner
    from protege.operator.routing import render_routes
    from protege.operator.training_jobs import render_training_job

    settings = _operator_settings(values_files or [], set_values or [], chart, release, release_namespace)
    platform, allowed, isolation = settings.platform, settings.allowed, settings.isolation
    allowed = PoolAllowList(
        tuple(allowed_images) if allowed_images else allowed.images,
        tuple(allowed_extra_args) if allowed_extra_args else allowed.extra_args,
        tuple(allowed_service_accounts) if allowed_service_accounts else allowed.service_accounts,
        tuple(allowed_priority_classes) if allowed_priority_classes else allowed.priority_classes,
    )
    documents: list[dict[str, Any]] = []
    for path in files:
        try:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as error:
            fail(f"{path}: {error}")
    pools: dict[str, SpecialistPoolSpec] = {}
    out: list[dict[str, Any]] = []

    def owner(document: dict[str, Any]) -> Owner:
        meta = document.get("metadata") or {}
        uid = meta.get("uid", "00000000-0000-0000-0000-000000000000")  # set by the API server on apply
        return Owner(document["kind"], meta.get("name", ""), meta.get("namespace", namespace), uid)

    def spec_of(document: dict[str, Any], model: Any) -> Any:
        try:
            return model.model_validate(document.get("spec") or {})
        except ValidationError as error:
            fail(f"{document['kind']} {document.get('metadata', {}).get('name')}: {spec_problems(error)}")

    for document in documents:
        if document.get("kind") == "SpecialistPool":
            spec = spec_of(document, SpecialistPoolSpec)
            refusals = allowed.refusals(  # as the operator
                spec, platform_image=platform.serving_image, platform_pods=platform.pod_templates
            )
            if refusals:
                name = document["metadata"]["name"]
                fail(f"SpecialistPool {name}: not allowed by the platform: " + "; ".join(refusals))
            pools[document["metadata"]["name"]] = spec
            parent = owner(document)
            out += [*render_pool(parent, spec, platform, isolation), render_routes(parent, RoutingTable())]
    for document in documents:
        if document.get("kind") != "Specialist":
            continue
        specialist = spec_of(document, SpecialistSpec)
        pool = pools.get(specialist.pool)
        if pool is None:
            fail(
                f"Specialist {document['metadata']['name']}: its pool {specialist.pool!r} is not among "
                "the files; pass the pool's manifest with another -f"
            )
        job = JobSpec(
            specialist=document["metadata"]["name"],
            task=specialist.task.id or document["metadata"]["name"],
            dataset_version=None if dataset_version == "latest" else dataset_version,
            base_model=pool.base_model.source,
            base_model_revision=pool.base_model.revision,
            max_lora_rank=pool.engine.max_lora_rank,
            training=specialist.training,
            evaluation=specialist.evaluation,
        )
        out.append(render_training_job(owner(document), job, pool, platform, pool_name=specialist.pool))
    if not out:
        fail("no SpecialistPool or Specialist in the files")
    console.print(yaml.safe_dump_all(out, sort_keys=False), highlight=False, end="", soft_wrap=True)


def _operator_settings(
    values_files: list[Path], set_values: list[str], chart: Path | None, release: str, namespace: str
) -> OperatorSettings:
    """The chart's settings for the values files and --set expressions (the operator's own reading of
    the variables Helm renders into its Deployment), or this process's PROTEGE_OPERATOR_* variables."""
    from protege.operator.settings import CHART, OperatorSettings, chart_settings

    try:
        if values_files or set_values:
            return chart_settings(
                values_files,
                set_values=set_values,
                chart=chart or CHART,
                release=release,
                namespace=namespace,
            )
        return OperatorSettings.from_environment(os.environ)
    except (ValueError, RuntimeError) as error:
        fail(str(error))
