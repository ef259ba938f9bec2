"""A pool's gateway is configured one way wherever it runs: the operator's Deployment and `protege up`'s
gateway process both get their environment from :func:`protege.config.gateway_settings` through
:func:`protege.config.as_environment`. Each environment loads back as the settings it was made from,
and both configure the same gateway (routing by the table, keys from a file, the teacher, the token).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.api.pool import SpecialistPoolSpec
from protege.config import Settings, as_environment, gateway_settings, load_settings, merged_settings
from protege.operator.gateway import gateway_environment, render_gateway
from protege.operator.platform import Owner, Platform
from protege.stack.config import StackConfig
from protege.stack.supervisor import Stack

ROOT = Path(__file__).resolve().parents[1]
OWNER = Owner("SpecialistPool", "smollm2-pool", "agents", "u-1")
# every gateway's: what gateway_settings itself sets
COMMON = set(
    as_environment(
        gateway_settings(
            teacher={"url": "u", "model": "m"}, engine_url="e", routes_table="t", api_keys_file="k"
        )
    )
)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PROTEGE_* variable or settings file of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("PROTEGE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def loaded(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process started with ``env`` reads."""
    with monkeypatch.context() as scoped:
        for name, value in env.items():
            scoped.setenv(name, value)
        return load_settings()


def given(settings: Mapping[str, Any]) -> Settings:
    """The settings as keyword arguments (None, as in :func:`as_environment`, leaves a setting unset)."""

    def set_only(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: set_only(value) if isinstance(value, Mapping) else value
            for name, value in mapping.items()
            if value is not None
        }

    return load_settings(**set_only(settings))


def setting_at(variable: str, value: str) -> dict[str, Any]:
    """``PROTEGE_S3__ACCESS_KEY_ID`` → ``{"s3": {"access_key_id": value}}``."""
    *path, last = variable.removeprefix("PROTEGE_").lower().split("__")
    setting: dict[str, Any] = {last: value}
    for part in reversed(path):
        setting = {part: setting}
    return setting


def test_the_operators_and_the_local_gateway_load_the_settings_they_were_given(
    clean: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pool = SpecialistPoolSpec.model_validate(
        yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())["spec"]
    )
    teacher_key = {"apiKeySecretRef": {"name": "teacher", "key": "apiKey"}}
    pool = pool.model_copy(
        update={"teacher": pool.teacher.model_validate(pool.teacher.to_kube() | teacher_key)}
    )
    platform = Platform(
        s3_endpoint="http://minio.storage:9000", nats_tls_ca_secret="ca", call_log_replicas="3"
    )

    # The operator: the container's env is the settings' variables and the Secrets' (here, stand-ins).
    settings, secrets = gateway_environment(OWNER, pool, platform)
    deployment, _ = render_gateway(OWNER, pool, platform)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    from_secrets = {name: f"{secret}/{key}" for name, (secret, key) in secrets.items()}
    assert {e["name"]: e.get("value") for e in container["env"]} == {
        **as_environment(settings),
        **dict.fromkeys(secrets),
    }
    operator_env = {**as_environment(settings), **from_secrets}
    with_secrets = settings
    for name, value in from_secrets.items():
        with_secrets = merged_settings(with_secrets, setting_at(name, value))
    operator = loaded(operator_env, clean)
    assert operator == given(with_secrets)  # nothing lost, misspelt or mistyped on the way
    assert (
        operator.teacher.api_key is not None
        and operator.teacher.api_key.get_secret_value() == "teacher/apiKey"
    )
    assert str(operator.router.engine_url) == "http://smollm2-pool-serve-serve-svc.agents.svc:8000"

    # `protege up`: the same round trip, its gateway's own settings beside the shared ones.
    stack = Stack(tmp_path, StackConfig())
    local_settings = stack.gateway_settings({"url": "http://127.0.0.1:1/v1", "model": "recorded"})
    local = loaded(as_environment(local_settings), clean)
    assert local == given(local_settings)
    assert local.router.timeout_seconds == StackConfig().specialist_timeout_seconds

    # One gateway, configured alike: every variable gateway_settings sets, both set; and so the same roles.
    assert operator_env.keys() >= COMMON and as_environment(local_settings).keys() >= COMMON

    def role(s: Settings) -> tuple[Any, ...]:
        return (
            s.router.enabled,
            s.router.engine_url is not None,
            s.router.table is not None,
            s.gateway.api_keys_file is not None,
            s.teacher.url is not None and s.teacher.model is not None,
            s.pool_token is not None,
        )

    assert role(operator) == role(local) == (True,) * 6


def test_settings_become_the_variables_they_are_read_from(clean: pytest.MonkeyPatch) -> None:
    settings = {
        "router": {"enabled": False, "timeout_seconds": 2.5},
        "gateway": {"metrics_apps": ["a", "b"], "drain_seconds": None},  # None: left unset
        "nats_url": "nats://n:4222",
    }
    env = as_environment(settings)
    assert env == {
        "PROTEGE_ROUTER__ENABLED": "false",
        "PROTEGE_ROUTER__TIMEOUT_SECONDS": "2.5",
        "PROTEGE_GATEWAY__METRICS_APPS": '["a", "b"]',
        "PROTEGE_NATS_URL": "nats://n:4222",
    }
    assert loaded(env, clean) == given(settings)
