"""End to end on a real cluster (kind + KubeRay): install the chart, apply a pool and a specialist.

Skipped unless a cluster is reachable and ``PROTEGE_E2E=1`` is set (it installs things).
The documented run, from the repository root::

    kind create cluster --name protege
    helm dependency build charts/protege
    # a released version's images (ghcr.io/protege-dev/protege-<name>:<version>), the CPU serving one:
    PROTEGE_E2E=1 PROTEGE_E2E_SET="platform.servingImage=ghcr.io/protege-dev/protege-serving-cpu:<version>" \\
        .venv/bin/pytest tests/e2e -v
    # or this tree's: build them (skaffold build -p kind, then kind load docker-image ... for each)
    # and name all four: PROTEGE_E2E_SET="operator.image=...,platform.gatewayImage=...,
    #   platform.servingImage=<the protege-serving-cpu image>,platform.trainingImage=..."

What it checks: the operator becomes available; the CPU pool (``examples/pool-cpu.yaml``)
gets its RayService, routing ConfigMap and gateway with owner references, and reaches
``Ready`` (the RayService running its Serve app; ``PROTEGE_E2E_READY_SECONDS``, 900 by
default); the Specialist (``examples/specialist.yaml`` pointed at that pool) gets a status
with ``observedGeneration`` and its route in the pool's table; deleting it removes the
route (the finalizer ran). Everything is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "protege-e2e"
RELEASE = "protege-e2e"

pytestmark = pytest.mark.slow


def _cluster_reachable() -> bool:
    if not (shutil.which("kubectl") and shutil.which("helm")):
        return False
    probe = subprocess.run(["kubectl", "version", "--request-timeout=5s"], capture_output=True, check=False)
    return probe.returncode == 0


if os.environ.get("PROTEGE_E2E") != "1" or not _cluster_reachable():
    pytest.skip(
        "no cluster: set PROTEGE_E2E=1 with kubectl and helm pointed at a kind cluster with KubeRay",
        allow_module_level=True,
    )


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=False)
    if result.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def get(kind: str, name: str) -> dict[str, Any] | None:
    result = subprocess.run(
        ["kubectl", "get", kind, name, "-n", NAMESPACE, "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def wait(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(3)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def installed() -> Iterator[None]:
    values = os.environ.get("PROTEGE_E2E_SET", "")
    command = ["helm", "upgrade", "--install", RELEASE, str(ROOT / "charts" / "protege"), "-n", NAMESPACE]
    command += ["--create-namespace", "--wait", "--timeout", "10m", "--set", "platform.s3.secretName="]
    if values:
        command += ["--set", values]
    subprocess.run(command, check=True)
    try:
        yield
    finally:
        subprocess.run(["helm", "uninstall", RELEASE, "-n", NAMESPACE], check=False)
        subprocess.run(["kubectl", "delete", "namespace", NAMESPACE, "--wait=false"], check=False)


def test_pool_and_specialist_come_up_and_clean_up(installed: None) -> None:
    pool = yaml.safe_load((ROOT / "examples" / "pool-cpu.yaml").read_text())
    specialist = yaml.safe_load((ROOT / "examples" / "specialist.yaml").read_text())
    specialist["spec"]["pool"] = pool["metadata"]["name"]
    specialist["spec"]["training"]["resources"] = {"gpu": 0, "cpu": 2, "memory": "6Gi"}
    kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=yaml.safe_dump_all([pool, specialist]))
    name = pool["metadata"]["name"]

    for kind, child in (("rayservice", f"{name}-serve"), ("deployment", f"{name}-gateway")):
        found = wait(lambda kind=kind, child=child: get(kind, child), 120, f"{kind} {child}")
        assert found["metadata"]["ownerReferences"][0]["kind"] == "SpecialistPool"

    def routes() -> dict[str, Any]:
        config = get("configmap", f"{name}-routes") or {}
        table = json.loads((config.get("data") or {}).get("routes.json") or '{"routes": []}')
        return {route["specialist"]: route for route in table["routes"]}

    wait(lambda: specialist["metadata"]["name"] in routes(), 180, "the specialist's route")
    status = wait(
        lambda: (get("specialist", specialist["metadata"]["name"]) or {}).get("status"),
        180,
        "specialist status",
    )
    assert status["observedGeneration"] == 1

    ready_seconds = float(os.environ.get("PROTEGE_E2E_READY_SECONDS", "900"))
    wait(
        lambda: ((get("specialistpool", name) or {}).get("status") or {}).get("phase") == "Ready",
        ready_seconds,
        "the pool to be Ready (KubeRay running its Serve application)",
    )

    kubectl("delete", "specialist", specialist["metadata"]["name"], "-n", NAMESPACE, "--wait=true")
    assert specialist["metadata"]["name"] not in routes()
