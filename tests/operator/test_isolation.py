"""Least privilege in the cluster: the operator's declared API calls, the pools' allow-list, their
NetworkPolicies (the pure parts; the chart's side is in tests/chart, the running operator's in the
kmock tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.api.pool import SpecialistPoolSpec
from protege.operator.allowlist import PoolAllowList, engine_flag
from protege.operator.api_access import API_USES, Caller, UndeclaredApiCall, declares
from protege.operator.isolation import NetworkIsolation
from protege.operator.kube import PLURALS, Connection, KubeClient

ROOT = Path(__file__).resolve().parents[2]
BASE = {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t.example/v1", "model": "big"}}


def pool(**spec: Any) -> SpecialistPoolSpec:
    return SpecialistPoolSpec.model_validate({**BASE, **spec})


def test_the_allow_list_holds_images_and_engine_arguments_to_glob_patterns() -> None:
    allowed = PoolAllowList(
        images=("rayproject/ray-llm:*", "registry.example/serving/*"), extra_args=("enable*",)
    )
    assert allowed.image_allowed("rayproject/ray-llm:2.60.0", platform_image="p:1")
    assert allowed.image_allowed("registry.example/serving/team/vllm:1", platform_image="p:1")  # * crosses /
    assert not allowed.image_allowed("rayproject/ray:2.60.0", platform_image="p:1")
    assert PoolAllowList(images=()).image_allowed("p:1", platform_image="p:1")  # the platform's own image
    assert not PoolAllowList(images=()).image_allowed("rayproject/ray-llm:1", platform_image="p:1")
    assert PoolAllowList().image_allowed("anything:1", platform_image="p:1")  # no list: no limit
    # one flag, however the key is spelled; patterns are spelled the same ways
    assert {
        engine_flag(k) for k in ("enablePrefixCaching", "enable_prefix_caching", "--enable-prefix-caching")
    } == {"--enable-prefix-caching"}
    for key in ("enablePrefixCaching", "enable_chunked_prefill", "--enable-prefix-caching"):
        assert allowed.extra_arg_allowed(key), key
    assert not allowed.extra_arg_allowed("trustRemoteCode")
    assert PoolAllowList(extra_args=("max_num_batched_tokens",)).extra_arg_allowed("maxNumBatchedTokens")

    assert (
        allowed.refusals(pool(engine={"extraArgs": {"enablePrefixCaching": True}}), platform_image="p:1")
        == []
    )
    rogue = pool(image="evil.example/miner:1", engine={"extraArgs": {"trustRemoteCode": True, "seed": 7}})
    assert allowed.refusals(rogue, platform_image="p:1") == [
        "spec.image 'evil.example/miner:1' is not allowed: images must match one of 'rayproject/ray-llm:*', "
        "'registry.example/serving/*' (pools.allowedImages)",
        "spec.engine.extraArgs.trustRemoteCode (true) is not allowed: extra vLLM arguments must match one of "
        "'enable*' (pools.allowedExtraArgs)",
        "spec.engine.extraArgs.seed (7) is not allowed: extra vLLM arguments must match one of 'enable*' "
        "(pools.allowedExtraArgs)",
    ]
    [image, _, _] = PoolAllowList(images=(), extra_args=()).refusals(rogue, platform_image="p:1")
    assert image.endswith(
        "pools run the platform's serving image 'p:1'; remove spec.image (pools.allowedImages)"
    )


def test_the_allow_list_holds_the_pods_service_accounts_and_priority_classes_to_glob_patterns() -> None:
    """A pool's spec.podTemplate serviceAccountName and priorityClassName, for each kind of pod: a
    pattern, or the platform's own for that kind of pod (platform.podTemplate), or no list at all."""
    from protege.api.pods import PodTemplates

    allowed = PoolAllowList(service_accounts=("protege-*", "s3-reader"), priority_classes=("batch-*",))
    chosen = pool(
        podTemplate={
            "gateway": {"serviceAccountName": "protege-gateway", "priorityClassName": "batch-low"},
            "serving": {"serviceAccountName": "cluster-admin-sa"},
            "training": {"serviceAccountName": "s3-reader", "priorityClassName": "system-cluster-critical"},
        }
    )
    assert allowed.refusals(chosen, platform_image="p:1") == [
        "spec.podTemplate.serving.serviceAccountName 'cluster-admin-sa' is not allowed: service accounts "
        "must match one of 'protege-*', 's3-reader' (pools.allowedServiceAccounts)",
        "spec.podTemplate.training.priorityClassName 'system-cluster-critical' is not allowed: priority "
        "classes must match one of 'batch-*' (pools.allowedPriorityClasses)",
    ]
    assert PoolAllowList().refusals(chosen, platform_image="p:1") == []  # no list: no limit
    assert (
        PoolAllowList(service_accounts=("*",), priority_classes=("*",)).refusals(chosen, platform_image="p:1")
        == []
    )
    # an empty list: only the platform's own name for that kind of pod
    platform = PodTemplates.model_validate(
        {"training": {"serviceAccountName": "s3-reader", "priorityClassName": "batch-low"}}
    )
    none = PoolAllowList(service_accounts=(), priority_classes=())
    own = pool(
        podTemplate={"training": {"serviceAccountName": "s3-reader", "priorityClassName": "batch-low"}}
    )
    assert none.refusals(own, platform_image="p:1", platform_pods=platform) == []
    refused = none.refusals(chosen, platform_image="p:1", platform_pods=platform)
    assert refused == [
        "spec.podTemplate.gateway.serviceAccountName 'protege-gateway' is not allowed: pools may not choose "
        "service accounts; remove it (pools.allowedServiceAccounts)",
        "spec.podTemplate.gateway.priorityClassName 'batch-low' is not allowed: pools may not choose "
        "priority classes; remove it (pools.allowedPriorityClasses)",
        "spec.podTemplate.serving.serviceAccountName 'cluster-admin-sa' is not allowed: pools may not choose "
        "service accounts; remove it (pools.allowedServiceAccounts)",
        "spec.podTemplate.training.priorityClassName 'system-cluster-critical' is not allowed: pools use the "
        "platform's 'batch-low' (platform.podTemplate.training); remove it (pools.allowedPriorityClasses)",
    ]


