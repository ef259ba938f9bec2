"""The operator's settings: what it reads from its environment when it starts, and what the chart
gives it there.

The chart turns its values into the operator container's ``PROTEGE_OPERATOR_*`` variables
(charts/protege/templates/operator.yaml); the operator builds its settings from them
(:meth:`OperatorSettings.from_environment`). `protege render --values` goes the same way: Helm
renders the chart's operator Deployment for those values (:func:`chart_settings`) and the
same :meth:`OperatorSettings.from_environment` reads that container's variables. There is one
mapping from values to settings, the chart's template; nothing here repeats it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from protege.operator.allowlist import PoolAllowList
from protege.operator.isolation import NetworkIsolation
from protege.operator.platform import Platform

# The chart in a source checkout (operator/protege/operator/ → the repository's charts/protege).
CHART = Path(__file__).resolve().parents[3] / "charts" / "protege"
RELEASE, RELEASE_NAMESPACE = "protege", "protege-system"  # as docs/kubernetes.md installs it
# A kubeconfig for an address nothing listens on: the client-side dry run never reaches a cluster.
DRY_RUN_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
users: [{name: none, user: {token: none}}]
current-context: none
"""
HELM_MISSING = (
    "`protege render --values/--set` renders the chart with Helm, embedded in the Python package "
    "helm-python-sdk, which is not installed: pip install 'helm-python-sdk>=0.2' (or protege[dev])"
)


@dataclass(frozen=True)
class OperatorSettings:
    """The installation (images, artifact store, NATS, platform pod template), what pools may
    choose, and their NetworkPolicies (None: off)."""

    platform: Platform
    allowed: PoolAllowList
    isolation: NetworkIsolation | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """The settings the ``PROTEGE_OPERATOR_*`` variables give; ValueError names a bad one."""
        return cls(
            Platform.from_environment(environ),
            PoolAllowList.from_environment(environ),
            NetworkIsolation.from_environment(environ),
        )


def merge_values(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Values files laid over each other as ``helm -f a.yaml -f b.yaml`` does: maps merge key by key,
    anything else from the later file replaces the earlier; a null removes the key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _over(merged, layer)
    return merged


def _over(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _over(out[key], value)
        else:
            out[key] = value
    return out


def chart_without_subcharts(chart: Path, target: Path) -> Path:
    """A copy of ``chart`` at ``target`` without its dependencies (NATS, KubeRay) or fetched
    subcharts: Helm renders it without ``helm dependency build``."""
    shutil.copytree(chart, target, ignore=shutil.ignore_patterns("charts", "Chart.lock", "*.tgz"))
    metadata = yaml.safe_load((target / "Chart.yaml").read_text())
    metadata.pop("dependencies", None)
    (target / "Chart.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return target


def render_chart(
    values: Mapping[str, Any],
    *,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart's objects for these values, as ``helm template`` renders them (Helm's client dry
    run, helm-python-sdk), without its subcharts (NATS, KubeRay): Helm refuses to render while
    they are not fetched into charts/, and none of them is part of the operator's settings.

    Raises RuntimeError with what to install when helm-python-sdk is missing, and ValueError
    when Helm refuses the values (the chart's schema, a ``fail`` in a template).
    """
    helm = _helm()
    if not (chart / "Chart.yaml").is_file():
        raise ValueError(f"{chart} is not a chart directory (no Chart.yaml): pass the chart's directory")
    with tempfile.TemporaryDirectory() as scratch:
        copy = chart_without_subcharts(chart, Path(scratch) / chart.name)
        with helm.Config(
            namespace=namespace, storage_driver="memory", kubeconfig_content=DRY_RUN_KUBECONFIG
        ) as cfg:
            try:
                release_info = cfg.install(copy, release, dict(values), dry_run="client")
            except helm.HelmError as error:
                raise ValueError(f"helm refused the values: {error}") from None
    return [d for d in yaml.safe_load_all(release_info["manifest"]) if d]


def _helm() -> Any:
    """helm-python-sdk (Helm's Go library, embedded), or RuntimeError saying how to install it."""
    try:
        import helm_python
    except ImportError:
        raise RuntimeError(HELM_MISSING) from None
    return helm_python


def parse_set(expressions: Sequence[str]) -> dict[str, Any]:
    """``--set`` expressions as Helm reads them (its own parser: ``a.b=1,c[0]=x,d={80,443}``, typed
    values, ``\\,`` escapes), in order: a later one sets over an earlier one, as ``helm --set a --set b``."""
    if not expressions:
        return {}
    helm = _helm()
    try:
        # Helm parses each --set into the same map, in turn: one comma-joined expression does the same
        return dict(helm.parse_set_string(",".join(expressions)))
    except helm.HelmError as error:
        raise ValueError(f"--set {' '.join(expressions)!r}: {error}") from None


def operator_pod(objects: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The operator's pod spec among the chart's rendered objects (its Deployment, or its
    StatefulSet with peering): its container, its ServiceAccount."""
    [workload] = [
        o
        for o in objects
        if o.get("kind") in ("Deployment", "StatefulSet")
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    pod: Mapping[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def operator_environment(objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The operator container's ``PROTEGE_OPERATOR_*`` variables with literal values, from the
    chart's rendered objects."""
    [container] = operator_pod(objects)["containers"]
    return {
        e["name"]: str(e["value"])
        for e in container.get("env", [])
        if e["name"].startswith("PROTEGE_OPERATOR_") and "value" in e
    }


def chart_settings(
    values_files: Sequence[Path],
    *,
    set_values: Sequence[str] = (),
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> OperatorSettings:
    """The settings an operator installed with these values files and ``--set`` expressions
    (``helm install -f ... --set ...``: the expressions over the files) runs with."""
    layers: list[Mapping[str, Any]] = []
    for path in values_files:
        try:
            layer = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: {error}") from None
        if not isinstance(layer, Mapping):
            raise ValueError(f"{path}: a values file is a YAML mapping")
        layers.append(layer)
    layers.append(parse_set(set_values))
    objects = render_chart(merge_values(layers), chart=chart, release=release, namespace=namespace)
    return OperatorSettings.from_environment(operator_environment(objects))
