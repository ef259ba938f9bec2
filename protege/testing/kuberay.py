"""A KubeRay controller double for kmock's Kubernetes emulator (KubeRay v1.7.0's rules and states).

KubeRay validates in its controller, not at admission: the API server stores a RayJob or a
RayService whatever its name, and the controller then reports the refusal in the object's
status. An emulator without KubeRay accepts anything and reports nothing, so an operator
whose names are too long looks healthy in its tests and stays "Training" forever in a
cluster. This double closes that gap. Ported from KubeRay v1.7.0 (tag ``v1.7.0`` of
github.com/ray-project/kuberay, ``ray-operator/``) and k8s.io/apimachinery v0.36.0 (the
version KubeRay v1.7.0 builds with):

- :func:`validate_rayjob` and :func:`validate_rayservice`: pure, KubeRay's own messages, in
  KubeRay's order: ``ValidateRayJobMetadata``, ``ValidateRayJobSpec``, ``ValidateRayJobStatus``,
  ``ValidateRayServiceMetadata``, ``ValidateRayServiceSpec`` and ``ValidateRayClusterSpec``
  (``controllers/ray/utils/validation.go``), with the default feature gates of v1.7.0
  (``pkg/features/features.go``); names are DNS-1035 labels (``IsDNS1035Label``) of at most
  47 characters (``MaxRayJobNameLength`` = ``MaxRayServiceNameLength`` =
  ``MaxRayClusterNameLength`` 53 - 6, ``controllers/ray/utils/constant.go``).
- :class:`KubeRayDouble`: attached to a kmock instance, a controller that talks to it over
  HTTP as KubeRay talks to the API server, and moves every RayJob and RayService through
  KubeRay's states (``rayjob_controller.go``, ``rayservice_controller.go``): one transition
  per object per :meth:`~KubeRayDouble.reconcile` pass, like one reconcile of the real
  controller, in a background task or driven by the test. Ray's side (a job's outcome, a
  Serve application's health) is the test's to choose; time is a manual clock, so TTLs and
  deadlines are reached by :meth:`~KubeRayDouble.advance`, never by sleeping.

What is not modelled raises :class:`UnsupportedByDouble` (clusterSelector, suspend,
InteractiveMode, deletionStrategy, incremental upgrades, the initializing-timeout
annotation) rather than passing silently. Pods, Services and the submitter Job are not
created; a RayCluster's pods are all ready one pass after it is created.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import aiohttp

    from protege.crds.validate import CrdCatalogue

KUBERAY_VERSION = "v1.7.0"
MAX_RAYCLUSTER_NAME_LENGTH = 53  # constant.go MaxRayClusterNameLength
MAX_RAYJOB_NAME_LENGTH = MAX_RAYCLUSTER_NAME_LENGTH - 6  # constant.go MaxRayJobNameLength
MAX_RAYSERVICE_NAME_LENGTH = MAX_RAYCLUSTER_NAME_LENGTH - 6  # constant.go MaxRayServiceNameLength

RAYJOB_FINALIZER = "ray.io/rayjob-finalizer"  # constant.go RayJobStopJobFinalizer
RAYSERVICE_FINALIZER = "ray.io/rayservice-finalizer"  # constant.go RayServiceFinalizer
ORIGINATED_FROM_NAME = "ray.io/originated-from-cr-name"
ORIGINATED_FROM_CRD = "ray.io/originated-from-crd"
SUBMISSION_MODE_LABEL = "ray.io/job-submission-mode"
CLUSTER_HASH_ANNOTATION = "ray.io/hash-without-replicas-and-workers-to-delete"
KUBERAY_VERSION_ANNOTATION = "ray.io/kuberay-version"
INITIALIZING_TIMEOUT_ANNOTATION = "ray.io/initializing-timeout"
FT_ENABLED_ANNOTATION = "ray.io/ft-enabled"
EXTERNAL_STORAGE_NS_ANNOTATION = "ray.io/external-storage-namespace"
CLUSTER_SELECTOR_KEY = "ray.io/cluster"
DEFAULT_SERVE_APP_NAME = "default"
RAYCLUSTER_DELETION_DELAY_SECONDS = 60  # rayservice_controller.go RayClusterDeletionDelayDuration

# RayJob states (apis/ray/v1/rayjob_types.go)
NEW, INITIALIZING, RUNNING, COMPLETE, FAILED = "", "Initializing", "Running", "Complete", "Failed"
VALIDATION_FAILED, SUSPENDING, SUSPENDED, RETRYING, WAITING = (
    "ValidationFailed",
    "Suspending",
    "Suspended",
    "Retrying",
    "Waiting",
)
JOB_PENDING, JOB_RUNNING, JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED = (
    "PENDING",
    "RUNNING",
    "STOPPED",
    "SUCCEEDED",
    "FAILED",
)
JOB_TERMINAL = {JOB_STOPPED, JOB_SUCCEEDED, JOB_FAILED}  # IsJobTerminal
DEPLOYMENT_TERMINAL = {COMPLETE, FAILED}  # IsJobDeploymentTerminal: not ValidationFailed
K8S_JOB_MODE, HTTP_MODE, INTERACTIVE_MODE, SIDECAR_MODE = (
    "K8sJobMode",
    "HTTPMode",
    "InteractiveMode",
    "SidecarMode",
)
# Serve's application and deployment states (apis/ray/v1/rayservice_types.go)
APP_DEPLOYING, APP_RUNNING, APP_DEPLOY_FAILED, APP_UNHEALTHY = (
    "DEPLOYING",
    "RUNNING",
    "DEPLOY_FAILED",
    "UNHEALTHY",
)
RAYJOB_RESOURCE, RAYSERVICE_RESOURCE, RAYCLUSTER_RESOURCE = (
    "ray.io/v1/rayjobs",
    "ray.io/v1/rayservices",
    "ray.io/v1/rayclusters",
)


class UnsupportedByDouble(Exception):
    """A RayJob or RayService uses a KubeRay feature this double does not model."""


class KubeRayDoubleError(AssertionError):
    """What the double saw go wrong: objects the API server would have refused, unsupported features."""


@dataclass(frozen=True)
class FeatureGates:
    """KubeRay's feature gates (pkg/features/features.go), v1.7.0's defaults.

    Only the gates whose both branches the validation here ports can be changed; the others
    (network policy, mTLS, history server, embedded GCS storage) are off, as by default.
    """

    ray_job_deletion_policy: bool = True
    ray_service_incremental_upgrade: bool = True


DEFAULT_GATES = FeatureGates()


# --- k8s.io/apimachinery v0.36.0: pkg/util/validation and pkg/api/validate/content --------

_DNS_1035_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS_1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character"
)
_DNS_1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_1123_SUBDOMAIN_FMT = _DNS_1123_LABEL_FMT + "(\\." + _DNS_1123_LABEL_FMT + ")*"
_DNS_1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)
_LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """validation.RegexError / content.RegexError."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _matches(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value) is not None  # Go's ^...$ (no match before a final newline)


def _length(value: str) -> int:
    return len(value.encode())  # Go's len() counts bytes