def test_the_allow_list_comes_from_the_operators_environment() -> None:
    env = {
        "PROTEGE_OPERATOR_ALLOWED_IMAGES": '["rayproject/*"]',
        "PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS": "[]",
        "PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": '["protege-*"]',
        "PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES": "",  # empty: unset, no limit
    }
    assert PoolAllowList.from_environment(env) == PoolAllowList(("rayproject/*",), (), ("protege-*",), None)
    assert PoolAllowList.from_environment({}) == PoolAllowList(None, None, None, None)
    with pytest.raises(
        ValueError, match="PROTEGE_OPERATOR_ALLOWED_IMAGES must be a JSON list of glob patterns"
    ):
        PoolAllowList.from_environment({"PROTEGE_OPERATOR_ALLOWED_IMAGES": "rayproject/*"})
    with pytest.raises(ValueError, match="PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES must be a JSON list"):
        PoolAllowList.from_environment({"PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES": '{"a": 1}'})
    with pytest.raises(ValueError, match="PROTEGE_OPERATOR_NETWORK_POLICIES: kuberay must be a list"):
        NetworkIsolation.from_environment(
            {"PROTEGE_OPERATOR_NETWORK_POLICIES": '{"kuberay": [{"pods": {}}]}'}
        )
    assert NetworkIsolation.from_environment({}) is None


def test_protege_render_refuses_what_the_operator_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from protege.cli import app

    manifest = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    manifest["spec"] |= {"image": "evil.example/miner:1", "engine": {"extraArgs": {"trustRemoteCode": True}}}
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(manifest))
    refused = CliRunner().invoke(app, ["render", "-f", str(path), "--allowed-image", "rayproject/*"])
    assert refused.exit_code != 0
    text = " ".join(refused.output.split())  # rich wraps long lines
    assert "not allowed by the platform" in text and "spec.image 'evil.example/miner:1'" in text
    assert "'rayproject/*'" in text
    assert "spec.engine.extraArgs.trustRemoteCode" not in text  # no limit on arguments asked for
    monkeypatch.setenv("PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS", '["enablePrefixCaching"]')  # as the operator
    refused = CliRunner().invoke(app, ["render", "-f", str(path), "--allowed-image", "evil.example/*"])
    assert refused.exit_code != 0 and "spec.engine.extraArgs.trustRemoteCode (true)" in " ".join(
        refused.output.split()
    )
    monkeypatch.delenv("PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS")
    assert CliRunner().invoke(app, ["render", "-f", str(path)]).exit_code == 0  # no allow-list: no limit
    manifest["spec"]["podTemplate"] = {
        "training": {"serviceAccountName": "admin", "priorityClassName": "top"}
    }
    path.write_text(yaml.safe_dump(manifest))
    monkeypatch.setenv("PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES", '["batch-*"]')  # as the operator
    refused = CliRunner().invoke(app, ["render", "-f", str(path), "--allowed-service-account", "s3-*"])
    text = " ".join(refused.output.split())
    assert refused.exit_code != 0 and "spec.podTemplate.training.serviceAccountName 'admin'" in text
    assert "'s3-*' (pools.allowedServiceAccounts)" in text
    assert "spec.podTemplate.training.priorityClassName 'top' is not allowed" in text
    allowed = ["--allowed-service-account", "admin", "--allowed-priority-class", "top"]
    assert CliRunner().invoke(app, ["render", "-f", str(path), *allowed]).exit_code == 0


def test_the_operators_client_makes_only_the_calls_its_rbac_grants() -> None:
    client = KubeClient(Connection("http://127.0.0.1:9", {}, None))  # nothing listens: nothing is sent

    async def calls() -> None:
        with pytest.raises(UndeclaredApiCall, match=r"may not delete configmaps\.core"):
            await client.delete("v1", "ConfigMap", "agents", "p-routes")
        with pytest.raises(UndeclaredApiCall, match=r"may not list deployments\.apps"):
            await client.list("apps/v1", "Deployment", "agents", {})
        with pytest.raises(UndeclaredApiCall, match=r"may not create specialists\.protege\.dev"):
            await client.apply(
                {
                    "apiVersion": "protege.dev/v1alpha1",
                    "kind": "Specialist",
                    "metadata": {"name": "s", "namespace": "a"},
                }
            )
        await client.close()

    asyncio.run(calls())
    # every kind the client knows is one the table names, for the operator's own calls or kopf's
    for (api_version, _), plural in PLURALS.items():
        assert any(use.resource == plural and use.group == api_version.rpartition("/")[0] for use in API_USES)
    assert declares("ray.io", "rayjobs", "delete", Caller.OPERATOR)
    assert not declares("", "secrets", "get") and not any("*" in use.verbs for use in API_USES)