def is_dns1035_label(value: str) -> list[str]:
    """validation.IsDNS1035Label: its errors, empty when ``value`` is a DNS-1035 label."""
    errors = []
    if _length(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _matches(_DNS_1035_FMT, value):
        errors.append(_regex_error(_DNS_1035_MSG, _DNS_1035_FMT, "my-name", "abc-123"))
    return errors


def _is_dns1123_subdomain(value: str) -> list[str]:
    """content.IsDNS1123Subdomain."""
    errors = []
    if _length(value) > 253:
        errors.append("must be no more than 253 bytes")
    if not _matches(_DNS_1123_SUBDOMAIN_FMT, value):
        errors.append(_regex_error(_DNS_1123_SUBDOMAIN_MSG, _DNS_1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def is_qualified_name(value: str) -> list[str]:
    """validation.IsQualifiedName (content.IsLabelKey): a label key's errors."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += [f"prefix part {error}" for error in _is_dns1123_subdomain(prefix)]
    else:
        return [
            "a valid label key "
            + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif _length(name) > 63:
        errors.append("name part must be no more than 63 bytes")
    if not _matches(_LABEL_KEY_FMT, name):
        errors.append(
            "name part " + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
        )
    return errors


def is_valid_label_value(value: str) -> list[str]:
    """validation.IsValidLabelValue (content.IsLabelValue)."""
    errors = []
    if _length(value) > 63:
        errors.append("must be no more than 63 bytes")
    if not _matches(_LABEL_VALUE_FMT, value):
        errors.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def _go_list(items: Iterable[str]) -> str:
    """A Go ``[]string`` printed with %v."""
    return "[" + " ".join(items) + "]"


def _parse_generic_version(text: str) -> tuple[int, ...]:
    """version.ParseGeneric (k8s.io/apimachinery/pkg/util/version): ValueError with its message."""
    match = re.match(r"^\s*v?([0-9]+(?:\.[0-9]+)*)(.*)$", text, re.DOTALL)
    if match is None:
        raise ValueError(f"could not parse {json.dumps(text)} as version")
    components = match[1].split(".")
    if len(components) < 2:
        raise ValueError(f"illegal version string {json.dumps(text)}")
    if components[0].startswith("0") and components[0] != "0":
        raise ValueError(
            f"illegal zero-prefixed version component {json.dumps(components[0])} in {json.dumps(text)}"
        )
    return tuple(int(component) for component in components)


# --- reading a KubeRay object as Go would (nil pointers, zero values, CRD defaults) --------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in _dict(value).items()}


def _containers(group: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [_dict(c) for c in _list(_dict(_dict(group.get("template")).get("spec")).get("containers"))]


def _pod_spec(group: Mapping[str, Any]) -> dict[str, Any]:
    return _dict(_dict(group.get("template")).get("spec"))


def _env(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [_dict(e) for e in _list(container.get("env"))]


def _env_var(name: str, env: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """utils.EnvVarByName."""
    return next((dict(e) for e in env if e.get("name") == name), None)


def _env_exists(name: str, env: Iterable[Mapping[str, Any]]) -> bool:
    return _env_var(name, env) is not None


def _is_autoscaling_enabled(cluster: Mapping[str, Any] | None) -> bool:
    return cluster is not None and cluster.get("enableInTreeAutoscaling") is True


def _is_autoscaling_v2_enabled(cluster: Mapping[str, Any]) -> bool:
    return _dict(cluster.get("autoscalerOptions")).get("version") == "v2"


def _is_k8s_auth_enabled(auth: Any) -> bool:
    return _dict(auth).get("enableK8sTokenAuth") is True


def _submission_mode(spec: Mapping[str, Any]) -> str:
    return str(spec.get("submissionMode") or K8S_JOB_MODE)  # the CRD's default


# --- ray-operator/controllers/ray/utils/validation.go (v1.7.0) ----------------------------


def _validate_group_resources(
    group_name: str, params: Mapping[str, str], resources: Mapping[str, str]
) -> str | None:
    """validateRayGroupResources."""
    in_params = any(params.get(key, "") != "" for key in ("num-cpus", "num-gpus", "memory", "resources"))
    if in_params and resources:
        return (
            f"resource fields should not be set in both rayStartParams and Resources for {group_name} group; "
            "please use only one"
        )
    return None


def _validate_group_labels(
    group_name: str, params: Mapping[str, str], labels: Mapping[str, str]
) -> str | None:
    """validateRayGroupLabels (Go walks the map in random order; here, by key)."""
    if "labels" in params:
        return (
            f"rayStartParams['labels'] is not supported for {group_name} group; please use the top-level "
            "Labels field instead"
        )
    errors = []
    for key in sorted(labels):
        value = labels[key]
        errors += [
            f"invalid label key for {group_name} group: '{key}', error: {error}"
            for error in is_qualified_name(key)
        ]
        errors += [
            f"invalid label value for key '{key}' in {group_name} group: '{value}', error: {error}"
            for error in is_valid_label_value(value)
        ]
    return "; ".join(errors) or None


def _validate_worker_idle_timeout(group: Mapping[str, Any], cluster: Mapping[str, Any]) -> str | None:
    """validateWorkerGroupIdleTimeout."""
    timeout = group.get("idleTimeoutSeconds")
    if timeout is None:
        return None
    name = group.get("groupName", "")
    if timeout < 0:
        return f"worker group {name}: idleTimeoutSeconds must be non-negative, got {timeout}"
    if _is_autoscaling_v2_enabled(cluster):
        return None
    variable = _env_var("RAY_enable_autoscaler_v2", _env(_containers(_dict(cluster.get("headGroupSpec")))[0]))
    if variable is not None and variable.get("value") in ("1", "true"):
        return None
    return (
        f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled. Please set "
        ".spec.autoscalerOptions.version to 'v2' (or set RAY_enable_autoscaler_v2 environment variable to "
        "'true' in the head pod if using KubeRay < 1.4.0)"
    )


def _validate_worker_priority(group: Mapping[str, Any], cluster: Mapping[str, Any]) -> str | None:
    """validateWorkerGroupPriority."""
    priority = group.get("priority")
    if not priority:
        return None
    name, ray_version = group.get("groupName", ""), str(cluster.get("rayVersion") or "")
    if not ray_version:
        return (
            f"worker group {name}: priority is set, but RayVersion was not specified. Ray version 2.56.0 or "
            "later is required"
        )
    try:
        parsed = _parse_generic_version(ray_version)
    except ValueError as error:
        return (
            f"worker group {name}: priority is set, but RayVersion format is invalid: {ray_version}, {error}"
        )
    if parsed < (2, 56, 0):
        return f"worker group {name}: priority is set, but minimum Ray version is 2.56.0, got {ray_version}"
    if _is_autoscaling_v2_enabled(cluster):
        return None
    variable = _env_var("RAY_enable_autoscaler_v2", _env(_containers(_dict(cluster.get("headGroupSpec")))[0]))
    if variable is not None and variable.get("value") in ("1", "true"):
        return None
    return (
        f"worker group {name}: priority is set to {priority}, but autoscaler v2 is not enabled. Priority is "
        "only supported with autoscaler v2 enabled"
    )


def _validate_gcs_backend(options: Mapping[str, Any]) -> str | None:
    """validateGcsFaultToleranceBackend, with the GCSFaultToleranceEmbeddedStorage gate off (v1.7.0)."""
    if (options.get("backend") or "redis") == "rocksdb":
        return (
            "the embedded RocksDB GCS fault tolerance backend (GcsFaultToleranceOptions.Backend: 'rocksdb') "
            "requires the GCSFaultToleranceEmbeddedStorage feature gate to be enabled"
        )
    if options.get("storage") is not None:
        return (
            "cannot set GcsFaultToleranceOptions.Storage when backend is 'redis' - it only applies to the "
            "'rocksdb' backend"
        )
    return None


def validate_raycluster_spec(  # noqa: PLR0912, PLR0915 - one branch per rule, in KubeRay's order
    cluster: Mapping[str, Any],
    annotations: Mapping[str, str] | None = None,
    gates: FeatureGates = DEFAULT_GATES,
) -> str | None:
    """ValidateRayClusterSpec: KubeRay's message for the first rule ``cluster`` breaks, else None."""
    annotations = annotations or {}
    head = _dict(cluster.get("headGroupSpec"))
    head_containers = _containers(head)
    if not head_containers:
        return "headGroupSpec should have at least one container"
    if problem := _validate_group_resources(
        "Head", _str_map(head.get("rayStartParams")), _str_map(head.get("resources"))
    ):
        return problem
    if problem := _validate_group_labels(
        "Head", _str_map(head.get("rayStartParams")), _str_map(head.get("labels"))
    ):
        return problem
    autoscaling = _is_autoscaling_enabled(cluster)
    workers = [_dict(w) for w in _list(cluster.get("workerGroupSpecs"))]
    for group in workers:
        name = group.get("groupName", "")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not _containers(group):
            return "workerGroupSpec should have at least one container"
        if not autoscaling and (low is None or high is None):
            return (
                f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled"
            )
        if low is not None and low < 0:
            return f"worker group {name} has negative minReplicas {low}"
        if high is not None and high < 0:
            return f"worker group {name} has negative maxReplicas {high}"
        if low is not None and high is not None and low > high:
            return f"worker group {name} has minReplicas {low} greater than maxReplicas {high}"
        params = _str_map(group.get("rayStartParams"))
        if problem := _validate_group_resources(name, params, _str_map(group.get("resources"))):
            return problem
        if problem := _validate_group_labels(name, params, _str_map(group.get("labels"))):
            return problem
        if problem := _validate_worker_idle_timeout(group, cluster):
            return problem
        if problem := _validate_worker_priority(group, cluster):
            return problem
    ft_options = cluster.get("gcsFaultToleranceOptions")
    if annotations.get(FT_ENABLED_ANNOTATION, "") != "" and ft_options is not None:
        return (
            f"{FT_ENABLED_ANNOTATION} annotation and GcsFaultToleranceOptions are both set. Please use only "
            "GcsFaultToleranceOptions to configure GCS fault tolerance"
        )
    head_env = _env(head_containers[0])
    ft_enabled = annotations.get(FT_ENABLED_ANNOTATION, "").lower() == "true" or ft_options is not None
    if not ft_enabled and _env_exists("RAY_REDIS_ADDRESS", head_env):
        return (
            "RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, but "
            "GcsFaultToleranceOptions "
            "is not set. Please set GcsFaultToleranceOptions to enable GCS fault tolerance"
        )
    head_params = _str_map(head.get("rayStartParams"))
    if ft_options is not None:
        if head_params.get("redis-password", "") != "":
            return (
                "cannot set `redis-password` in rayStartParams when GcsFaultToleranceOptions is enabled - "
                "use "
                "GcsFaultToleranceOptions.RedisPassword instead"
            )
        if _env_exists("REDIS_PASSWORD", head_env):
            return (
                "cannot set `REDIS_PASSWORD` env var in head Pod when GcsFaultToleranceOptions is enabled - "
                "use "
                "GcsFaultToleranceOptions.RedisPassword instead"
            )
        if _env_exists("RAY_REDIS_ADDRESS", head_env):
            return (
                "cannot set `RAY_REDIS_ADDRESS` env var in head Pod when GcsFaultToleranceOptions is "
                "enabled - "
                "use GcsFaultToleranceOptions.RedisAddress instead"
            )
        if annotations.get(EXTERNAL_STORAGE_NS_ANNOTATION, "") != "":
            return (
                "cannot set `ray.io/external-storage-namespace` annotation when GcsFaultToleranceOptions is "
                "enabled - use GcsFaultToleranceOptions.ExternalStorageNamespace instead"
            )
        if problem := _validate_gcs_backend(_dict(ft_options)):
            return problem
    if head_params.get("redis-username", "") != "" or _env_exists("REDIS_USERNAME", head_env):
        return (
            "cannot set redis username in rayStartParams or environment variables - use "
            "GcsFaultToleranceOptions.RedisUsername instead"
        )
    if not gates.ray_job_deletion_policy:
        for group in workers:
            if group.get("suspend") is True:
                return (
                    f"worker group {group.get('groupName', '')} can be suspended only when the "
                    "RayJobDeletionPolicy feature gate is enabled"
                )
    autoscaler = _dict(cluster.get("autoscalerOptions"))
    if not autoscaling:
        variable = _env_var("RAY_enable_autoscaler_v2", head_env)
        if variable is not None and variable.get("value") in ("1", "true"):
            return (
                f"environment variable RAY_enable_autoscaler_v2 cannot be set to '{variable.get('value')}' "
                "when "
                "enableInTreeAutoscaling is false. Please set enableInTreeAutoscaling: true to use "
                "autoscaler v2"
            )
    else:
        for group in workers:
            if group.get("suspend") is True:
                return (
                    f"worker group {group.get('groupName', '')} cannot be suspended with Autoscaler enabled"
                )
        if autoscaler.get("version") is not None and _env_exists("RAY_enable_autoscaler_v2", head_env):
            return (
                "both .spec.autoscalerOptions.version and head Pod env var RAY_enable_autoscaler_v2 are set, "
                "please only use the former"
            )
        if _is_autoscaling_v2_enabled(cluster):
            if _pod_spec(head).get("restartPolicy", "") not in ("", "Never"):
                return "restartPolicy for head Pod should be Never or unset when using autoscaler V2"
            for group in workers:
                if _pod_spec(group).get("restartPolicy", "") not in ("", "Never"):
                    return (
                        f"restartPolicy for worker group {group.get('groupName', '')} should be Never or "
                        "unset "
                        "when using autoscaler V2"
                    )
    idle = autoscaler.get("idleTimeoutSeconds")
    if idle is not None and idle < 0:
        return f"autoscalerOptions.idleTimeoutSeconds must be non-negative, got {idle}"
    if _env_exists("KUBERAY_GEN_AUTOSCALER_START_CMD", _env(autoscaler)):
        return (
            "autoscalerOptions.env must not contain KUBERAY_GEN_AUTOSCALER_START_CMD: it is managed by "
            "KubeRay "
            "and injected automatically into the autoscaler container"
        )
    if cluster.get("historyServerOptions") is not None:
        return "RayClusterHistoryServer feature gate is not enabled"
    auth = cluster.get("authOptions")
    if _dict(auth).get("mode") == "token":
        ray_version = str(cluster.get("rayVersion") or "")
        if not ray_version:
            return (
                "authOptions.mode is 'token' but RayVersion was not specified. Ray version 2.52.0 or later "
                "is "
                "required"
            )
        try:
            parsed = _parse_generic_version(ray_version)
        except ValueError as error:
            return f"authOptions.mode is 'token' but RayVersion format is invalid: {ray_version}, {error}"
        if parsed < (2, 52, 0):
            return f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {ray_version}"
        if _is_k8s_auth_enabled(auth):
            if parsed < (2, 55, 0):
                return (
                    "authOptions.enableK8sTokenAuth is enabled but minimum Ray version is 2.55.0, "
                    f"got {ray_version}"
                )
            if _dict(auth).get("secretName"):
                return "authOptions.enableK8sTokenAuth is enabled and authOptions.secretName is also set"
    elif _is_k8s_auth_enabled(auth):
        return "authOptions.enableK8sTokenAuth is enabled but authOptions.mode not set to 'token'"
    if cluster.get("networkPolicy") is not None:
        return "spec.networkPolicy requires the RayClusterNetworkPolicy feature gate to be enabled"
    if cluster.get("tlsOptions") is not None:
        return "spec.tlsOptions requires the RayClusterMTLS feature gate to be enabled"
    return None


def _validate_deletion_configuration(spec: Mapping[str, Any], gates: FeatureGates) -> str | None:
    """validateDeletionConfiguration (and validateLegacyDeletionPolicies / validateDeletionRules)."""
    shutdown = spec.get("shutdownAfterJobFinishes") is True
    if not shutdown and (spec.get("ttlSecondsAfterFinished") or 0) > 0:
        return (
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
            "TTLSecondsAfterFinished"
        )
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return None
    if not gates.ray_job_deletion_policy:
        return "RayJobDeletionPolicy feature gate must be enabled to use DeletionStrategy"
    strategy = _dict(strategy)
    legacy = strategy.get("onSuccess") is not None or strategy.get("onFailure") is not None
    rules = _list(strategy.get("deletionRules"))
    if rules and shutdown:
        return (
            "The RayJob spec is invalid: spec.shutdownAfterJobFinishes and "
            "spec.deletionStrategy.deletionRules "
            "are mutually exclusive"
        )
    if rules and legacy:
        return (
            "The RayJob spec is invalid: Cannot use both legacy onSuccess/onFailure fields and deletionRules "
            "simultaneously"
        )
    if legacy:
        return _validate_legacy_deletion(spec, strategy)
    if rules:
        return _validate_deletion_rules(spec, rules)
    return (
        "The RayJob spec is invalid: DeletionStrategy requires either BOTH onSuccess and onFailure, OR the "
        "deletionRules field (cannot be empty)"
    )


def _validate_legacy_deletion(spec: Mapping[str, Any], strategy: Mapping[str, Any]) -> str | None:
    """validateLegacyDeletionPolicies."""
    on_success, on_failure = strategy.get("onSuccess"), strategy.get("onFailure")
    if on_success is None or on_failure is None:
        return (
            "both DeletionStrategy.OnSuccess and DeletionStrategy.OnFailure must be set when using the "
            "legacy "
            "deletion policy fields of DeletionStrategy"
        )
    success, failure = _dict(on_success).get("policy"), _dict(on_failure).get("policy")
    if success is None:
        return (
            "the DeletionPolicyType field of DeletionStrategy.OnSuccess cannot be unset when "
            "DeletionStrategy is "
            "enabled"
        )
    if failure is None:
        return (
            "the DeletionPolicyType field of DeletionStrategy.OnFailure cannot be unset when "
            "DeletionStrategy is "
            "enabled"
        )
    if _dict(spec.get("clusterSelector")):
        if success in ("DeleteCluster", "DeleteWorkers"):
            return f"the ClusterSelector mode doesn't support DeletionStrategy={success} on success"
        if failure in ("DeleteCluster", "DeleteWorkers"):
            return f"the ClusterSelector mode doesn't support DeletionStrategy={failure} on failure"
    if "DeleteWorkers" in (success, failure) and _is_autoscaling_enabled(spec.get("rayClusterSpec")):
        return "DeletionStrategy=DeleteWorkers currently does not support RayCluster with autoscaling enabled"
    if spec.get("shutdownAfterJobFinishes") is True and "DeleteNone" in (success, failure):
        return (
            "The RayJob spec is invalid: shutdownAfterJobFinshes is set to 'true' while deletion policy is "
            "'DeleteNone'"
        )
    return None


def _validate_deletion_rules(spec: Mapping[str, Any], rules: list[Any]) -> str | None:
    """validateDeletionRules: every error, joined with newlines (errors.Join)."""
    selector_mode = bool(_dict(spec.get("clusterSelector")))
    by_job: dict[str, dict[str, int]] = {}
    by_deployment: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    for i, rule in enumerate(_dict(r) for r in rules):
        condition, policy = _dict(rule.get("condition")), rule.get("policy")
        job_status, deployment = condition.get("jobStatus"), condition.get("jobDeploymentStatus")
        ttl = int(condition.get("ttlSeconds") or 0)
        if job_status is not None and deployment is not None:
            errors.append(
                f"deletionRules[{i}]: cannot set both JobStatus and JobDeploymentStatus at the same time"
            )
            continue
        if job_status is None and deployment is None:
            errors.append(f"deletionRules[{i}]: exactly one of JobStatus and JobDeploymentStatus must be set")
            continue
        if ttl < 0:
            errors.append(f"deletionRules[{i}]: TTLSeconds must be non-negative")
            continue
        if selector_mode and policy in ("DeleteCluster", "DeleteWorkers"):
            errors.append(
                f"deletionRules[{i}]: DeletionPolicyType '{policy}' not supported when ClusterSelector is set"
            )
            continue
        if _is_autoscaling_enabled(spec.get("rayClusterSpec")) and policy == "DeleteWorkers":
            errors.append(
                f"deletionRules[{i}]: DeletionPolicyType 'DeleteWorkers' not supported with autoscaling "
                "enabled"
            )
            continue
        kind, key, group = (
            ("JobStatus", job_status, by_job)
            if job_status is not None
            else ("JobDeploymentStatus", deployment, by_deployment)
        )
        policies = group.setdefault(str(key), {})
        if str(policy) in policies:
            errors.append(
                f"deletionRules[{i}]: duplicate rule for DeletionPolicyType '{policy}' and {kind} '{key}'"
            )
            continue
        policies[str(policy)] = ttl
    for kind, group in (("JobStatus", by_job), ("JobDeploymentStatus", by_deployment)):
        for key, policies in group.items():  # Go walks these maps in random order
            previous: tuple[str, int] | None = None
            for policy in ("DeleteWorkers", "DeleteCluster", "DeleteSelf"):
                if policy not in policies:
                    continue
                ttl = policies[policy]
                if previous is not None and ttl < previous[1]:
                    errors.append(
                        f"for {kind} '{key}': {policy} TTL ({ttl}) must be >= {previous[0]} TTL "
                        f"({previous[1]})"
                    )
                previous = (policy, ttl)
    return "\n".join(errors) or None


def validate_rayjob_metadata(metadata: Mapping[str, Any]) -> str | None:
    """ValidateRayJobMetadata."""
    name = str(metadata.get("name") or "")
    if _length(name) > MAX_RAYJOB_NAME_LENGTH:
        return (
            "The RayJob metadata is invalid: RayJob name should be no more than "
            f"{MAX_RAYJOB_NAME_LENGTH} characters"
        )
    if errors := is_dns1035_label(name):
        return (
            f"The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: {_go_list(errors)}"
        )
    return None


def validate_rayjob_spec(  # noqa: PLR0912 - one return per rule, in KubeRay's order
    obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES
) -> str | None:
    """ValidateRayJobSpec."""
    spec = _dict(obj.get("spec"))
    shutdown, suspend = spec.get("shutdownAfterJobFinishes") is True, spec.get("suspend") is True
    if suspend and not shutdown:
        return (
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed "
            "to be "
            "suspended"
        )
    if (spec.get("ttlSecondsAfterFinished") or 0) < 0:
        return "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer"
    if problem := _validate_deletion_configuration(spec, gates):
        return problem
    selector = _str_map(spec.get("clusterSelector"))
    cluster = spec.get("rayClusterSpec")
    backoff = spec.get("backoffLimit")
    mode = _submission_mode(spec)
    if suspend and selector:
        return "The RayJob spec is invalid: the ClusterSelector mode doesn't support the suspend operation"
    if cluster is None and not selector:
        return "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set"
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            return "cluster name in ClusterSelector should not be empty"
        if mode == SIDECAR_MODE:
            return "ClusterSelector is not supported in SidecarMode"
        if backoff is not None and backoff > 0:
            return "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode"
    if mode == INTERACTIVE_MODE and backoff is not None and backoff > 0:
        return "The RayJob spec is invalid: BackoffLimit is incompatible with InteractiveMode"
    if mode == SIDECAR_MODE:
        if spec.get("submitterPodTemplate") is not None:
            return "Currently, SidecarMode doesn't support SubmitterPodTemplate"
        if spec.get("submitterConfig") is not None:
            return "Currently, SidecarMode doesn't support SubmitterConfig"
        if _pod_spec(_dict(_dict(cluster).get("headGroupSpec"))).get("restartPolicy", "") not in (
            "",
            "Never",
        ):
            return "restartPolicy for head Pod should be Never or unset when using SidecarMode"
    if cluster is not None:
        cluster = _dict(cluster)
        if _is_k8s_auth_enabled(cluster.get("authOptions")):
            return "The RayJob spec is invalid: K8s token auth mode is currently not supported for RayJob"
        annotations = _str_map(_dict(obj.get("metadata")).get("annotations"))
        if problem := validate_raycluster_spec(cluster, annotations, gates):
            return f"The RayJob spec is invalid: {problem}"
    runtime_env = str(spec.get("runtimeEnvYAML") or "")
    try:
        parsed = yaml.safe_load(runtime_env)
        if parsed is not None and not isinstance(parsed, dict):
            raise yaml.YAMLError(f"cannot unmarshal {type(parsed).__name__} into RuntimeEnvType")
    except yaml.YAMLError as error:  # Go's yaml error text differs; KubeRay's prefix is kept
        return f"failed to unmarshal RuntimeEnvYAML: {runtime_env}: {error}"
    deadline, pre_running = spec.get("activeDeadlineSeconds"), spec.get("preRunningDeadlineSeconds")
    if deadline is not None and deadline <= 0:
        return "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer"
    if pre_running is not None and pre_running <= 0:
        return "The RayJob spec is invalid: preRunningDeadlineSeconds must be a positive integer"
    if backoff is not None and backoff < 0:
        return "The RayJob spec is invalid: backoffLimit must be a positive integer"
    return None


def validate_rayjob_status(obj: Mapping[str, Any]) -> str | None:
    """ValidateRayJobStatus."""
    status, spec = _dict(obj.get("status")), _dict(obj.get("spec"))
    if status.get("jobDeploymentStatus") == WAITING and _submission_mode(spec) != INTERACTIVE_MODE:
        return (
            "The RayJob status is invalid: JobDeploymentStatus cannot be `Waiting` when SubmissionMode is "
            "not "
            "InteractiveMode"
        )
    return None


def rayjob_problem(obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES) -> tuple[str, str] | None:
    """validateRayJob (rayjob_controller.go): the event type and message of the first failed check."""
    if (message := validate_rayjob_metadata(_dict(obj.get("metadata")))) is not None:
        return "InvalidRayJobMetadata", message
    if (message := validate_rayjob_spec(obj, gates)) is not None:
        return "InvalidRayJobSpec", message
    if (message := validate_rayjob_status(obj)) is not None:
        return "InvalidRayJobStatus", message
    return None


def validate_rayjob(obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES) -> str | None:
    """KubeRay v1.7.0's message for a RayJob it would set to ValidationFailed, else None."""
    problem = rayjob_problem(obj, gates)
    return None if problem is None else problem[1]


def _validate_initializing_timeout(annotations: Mapping[str, str]) -> str | None:
    """validateInitializingTimeout: a Go duration or positive integer seconds."""
    text = annotations.get(INITIALIZING_TIMEOUT_ANNOTATION, "")
    if not text:
        return None
    seconds = _go_duration_seconds(text)
    if seconds is not None:
        if seconds <= 0:
            return f"annotation {INITIALIZING_TIMEOUT_ANNOTATION} must be a positive duration, got: {text}"
        return None
    if re.fullmatch(r"[+-]?[0-9]+", text):
        if int(text) <= 0:
            return (
                f"annotation {INITIALIZING_TIMEOUT_ANNOTATION} must be a positive integer (seconds), "
                f"got: {text}"
            )
        return None
    return (
        f"annotation {INITIALIZING_TIMEOUT_ANNOTATION} has invalid format: {text}. Expected Go duration "
        "format "
        "(e.g., '5m', '1h') or positive integer seconds"
    )


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _go_duration_seconds(text: str) -> float | None:
    """time.ParseDuration, or None where Go refuses it."""
    if text in ("0", "+0", "-0"):
        return 0.0
    match = re.fullmatch(r"([+-]?)((?:[0-9]*\.?[0-9]+(?:ns|us|µs|μs|ms|s|m|h))+)", text)
    if match is None:
        return None
    total = sum(
        float(number) * _GO_UNITS[unit]
        for number, unit in re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)", match[2])
    )
    return -total if match[1] == "-" else total


def validate_rayservice_metadata(metadata: Mapping[str, Any]) -> str | None:
    """ValidateRayServiceMetadata."""
    name = str(metadata.get("name") or "")
    if _length(name) > MAX_RAYSERVICE_NAME_LENGTH:
        return (
            "The RayService metadata is invalid: RayService name should be no more than "
            f"{MAX_RAYSERVICE_NAME_LENGTH} characters"
        )
    if errors := is_dns1035_label(name):
        return (
            "The RayService metadata is invalid: RayService name should be a valid DNS1035 label: "
            f"{_go_list(errors)}"
        )
    if problem := _validate_initializing_timeout(_str_map(metadata.get("annotations"))):
        return f"The RayService metadata is invalid: RayService annotations is invalid: {problem}"
    return None


def _validate_cluster_upgrade_options(spec: Mapping[str, Any]) -> str | None:
    """ValidateClusterUpgradeOptions (NewClusterWithIncrementalUpgrade)."""
    if not _is_autoscaling_enabled(_dict(spec.get("rayClusterConfig"))):
        return "Ray Autoscaler is required for NewClusterWithIncrementalUpgrade"
    options = _dict(spec.get("upgradeStrategy")).get("clusterUpgradeOptions")
    if options is None:
        return "ClusterUpgradeOptions are required for NewClusterWithIncrementalUpgrade"
    options = _dict(options)
    surge = options.get("maxSurgePercent", 100)  # the CRD's default
    step, interval = options.get("stepSizePercent"), options.get("intervalSeconds")
    if surge < 0 or surge > 100:
        return "maxSurgePercent must be between 0 and 100"
    if step is None or step < 0 or step > 100:
        return "stepSizePercent must be between 0 and 100"
    if step > surge:
        return "stepSizePercent must be less than or equal to maxSurgePercent"
    if interval is None or interval <= 0:
        return "intervalSeconds must be greater than 0"
    if not options.get("gatewayClassName"):
        return "gatewayClassName is required for NewClusterWithIncrementalUpgrade"
    return None


def _incremental_upgrade(spec: Mapping[str, Any], gates: FeatureGates) -> bool:
    """utils.IsIncrementalUpgradeEnabled."""
    kind = _dict(spec.get("upgradeStrategy")).get("type")
    return gates.ray_service_incremental_upgrade and kind == "NewClusterWithIncrementalUpgrade"


def validate_rayservice_spec(obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES) -> str | None:
    """ValidateRayServiceSpec."""
    spec = _dict(obj.get("spec"))
    cluster = _dict(spec.get("rayClusterConfig"))
    if _is_k8s_auth_enabled(cluster.get("authOptions")):
        return "The RayService spec is invalid: K8s token auth mode is currently not supported for RayService"
    annotations = _str_map(_dict(obj.get("metadata")).get("annotations"))
    if problem := validate_raycluster_spec(cluster, annotations, gates):
        return f"The RayService spec is invalid: {problem}"
    head_service = _dict(_dict(cluster.get("headGroupSpec")).get("headService"))
    if _dict(head_service.get("metadata")).get("name"):
        return (
            "The RayService spec is invalid: spec.rayClusterConfig.headGroupSpec.headService.metadata.name "
            "should "
            "not be set"
        )
    kind = _dict(spec.get("upgradeStrategy")).get("type")
    if kind is not None and kind not in ("None", "NewCluster", "NewClusterWithIncrementalUpgrade"):
        return (
            f"The RayService spec is invalid: Spec.UpgradeStrategy.Type value {kind} is invalid, valid "
            "options are "
            "NewClusterWithIncrementalUpgrade, NewCluster, or None"
        )
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if delay is not None and delay < 0:
        return (
            "The RayService spec is invalid: Spec.RayClusterDeletionDelaySeconds should be a non-negative "
            "integer, "
            f"got {delay}"
        )
    if _incremental_upgrade(spec, gates) and (problem := _validate_cluster_upgrade_options(spec)):
        return f"The RayService spec is invalid: {problem}"
    return None


def rayservice_problem(obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES) -> tuple[str, str] | None:
    """validateRayService (rayservice_controller.go): the event type and message of the first failed check."""
    if (message := validate_rayservice_metadata(_dict(obj.get("metadata")))) is not None:
        return "InvalidRayServiceMetadata", message
    if (message := validate_rayservice_spec(obj, gates)) is not None:
        return "InvalidRayServiceSpec", message
    return None


def validate_rayservice(obj: Mapping[str, Any], gates: FeatureGates = DEFAULT_GATES) -> str | None:
    """KubeRay v1.7.0's message for a RayService it would refuse (Ready=False, ValidationFailed), or None."""
    problem = rayservice_problem(obj, gates)
    return None if problem is None else problem[1]


# --- the controller double ----------------------------------------------------------------


class ManualClock:
    """The double's time: it moves only when the test advances it (whole seconds, UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now


def _timestamp(moment: datetime) -> str:
    """A metav1.Time as JSON (RFC 3339, whole seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _go_time(moment: datetime) -> str:
    """A metav1.Time read back from the API server and printed with %v (time.Time.String)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def _suffix(rng: random.Random) -> str:
    """utilrand.String(5): KubeRay's random suffix for cluster names and job ids."""
    return "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class KubeRayEvent:
    """An event KubeRay records (events.k8s.io/v1, with its Recorder.Eventf's fields)."""

    kind: str
    namespace: str
    name: str
    type: str  # Normal or Warning
    reason: str
    action: str
    note: str
    time: datetime


@dataclass
class _RayJobRun:
    """Ray's side of one RayJob: the job the dashboard reports (JobInfo)."""

    status: str | None = None  # None until submitted; then PENDING, RUNNING, and a terminal one
    message: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass
class _ServeApp:
    status: str
    message: str = ""
    deployments: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (status, message)

    def to_kube(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.message:
            out["message"] = self.message
        if self.deployments:
            out["serveDeploymentStatuses"] = {
                name: {"status": status, **({"message": message} if message else {})}
                for name, (status, message) in self.deployments.items()
            }
        return out


@dataclass
class _ServeCluster:
    """Ray's side of one RayService's RayCluster: the Serve config it was given and its apps."""

    service: Key
    config: str | None = None
    apps: dict[str, _ServeApp] = field(default_factory=dict)


@dataclass(frozen=True)
class _Verdict:
    status: str
    message: str


def _serve_applications(config: str) -> dict[str, list[str]]:
    """The application names of a serveConfigV2 and their deployments' names."""
    try:
        parsed = _dict(yaml.safe_load(config or ""))
    except yaml.YAMLError:
        return {}
    apps = {}
    for app in (_dict(a) for a in _list(parsed.get("applications"))):
        name = str(app.get("name") or DEFAULT_SERVE_APP_NAME)
        apps[name] = [
            str(_dict(d).get("name")) for d in _list(app.get("deployments")) if _dict(d).get("name")
        ]
    return apps


def _cluster_hash(cluster_spec: Mapping[str, Any]) -> str:
    """GenerateHashWithoutReplicasAndWorkersToDelete (same inputs; not byte-identical to Go's hash)."""
    spec = copy.deepcopy(dict(cluster_spec))
    spec.pop("suspend", None)
    for group in (_dict(g) for g in _list(spec.get("workerGroupSpecs"))):
        group.pop("replicas", None)
        _dict(group.get("scaleStrategy")).pop("workersToDelete", None)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that turns ``old`` into ``new`` (None removes a key)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            if nested := _merge_patch(before, value):
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    return patch


def _set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime,
) -> None:
    """meta.SetStatusCondition: in place; lastTransitionTime moves only when the status changes."""
    condition: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation:
        condition["observedGeneration"] = generation
    for existing in conditions:
        if existing.get("type") == type_:
            moved = existing.get("status") != status or "lastTransitionTime" not in existing
            stamp = _timestamp(now) if moved else existing["lastTransitionTime"]
            existing.clear()
            existing.update({**condition, "lastTransitionTime": stamp})
            return
    conditions.append({**condition, "lastTransitionTime": _timestamp(now)})


def _condition_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def _owner_reference(kind: str, name: str, uid: str | None) -> dict[str, Any]:
    reference = {
        "apiVersion": "ray.io/v1",
        "kind": kind,
        "name": name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if uid:
        reference["uid"] = uid
    return reference


class KubeRayDouble:
    """KubeRay v1.7.0's RayJob and RayService controllers, against a kmock emulator.

    ``async with KubeRayDouble(kmock) as kuberay:`` reconciles every ``interval`` seconds in the
    background (``background=False``: only when the test awaits :meth:`reconcile` or
    :meth:`settle`). Each pass reconciles every RayCluster, RayJob and RayService once, as
    one reconcile of KubeRay's controllers; the double talks to kmock over HTTP, as KubeRay
    talks to the API server (finalizers included: ``ray.io/rayjob-finalizer``,
    ``ray.io/rayservice-finalizer``, released by the double when the object is deleted).

    RayJobs: invalid → ``ValidationFailed`` (terminal, as in KubeRay); valid → ``Initializing``
    (its RayCluster created) → ``Running`` (jobStatus ``PENDING`` → ``RUNNING``) → ``Complete``
    or ``Failed`` once the test says how the Ray job ended (:meth:`finish_job`, or
    ``job_outcome``); ``activeDeadlineSeconds`` and ``preRunningDeadlineSeconds`` past →
    ``Failed`` with reason ``DeadlineExceeded`` / ``PreRunningDeadlineExceeded``; ``backoffLimit``
    retries. Finished, with ``shutdownAfterJobFinishes``, its RayCluster is deleted
    ``ttlSecondsAfterFinished`` after ``endTime`` — the RayJob itself only with
    ``delete_rayjob_after_job_finishes`` (KubeRay's ``DELETE_RAYJOB_CR_AFTER_JOB_FINISHES``,
    off by default). :attr:`deletions` records when each object was deleted (by the clock).

    RayServices: invalid → ``Ready=False, reason ValidationFailed`` with KubeRay's message (no
    RayCluster; ``serviceStatus`` stays empty); valid → a pending RayCluster, the Serve
    applications ``DEPLOYING`` then ``RUNNING``, promotion to active, ``Ready=True`` and
    ``serviceStatus: Running``; :meth:`fail_serve_app` makes an application ``DEPLOY_FAILED``
    or ``UNHEALTHY`` with a message, as Ray Serve reports it (KubeRay keeps ``Ready`` as long
    as the serve Service has endpoints, so an UNHEALTHY application of a running service
    leaves ``serviceStatus: Running``); a changed ``rayClusterConfig`` gets a new cluster
    (zero-downtime upgrade) and the old one goes 60 s (``rayClusterDeletionDelaySeconds``)
    after the switch.

    With ``crds`` (a :class:`protege.crds.validate.CrdCatalogue` of KubeRay's CRDs), an object
    the API server would have refused at admission is not reconciled and :meth:`check` (run
    when the ``async with`` block ends) fails the test with its schema errors.
    """

    def __init__(
        self,
        kmock: Any,
        *,
        clock: ManualClock | None = None,
        background: bool = True,
        interval: float = 0.1,
        gates: FeatureGates = DEFAULT_GATES,
        delete_rayjob_after_job_finishes: bool = False,
        job_outcome: Callable[[dict[str, Any]], tuple[str, str | None] | None] | None = None,
        crds: CrdCatalogue | None = None,
        seed: int | None = None,
    ) -> None:
        self.kmock, self.clock, self.gates = kmock, clock or ManualClock(), gates
        self._random = random.Random(seed)  # KubeRay's random name suffixes, repeatable with a seed
        self.background, self.interval = background, interval
        self.delete_rayjob_after_job_finishes = delete_rayjob_after_job_finishes
        self.job_outcome, self.crds = job_outcome, crds
        self.events: list[KubeRayEvent] = []
        self.deletions: dict[tuple[str, str, str], datetime] = {}  # (kind, namespace, name) → when
        self.refused: dict[tuple[str, str, str], list[str]] = {}  # what the API server would have refused
        self.errors: list[BaseException] = []
        self._jobs: dict[Key, _RayJobRun] = {}
        self._verdicts: dict[tuple[str | None, str], _Verdict] = {}
        self._serve: dict[Key, _ServeCluster] = {}  # Ray Serve on each RayCluster
        self._serve_targets: dict[Key, str] = {}  # each RayService's serve Service → its cluster
        self._app_faults: dict[tuple[str | None, str], dict[str | None, _ServeApp]] = {}
        self._cluster_deletion_due: dict[Key, datetime] = {}
        self._checked: dict[tuple[str, str, str], str] = {}
        self._clusters: dict[Key, dict[str, Any]] = {}  # this pass's RayClusters
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._writes = 0
        register_kuberay_resources(kmock)

    # -- the test's controls --------------------------------------------------------------

    def finish_job(
        self,
        name: str,
        status: str = JOB_SUCCEEDED,
        *,
        message: str | None = None,
        namespace: str | None = None,
        exit_code: int = 1,
    ) -> None:
        """How the Ray job of RayJob ``name`` ends (SUCCEEDED, FAILED or STOPPED), with Ray's message.

        Applied once KubeRay sees the job RUNNING (and again to a retry). FAILED without a
        message says what Ray's job supervisor says of an entrypoint that exited with
        ``exit_code`` and left no logs.
        """
        if status not in JOB_TERMINAL:
            raise ValueError(f"a Ray job ends {sorted(JOB_TERMINAL)}, not {status!r}")
        if message is None:
            message = {
                JOB_SUCCEEDED: "Job finished successfully.",
                JOB_STOPPED: "Job was intentionally stopped.",
                JOB_FAILED: f"Job entrypoint command failed with exit code {exit_code}. No logs available.",
            }[status]
        self._verdicts[namespace, name] = _Verdict(status, message)

    def fail_serve_app(
        self,
        service: str,
        status: str = APP_DEPLOY_FAILED,
        *,
        message: str = "RuntimeError: the engine did not start",
        app: str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Make RayService ``service``'s Serve application ``app`` (all when None) fail, as Serve reports it.

        DEPLOY_FAILED: the app says ``Deploying app '<app>' failed with exception:\\n<message>``
        (Serve's words); UNHEALTHY: its deployments are UNHEALTHY with ``message`` and the app
        says ``The deployments ['<name>'] are UNHEALTHY.``.
        """
        if status not in (APP_DEPLOY_FAILED, APP_UNHEALTHY):
            raise ValueError(
                f"a Serve application fails {APP_DEPLOY_FAILED} or {APP_UNHEALTHY}, not {status!r}"
            )
        self._app_faults.setdefault((namespace, service), {})[app] = _ServeApp(status, message)

    def heal_serve_app(self, service: str, *, app: str | None = None, namespace: str | None = None) -> None:
        """Undo :meth:`fail_serve_app`: the application deploys again, then runs (as after a resubmitted
        Serve config: KubeRay itself resubmits only a changed one)."""
        self._app_faults.get((namespace, service), {}).pop(app, None)
        for serve in self._serve.values():
            if serve.service[1] != service or namespace not in (None, serve.service[0]):
                continue
            for name, state in serve.apps.items():
                if app in (None, name) and state.status in (APP_DEPLOY_FAILED, APP_UNHEALTHY):
                    serve.apps[name] = _ServeApp(APP_DEPLOYING)

    def advance(self, seconds: float) -> datetime:
        """Move the double's clock (TTLs, deadlines and deletion delays are measured on it)."""
        return self.clock.advance(seconds)

    def events_for(self, name: str, reason: str | None = None) -> list[KubeRayEvent]:
        return [e for e in self.events if e.name == name and reason in (None, e.reason)]

    def check(self) -> None:
        """Raise what went wrong: an object the API server would refuse, an unsupported feature, a crash."""
        problems = [
            f"{kind} {namespace}/{name} would be refused by the API server: {errors}"
            for (kind, namespace, name), errors in self.refused.items()
        ]
        problems += [f"{type(error).__name__}: {error}" for error in self.errors]
        if problems:
            raise KubeRayDoubleError("; ".join(problems))

    # -- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> KubeRayDouble:
        import aiohttp

        self._session = aiohttp.ClientSession()
        if self.background:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
        if exc_info[0] is None:
            self.check()
        elif isinstance(exc_info[1], Exception) and (self.errors or self.refused):
            try:  # the test failed, maybe because the double stopped: say why, with the test's error chained
                self.check()
            except KubeRayDoubleError as error:
                raise error from exc_info[1]

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # recorded; check() raises it when the test's block ends
                self.errors.append(error)
                return
            await asyncio.sleep(self.interval)

    async def reconcile(self) -> int:
        """One pass of every controller over every object; the number of writes it made."""
        async with self._lock:
            self._writes = 0
            self._clusters = {_key(c): c for c in await self._list(RAYCLUSTER_RESOURCE)}
            for cluster in list(self._clusters.values()):
                await self._reconcile_raycluster(cluster)
            jobs = await self._list(RAYJOB_RESOURCE)
            for job in jobs:
                if self._admitted("RayJob", job):
                    await self._reconcile_rayjob(job)
            services = await self._list(RAYSERVICE_RESOURCE)
            for service in services:
                if self._admitted("RayService", service):
                    await self._reconcile_rayservice(service)
            await self._collect_garbage(
                {("RayJob", _key(j)) for j in jobs} | {("RayService", _key(s)) for s in services}
            )
            return self._writes

    async def settle(self, passes: int = 50) -> None:
        """Reconcile until a pass writes nothing (at most ``passes`` passes)."""
        for _ in range(passes):
            if not await self.reconcile():
                return
        raise KubeRayDoubleError(f"still changing after {passes} passes")

    # -- the API server, over HTTP as KubeRay talks to it ----------------------------------

    def _url(
        self, resource: str, namespace: str | None = None, name: str | None = None, sub: str = ""
    ) -> str:
        group_version, plural = resource.rsplit("/", 1)
        path = f"/apis/{group_version}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
        return (
            str(self.kmock.url).rstrip("/") + path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
        )

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the double as `async with KubeRayDouble(kmock) as kuberay:`")
        return self._session

    async def _list(self, resource: str) -> list[dict[str, Any]]:
        async with self._http.get(self._url(resource)) as response:
            if response.status == 404:
                return []
            response.raise_for_status()
            items: list[dict[str, Any]] = (await response.json()).get("items") or []
            return items

    async def _patch(
        self, resource: str, namespace: str, name: str, patch: dict[str, Any], sub: str = ""
    ) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        url = self._url(resource, namespace, name, sub)
        async with self._http.patch(url, json=patch, headers=headers) as response:
            if response.status != 404:  # deleted meanwhile: nothing to update
                response.raise_for_status()
        self._writes += 1

    async def _create(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        async with self._http.post(self._url(resource, namespace), json=body) as response:
            if response.status == 409:
                return None
            response.raise_for_status()
            created: dict[str, Any] = await response.json()
        self._writes += 1
        return created

    async def _delete(self, kind: str, resource: str, namespace: str, name: str) -> None:
        async with self._http.delete(self._url(resource, namespace, name)) as response:
            if response.status == 404:
                return
            response.raise_for_status()
        self.deletions.setdefault((kind, namespace, name), self.clock.now())
        if kind == "RayCluster":
            self._clusters.pop((namespace, name), None)
            self._serve.pop((namespace, name), None)
        self._writes += 1

    async def _write_status(self, resource: str, obj: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Status().Update: the whole status replaces the stored one."""
        meta = obj["metadata"]
        if patch := _merge_patch(_dict(obj.get("status")), status):
            await self._patch(resource, meta["namespace"], meta["name"], {"status": patch}, sub="status")

    def _event(self, obj: Mapping[str, Any], type_: str, reason: str, action: str, note: str) -> None:
        """Recorder.Eventf; a repeat of an object's event joins its series (one Event, counted)."""
        meta = obj["metadata"]
        now = self.clock.now()
        event = KubeRayEvent(obj["kind"], meta["namespace"], meta["name"], type_, reason, action, note, now)
        same = (event.kind, event.namespace, event.name, type_, reason, note)
        if not any((e.kind, e.namespace, e.name, e.type, e.reason, e.note) == same for e in self.events):
            self.events.append(event)

    def _admitted(self, kind: str, obj: dict[str, Any]) -> bool:
        """With ``crds``: whether the API server would have stored this object (else recorded and skipped)."""
        if self.crds is None:
            return True
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        seen = json.dumps(obj.get("spec"), sort_keys=True)
        if self._checked.get(key) != seen:
            self._checked[key] = seen
            body = {
                "apiVersion": obj.get("apiVersion", "ray.io/v1"),
                "kind": kind,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": obj.get("spec"),
            }
            if errors := self.crds.errors(body):
                self.refused[key] = errors
            else:
                self.refused.pop(key, None)
        return key not in self.refused

    # -- RayCluster: its pods are up one pass after it is created ---------------------------

    async def _reconcile_raycluster(self, cluster: dict[str, Any]) -> None:
        meta = cluster["metadata"]
        if meta.get("deletionTimestamp") or _dict(cluster.get("status")).get("state") == "ready":
            return
        workers = [_dict(g) for g in _list(_dict(cluster.get("spec")).get("workerGroupSpecs"))]
        desired = sum(_replicas(g) for g in workers)
        now = _timestamp(self.clock.now())
        status = {
            "state": "ready",
            "readyWorkerReplicas": desired,
            "availableWorkerReplicas": desired,
            "desiredWorkerReplicas": desired,
            "minWorkerReplicas": sum(int(g.get("minReplicas") or 0) for g in workers),
            "maxWorkerReplicas": sum(int(g.get("maxReplicas") or 0) for g in workers),
            "head": {"serviceName": f"{meta['name']}-head-svc"},
            "conditions": [
                {
                    "type": "HeadPodReady",
                    "status": "True",
                    "reason": "HeadPodRunningAndReady",
                    "message": "",
                    "lastTransitionTime": now,
                },
                {
                    "type": "RayClusterProvisioned",
                    "status": "True",
                    "reason": "AllPodRunningAndReadyFirstTime",
                    "message": "",
                    "lastTransitionTime": now,
                },
            ],
            "stateTransitionTimes": {"ready": now},
            "lastUpdateTime": now,
        }
        await self._write_status(RAYCLUSTER_RESOURCE, cluster, status)
        cluster["status"] = status

    def _cluster(self, namespace: str, name: str | None) -> dict[str, Any] | None:
        found = self._clusters.get((namespace, name or ""))
        return None if found is None or _dict(found.get("metadata")).get("deletionTimestamp") else found

    async def _create_cluster(
        self,
        owner: Mapping[str, Any],
        name: str,
        spec: Mapping[str, Any],
        crd: str,
        labels: Mapping[str, str],
    ) -> dict[str, Any] | None:
        meta = owner["metadata"]
        body = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": {
                    **_str_map(meta.get("labels")),
                    ORIGINATED_FROM_NAME: meta["name"],
                    ORIGINATED_FROM_CRD: crd,
                    **labels,
                },
                "annotations": {
                    **_str_map(meta.get("annotations")),
                    CLUSTER_HASH_ANNOTATION: _cluster_hash(spec),
                    KUBERAY_VERSION_ANNOTATION: KUBERAY_VERSION,
                },
                "ownerReferences": [_owner_reference(crd, meta["name"], meta.get("uid"))],
                "resourceVersion": "1",
            },
            "spec": copy.deepcopy(dict(spec)),
        }
        created = await self._create(RAYCLUSTER_RESOURCE, meta["namespace"], body)
        if created is not None:
            self._clusters[(meta["namespace"], name)] = created
            note = f"Created RayCluster {meta['namespace']}/{name}"
            if crd == "RayService":
                note = f"Created the RayCluster {meta['namespace']}/{name}"
            self._event(owner, "Normal", "CreatedRayCluster", "Create", note)
        return self._cluster(meta["namespace"], name)

    async def _collect_garbage(self, owners: set[tuple[str, Key]]) -> None:
        """Kubernetes' garbage collector, for the RayClusters: gone with their controller owner."""
        for (namespace, name), cluster in list(self._clusters.items()):
            for reference in _list(_dict(cluster.get("metadata")).get("ownerReferences")):
                owner = (str(reference.get("kind")), (namespace, str(reference.get("name"))))
                if reference.get("controller") and owner not in owners:
                    await self._delete("RayCluster", RAYCLUSTER_RESOURCE, namespace, name)
                    break

    # -- RayJob (rayjob_controller.go Reconcile) --------------------------------------------

    def _verdict(self, job: Mapping[str, Any]) -> _Verdict | None:
        meta = job["metadata"]
        for key in ((meta["namespace"], meta["name"]), (None, meta["name"])):
            if key in self._verdicts:
                return self._verdicts[key]
        if self.job_outcome is not None and (chosen := self.job_outcome(dict(job))) is not None:
            status, message = chosen
            self.finish_job(meta["name"], status, message=message, namespace=meta["namespace"])
            return self._verdicts[meta["namespace"], meta["name"]]
        return None

    def _poll_ray_job(self, job: Mapping[str, Any]) -> _RayJobRun:
        """GetJobInfo: the Ray job moves one step per poll, PENDING → RUNNING → the test's verdict."""
        spec = _dict(job.get("spec"))
        run = self._jobs.setdefault(_key(job), _RayJobRun())
        now = self.clock.now()
        if run.status is None:  # submitted: Ray's JobInfo for a PENDING job (job/common.py)
            run.status, run.message = JOB_PENDING, "Job has not started yet."
            wants = any(float(spec.get(k) or 0) > 0 for k in ("entrypointNumCpus", "entrypointNumGpus"))
            if wants or spec.get("entrypointResources"):
                run.message += (
                    " It may be waiting for resources (CPUs, GPUs, memory, custom resources)"
                    " to become available."
                )
            with suppress(yaml.YAMLError):
                if _dict(yaml.safe_load(str(spec.get("runtimeEnvYAML") or ""))):
                    run.message += " It may be waiting for the runtime environment to be set up."
        elif run.status == JOB_PENDING:
            run.status, run.message, run.start_time = JOB_RUNNING, "Job is currently running.", now
        elif run.status == JOB_RUNNING and (verdict := self._verdict(job)) is not None:
            run.status, run.message, run.end_time = verdict.status, verdict.message, now
        return run

    async def _reconcile_rayjob(self, job: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915 - KubeRay's switch
        meta, spec = job["metadata"], _dict(job.get("spec"))
        namespace, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(_dict(job.get("status")))
        if meta.get("deletionTimestamp"):
            run = self._jobs.get((namespace, name))
            if run is not None and run.status is not None and run.status not in JOB_TERMINAL:  # StopJob
                run.status, run.message, run.end_time = (
                    JOB_STOPPED,
                    "Job was intentionally stopped.",
                    self.clock.now(),
                )
            finalizers = [f for f in _list(meta.get("finalizers")) if f != RAYJOB_FINALIZER]
            if finalizers != _list(meta.get("finalizers")):
                await self._patch(RAYJOB_RESOURCE, namespace, name, {"metadata": {"finalizers": finalizers}})
            return
        if spec.get("managedBy") not in (None, "ray.io/kuberay-operator"):
            return
        original = copy.deepcopy(status)
        problem = rayjob_problem(job, self.gates)
        if problem is not None:
            event_type, message = problem
            self._event(job, "Warning", event_type, "Validate", f"{namespace}/{name}: {message}")
            status.update(jobDeploymentStatus=VALIDATION_FAILED, reason="ValidationFailed", message=message)
            await self._update_rayjob_status(job, original, status)
            return
        _refuse_unsupported_job(spec)
        now, deployment = self.clock.now(), status.get("jobDeploymentStatus", NEW)
        if deployment == NEW:
            if RAYJOB_FINALIZER not in _list(meta.get("finalizers")):
                finalizers = [*_list(meta.get("finalizers")), RAYJOB_FINALIZER]
                await self._patch(RAYJOB_RESOURCE, namespace, name, {"metadata": {"finalizers": finalizers}})
            self._jobs[namespace, name] = _RayJobRun()  # a new Ray job for a new (or retried) deployment
            status["jobId"] = status.get("jobId") or spec.get("jobId") or f"{name}-{_suffix(self._random)}"
            status["rayClusterName"] = status.get("rayClusterName") or f"{name}-{_suffix(self._random)}"
            status.update(jobDeploymentStatus=INITIALIZING, startTime=_timestamp(now))
        elif deployment == INITIALIZING:
            if not self._past_deadline(spec, status, now, pre_running=True):
                cluster = self._cluster(namespace, status.get("rayClusterName"))
                if cluster is None:
                    labels = {SUBMISSION_MODE_LABEL: _submission_mode(spec)}
                    cluster = await self._create_cluster(
                        job, status["rayClusterName"], _dict(spec.get("rayClusterSpec")), "RayJob", labels
                    )
                cluster_status = _dict(_dict(cluster).get("status"))
                if not status.get("dashboardURL") and cluster_status.get("state") != "ready":
                    status["rayClusterStatus"] = cluster_status
                else:
                    status["dashboardURL"] = (
                        f"{status['rayClusterName']}-head-svc.{namespace}.svc.cluster.local:8265"
                    )
                    if _submission_mode(spec) == K8S_JOB_MODE:
                        note = f"Created Kubernetes Job {namespace}/{name}"
                        self._event(job, "Normal", "CreatedRayJobSubmitter", "Create", note)
                    status["jobDeploymentStatus"] = RUNNING
        elif deployment == RUNNING:
            if not self._past_deadline(spec, status, now, pre_running=False):
                cluster = self._cluster(namespace, status.get("rayClusterName"))
                if cluster is None:  # deleted under it: getOrCreateRayClusterInstance makes it again
                    cluster = await self._create_cluster(
                        job, status["rayClusterName"], _dict(spec.get("rayClusterSpec")), "RayJob", {}
                    )
                run = self._poll_ray_job(job)
                new_deployment, reason = RUNNING, ""
                if run.status in JOB_TERMINAL:  # the submitter finishes with the Ray job
                    new_deployment = FAILED if run.status == JOB_FAILED else COMPLETE
                    reason = "AppFailed" if run.status == JOB_FAILED else ""
                status["rayClusterStatus"] = _dict(_dict(cluster).get("status"))
                status.update(
                    jobStatus=run.status,
                    jobDeploymentStatus=new_deployment,
                    reason=reason,
                    message=run.message,
                )
                info = _dict(status.get("rayJobInfo"))
                if run.start_time is not None:
                    info["startTime"] = _timestamp(run.start_time)
                if run.end_time is not None:
                    info["endTime"] = _timestamp(run.end_time)
                status["rayJobInfo"] = info
        elif deployment in (SUSPENDING, RETRYING):
            await self._delete_job_cluster(job, status)
            for stale in (
                "rayClusterStatus",
                "rayClusterName",
                "dashboardURL",
                "jobId",
                "message",
                "reason",
                "rayJobInfo",
            ):
                status.pop(stale, None)
            status["jobStatus"] = ""
            status["jobDeploymentStatus"] = SUSPENDED if deployment == SUSPENDING else NEW
        elif deployment in DEPLOYMENT_TERMINAL:
            await self._finished_rayjob(job, status)
            return
        else:  # ValidationFailed, Suspended, Waiting or unknown: KubeRay requeues and changes nothing
            return
        _check_backoff_limit(spec, status)
        await self._update_rayjob_status(job, original, status)

    def _past_deadline(
        self, spec: Mapping[str, Any], status: dict[str, Any], now: datetime, *, pre_running: bool
    ) -> bool:
        """checkActiveDeadlineAndUpdateStatusIfNeeded, then (before Running) the pre-running deadline."""
        start = parse_timestamp(status["startTime"]) if status.get("startTime") else now
        checks = [("activeDeadlineSeconds", "DeadlineExceeded", "ActiveDeadlineSeconds")]
        if pre_running:
            checks.append(
                ("preRunningDeadlineSeconds", "PreRunningDeadlineExceeded", "PreRunningDeadlineSeconds")
            )
        for field_name, reason, label in checks:
            seconds = spec.get(field_name)
            if seconds is not None and now >= start + timedelta(seconds=seconds):
                status.update(
                    jobDeploymentStatus=FAILED,
                    reason=reason,
                    message=(
                        f"The RayJob has passed the {field_name}. StartTime: {_go_time(start)}. "
                        f"{label}: {seconds}"
                    ),
                )
                return True
        return False

    async def _update_rayjob_status(
        self, job: Mapping[str, Any], original: Mapping[str, Any], status: dict[str, Any]
    ) -> None:
        """updateRayJobStatus: written only when jobStatus, jobDeploymentStatus or the cluster moved."""
        if (
            original.get("jobStatus", "") == status.get("jobStatus", "")
            and original.get("jobDeploymentStatus", "") == status.get("jobDeploymentStatus", "")
            and original.get("rayClusterStatus") == status.get("rayClusterStatus")
        ):
            return
        if status.get("jobDeploymentStatus") in DEPLOYMENT_TERMINAL:
            status["endTime"] = _timestamp(self.clock.now())
        for key in ("jobStatus", "reason", "message", "jobDeploymentStatus"):  # Go's omitempty strings
            if status.get(key) == "":
                del status[key]
        await self._write_status(RAYJOB_RESOURCE, job, status)

    async def _delete_job_cluster(self, job: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """deleteClusterResources."""
        namespace, cluster = job["metadata"]["namespace"], status.get("rayClusterName", "")
        if self._cluster(namespace, cluster) is not None:
            await self._delete("RayCluster", RAYCLUSTER_RESOURCE, namespace, cluster)
            self._event(
                job, "Normal", "DeletedRayCluster", "Delete", f"Deleted cluster {namespace}/{cluster}"
            )

    async def _finished_rayjob(self, job: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """The Complete/Failed case: handleShutdownAfterJobFinishes, ttlSecondsAfterFinished after endTime."""
        spec = _dict(job.get("spec"))
        if spec.get("shutdownAfterJobFinishes") is not True or not status.get("endTime"):
            return
        due = parse_timestamp(status["endTime"]) + timedelta(
            seconds=int(spec.get("ttlSecondsAfterFinished") or 0)
        )
        if due > self.clock.now():
            return
        meta = job["metadata"]
        if self.delete_rayjob_after_job_finishes:
            await self._delete("RayJob", RAYJOB_RESOURCE, meta["namespace"], meta["name"])
        else:
            await self._delete_job_cluster(job, status)

    # -- RayService (rayservice_controller.go Reconcile) ------------------------------------

    async def _reconcile_rayservice(self, service: dict[str, Any]) -> None:  # noqa: PLR0912, PLR0915 - KubeRay's flow
        meta, spec = service["metadata"], _dict(service.get("spec"))
        namespace, name = key = _key(service)
        status = copy.deepcopy(_dict(service.get("status")))
        original = copy.deepcopy(status)
        now = self.clock.now()
        deleting = bool(meta.get("deletionTimestamp"))
        remaining = await self._clean_up_service_clusters(service, status, deleting)
        if deleting:
            if not remaining:
                finalizers = [f for f in _list(meta.get("finalizers")) if f != RAYSERVICE_FINALIZER]
                await self._patch(
                    RAYSERVICE_RESOURCE, namespace, name, {"metadata": {"finalizers": finalizers}}
                )
            return
        if RAYSERVICE_FINALIZER not in _list(meta.get("finalizers")):
            finalizers = [*_list(meta.get("finalizers")), RAYSERVICE_FINALIZER]
            await self._patch(RAYSERVICE_RESOURCE, namespace, name, {"metadata": {"finalizers": finalizers}})
            return
        conditions: list[dict[str, Any]] = [dict(c) for c in _list(status.get("conditions"))]
        generation = int(status.get("observedGeneration") or 0)
        problem = rayservice_problem(service, self.gates)
        if problem is not None:
            event_type, message = problem
            self._event(service, "Warning", event_type, "Validate", f"{namespace}/{name}: {message}")
            _set_condition(
                conditions, "Ready", "False", "ValidationFailed", message, generation=generation, now=now
            )
            status.update(conditions=conditions, lastUpdateTime=_timestamp(now))
            await self._write_status(RAYSERVICE_RESOURCE, service, status)
            return
        _refuse_unsupported_service(service, self.gates)
        active_status = _dict(copy.deepcopy(status.get("activeServiceStatus")))
        pending_status = _dict(copy.deepcopy(status.get("pendingServiceStatus")))
        active = self._cluster(namespace, active_status.get("rayClusterName"))
        pending = self._cluster(namespace, pending_status.get("rayClusterName"))
        active_ready = pending_ready = False
        active_apps: dict[str, Any] | None = None
        pending_apps: dict[str, Any] | None = None
        if pending_status.get("rayClusterName") and pending is None:  # reconcileRayCluster
            config = _dict(spec.get("rayClusterConfig"))
            pending = await self._create_cluster(
                service, pending_status["rayClusterName"], config, "RayService", {}
            )
        elif pending is not None:
            pending_ready, pending_apps = self._reconcile_serve(service, pending)
        if (
            active is not None
            and pending is None
            and not self._should_prepare_new_cluster(service, active, None)
        ):
            active_ready, active_apps = self._reconcile_serve(service, active)
        services_reconciled = pending_ready or active_ready  # reconcileServicesToReadyCluster
        if services_reconciled:
            ready = pending if pending_ready else active
            self._serve_targets[key] = _key(_dict(ready))[1]
        # calculateStatus
        if meta.get("generation"):
            status["observedGeneration"] = generation = int(meta["generation"])
        active_status["rayClusterStatus"] = _dict(_dict(active).get("status"))
        pending_status["rayClusterStatus"] = _dict(_dict(pending).get("status"))
        for target, apps in ((active_status, active_apps), (pending_status, pending_apps)):
            if apps:
                target["applicationStatuses"] = apps
            else:
                target.pop("applicationStatuses", None)
        pending_serving = False
        if services_reconciled:  # reconcilePromotionAndServingStatus
            pointed, pending_name = self._serve_targets[key], pending_status.get("rayClusterName", "")
            if pointed != active_status.get("rayClusterName", ""):
                active_status, pending_status, active, pending = pending_status, {}, pending, None
            pending_serving = pointed == pending_name
        if not pending_serving and self._should_prepare_new_cluster(service, active, pending):
            pending_status = {"rayClusterName": f"{name}-{_suffix(self._random)}"}
        target_cluster = self._cluster(namespace, self._serve_targets.get(key))
        endpoints = 0  # the ready pods behind the serve Service (its head too, unless excluded)
        if target_cluster is not None and _dict(target_cluster.get("status")).get("state") == "ready":
            groups = [_dict(g) for g in _list(_dict(target_cluster.get("spec")).get("workerGroupSpecs"))]
            endpoints = (0 if spec.get("excludeHeadPodFromServeSvc") is True else 1) + sum(
                _replicas(g) for g in groups
            )
        _calculate_conditions(
            conditions, active_status, pending_status, endpoints, generation=generation, now=now
        )
        status.update(
            numServeEndpoints=endpoints,
            conditions=conditions,
            activeServiceStatus=_without_empty(active_status),
            pendingServiceStatus=_without_empty(pending_status),
            serviceStatus="Running" if _condition_true(conditions, "Ready") else "",
        )
        status = _without_empty(status, keep=("activeServiceStatus", "pendingServiceStatus"))
        if {k: v for k, v in status.items() if k != "lastUpdateTime"} != {
            k: v for k, v in original.items() if k != "lastUpdateTime"
        }:
            status["lastUpdateTime"] = _timestamp(now)
            await self._write_status(RAYSERVICE_RESOURCE, service, status)

    def _should_prepare_new_cluster(
        self, service: Mapping[str, Any], active: Mapping[str, Any] | None, pending: Mapping[str, Any] | None
    ) -> bool:
        """shouldPrepareNewCluster: no cluster yet, or the cluster spec changed (zero-downtime upgrade on)."""
        cluster = pending if pending is not None else active
        if cluster is None:
            return True
        spec = _dict(service.get("spec"))
        goal = _cluster_hash(_dict(spec.get("rayClusterConfig")))
        if _str_map(_dict(cluster.get("metadata")).get("annotations")).get(CLUSTER_HASH_ANNOTATION) == goal:
            return False
        kind = _dict(spec.get("upgradeStrategy")).get("type")
        return kind is None or kind in ("NewCluster", "NewClusterWithIncrementalUpgrade")

    def _reconcile_serve(
        self, service: Mapping[str, Any], cluster: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any] | None]:
        """reconcileServe: read the apps' statuses (getAndCheckServeStatus), submit a changed config."""
        if _dict(cluster.get("status")).get("state") != "ready":
            return False, None  # the head Pod is not ready yet
        cluster_key = _key(cluster)
        serve = self._serve.setdefault(cluster_key, _ServeCluster(_key(service)))
        config = str(_dict(service.get("spec")).get("serveConfigV2") or "")
        wanted = _serve_applications(config)
        reported = {app: state.to_kube() for app, state in serve.apps.items()}
        ready = bool(serve.apps) and all(state.status == APP_RUNNING for state in serve.apps.values())
        faults = {
            **self._app_faults.get((None, service["metadata"]["name"]), {}),
            **self._app_faults.get(_key(service), {}),
        }
        for app, state in list(serve.apps.items()):  # Serve moves on until the next read
            deployments = wanted.get(app, [])
            fault = faults.get(app) or faults.get(None)
            if fault is not None:
                serve.apps[app] = _failed_app(app, deployments, fault)
            elif state.status == APP_DEPLOYING:
                serve.apps[app] = _ServeApp(
                    APP_RUNNING, deployments=dict.fromkeys(deployments, ("HEALTHY", ""))
                )
            if serve.apps[app] != state:
                self._writes += 1  # not a write, but work: settle() must read the app again
        if serve.config != config or not serve.apps:  # checkIfNeedSubmitServeApplications
            serve.config = config
            serve.apps = {
                app: _ServeApp(APP_DEPLOYING, deployments=dict.fromkeys(deployments, ("UPDATING", "")))
                for app, deployments in wanted.items()
            }
            note = f"Updated serve applications to the RayCluster {cluster_key[0]}/{cluster_key[1]}"
            self._event(service, "Normal", "UpdatedServeApplications", "Update", note)
        return ready, reported or None

    async def _clean_up_service_clusters(
        self, service: Mapping[str, Any], status: Mapping[str, Any], deleting: bool
    ) -> bool:
        """cleanUpRayClusterInstance: clusters neither active nor pending go after the deletion delay."""
        (namespace, name), spec = _key(service), _dict(service.get("spec"))
        delay = spec.get("rayClusterDeletionDelaySeconds")
        seconds = 0 if deleting else (RAYCLUSTER_DELETION_DELAY_SECONDS if delay is None else int(delay))
        keep = {
            _dict(status.get("activeServiceStatus")).get("rayClusterName"),
            _dict(status.get("pendingServiceStatus")).get("rayClusterName"),
        }
        remaining = False
        for (cluster_namespace, cluster_name), cluster in list(self._clusters.items()):
            labels = _str_map(_dict(cluster.get("metadata")).get("labels"))
            ours = (
                labels.get(ORIGINATED_FROM_NAME) == name and labels.get(ORIGINATED_FROM_CRD) == "RayService"
            )
            if cluster_namespace != namespace or not ours or (not deleting and cluster_name in keep):
                continue
            remaining = True
            due = self._cluster_deletion_due.get((namespace, cluster_name))
            if due is None and not deleting:
                self._cluster_deletion_due[namespace, cluster_name] = self.clock.now() + timedelta(
                    seconds=seconds
                )
            elif deleting or (due is not None and self.clock.now() > due):
                await self._delete("RayCluster", RAYCLUSTER_RESOURCE, namespace, cluster_name)
                note = f"Deleted the RayCluster {namespace}/{cluster_name}"
                self._event(service, "Normal", "DeletedRayCluster", "Delete", note)
        return remaining


def _key(obj: Mapping[str, Any]) -> Key:
    meta = _dict(obj.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _replicas(group: Mapping[str, Any]) -> int:
    """A worker group's pods: replicas (the minimum when unset) times its hosts."""
    replicas = group.get("replicas")
    count = int(group.get("minReplicas") or 0) if replicas is None else int(replicas)
    return count * int(group.get("numOfHosts") or 1)


def _without_empty(values: Mapping[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """Go's omitempty: empty strings, zero numbers and empty maps are left out."""
    kept = set(keep)
    return {k: v for k, v in values.items() if k in kept or v not in ("", None, 0, {}, [])}


def _refuse_unsupported_job(spec: Mapping[str, Any]) -> None:
    if _dict(spec.get("clusterSelector")):
        raise UnsupportedByDouble("RayJob spec.clusterSelector")
    if spec.get("suspend") is True:
        raise UnsupportedByDouble("RayJob spec.suspend")
    if _submission_mode(spec) == INTERACTIVE_MODE:
        raise UnsupportedByDouble("RayJob submissionMode InteractiveMode")
    if spec.get("deletionStrategy") is not None:
        raise UnsupportedByDouble("RayJob spec.deletionStrategy")


def _refuse_unsupported_service(service: Mapping[str, Any], gates: FeatureGates) -> None:
    spec = _dict(service.get("spec"))
    if spec.get("suspend") is True:
        raise UnsupportedByDouble("RayService spec.suspend")
    if _str_map(_dict(service.get("metadata")).get("annotations")).get(INITIALIZING_TIMEOUT_ANNOTATION):
        raise UnsupportedByDouble(f"RayService annotation {INITIALIZING_TIMEOUT_ANNOTATION}")
    if _incremental_upgrade(spec, gates):
        raise UnsupportedByDouble("RayService upgradeStrategy NewClusterWithIncrementalUpgrade")


def _check_backoff_limit(spec: Mapping[str, Any], status: dict[str, Any]) -> None:
    """checkBackoffLimitAndUpdateStatusIfNeeded."""
    failed, succeeded = int(status.get("failed") or 0), int(status.get("succeeded") or 0)
    if status.get("jobDeploymentStatus") == FAILED:
        failed += 1
    if status.get("jobStatus") == JOB_SUCCEEDED and status.get("jobDeploymentStatus") == COMPLETE:
        succeeded += 1
    status["failed"], status["succeeded"] = failed, succeeded
    limit = spec.get("backoffLimit")
    if status.get("jobDeploymentStatus") == FAILED and limit is not None and failed < limit + 1:
        if status.get("reason") in ("DeadlineExceeded", "JobStatusCheckTimeoutExceeded"):
            return
        status["jobDeploymentStatus"] = RETRYING


def _calculate_conditions(
    conditions: list[dict[str, Any]],
    active_status: Mapping[str, Any],
    pending_status: Mapping[str, Any],
    endpoints: int,
    *,
    generation: int,
    now: datetime,
) -> None:
    """calculateConditions (without the initializing timeout: its annotation is unsupported here)."""
    if not conditions:
        message = "RayService is initializing"
        _set_condition(conditions, "Ready", "False", "Initializing", message, generation=generation, now=now)
        _set_condition(
            conditions, "UpgradeInProgress", "False", "Initializing", message, generation=generation, now=now
        )
    if endpoints > 0:
        message = "Number of serve endpoints is greater than 0"
        _set_condition(
            conditions, "Ready", "True", "NonZeroServeEndpoints", message, generation=generation, now=now
        )
    elif _condition_true(conditions, "Ready"):
        message = "Number of serve endpoints dropped to 0"
        _set_condition(
            conditions, "Ready", "False", "ZeroServeEndpoints", message, generation=generation, now=now
        )
    active_name, pending_name = active_status.get("rayClusterName"), pending_status.get("rayClusterName")
    upgrade = "UpgradeInProgress"
    if active_name and pending_name:
        message = "Both active and pending Ray clusters exist"
        _set_condition(
            conditions,
            upgrade,
            "True",
            "BothActivePendingClustersExist",
            message,
            generation=generation,
            now=now,
        )
    elif active_name:
        message = "Active Ray cluster exists and no pending Ray cluster"
        _set_condition(
            conditions, upgrade, "False", "NoPendingCluster", message, generation=generation, now=now
        )
    else:
        current = next((c for c in conditions if c.get("type") == upgrade), None)
        if current is None or current.get("reason") not in ("Initializing", "InitializingTimeout"):
            message = (
                "No active Ray cluster exists, and the RayService is not initializing. Please open a GitHub "
                "issue "
                "in the KubeRay repository."
            )
            _set_condition(
                conditions, upgrade, "Unknown", "NoActiveCluster", message, generation=generation, now=now
            )


def _failed_app(app: str, deployments: list[str], fault: _ServeApp) -> _ServeApp:
    """An application as Ray Serve reports it failed (serve/_private/application_state.py)."""
    if fault.status == APP_DEPLOY_FAILED:
        return _ServeApp(APP_DEPLOY_FAILED, f"Deploying app '{app}' failed with exception:\n{fault.message}")
    return _ServeApp(
        APP_UNHEALTHY,
        f"The deployments {deployments} are UNHEALTHY.",
        dict.fromkeys(deployments, ("UNHEALTHY", fault.message)),
    )


def register_kuberay_resources(kmock: Any) -> None:
    """Teach kmock KubeRay's kinds (namespaced, with a status subresource), RayCluster included."""
    verbs = ["list", "watch", "get", "create", "patch", "update", "delete"]
    for resource, kind in [
        (RAYSERVICE_RESOURCE, "RayService"),
        (RAYJOB_RESOURCE, "RayJob"),
        (RAYCLUSTER_RESOURCE, "RayCluster"),
    ]:
        info = kmock.resources[resource]
        info.kind, info.namespaced, info.verbs, info.subresources = kind, True, verbs, {"status"}


__all__ = [
    "DEFAULT_GATES",
    "KUBERAY_VERSION",
    "MAX_RAYJOB_NAME_LENGTH",
    "MAX_RAYSERVICE_NAME_LENGTH",
    "FeatureGates",
    "KubeRayDouble",
    "KubeRayDoubleError",
    "KubeRayEvent",
    "ManualClock",
    "UnsupportedByDouble",
    "is_dns1035_label",
    "parse_timestamp",
    "rayjob_problem",
    "rayservice_problem",
    "register_kuberay_resources",
    "validate_raycluster_spec",
    "validate_rayjob",
    "validate_rayservice",
]
