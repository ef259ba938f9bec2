"""A gateway stopped as Kubernetes stops a pod: SIGTERM in the middle of its traffic.

The calls in flight finish (within ``gateway.drain_seconds``), then the call log is flushed and
the process exits: every call that got its answer has its record in NATS, once, and nothing is
left on the pod's volume (an emptyDir, lost with the pod). With NATS away the flush goes to the
spool instead (tests/capture/test_publisher.py): that is the loss window docs/kubernetes.md
states. A real ``protege gateway`` process, as in a pod.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from protege.api.calls import CallRecord
from protege.capture.spool import DiskSpool
from protege.services.nats import NatsServer
from protege.services.process import free_port
from protege.serving.gateway.auth import hash_key, new_key
from protege.serving.server import ServerThread
from protege.testing.plugin import wait_for_records, wait_until_ready

pytestmark = pytest.mark.slow

CLIENTS = 8
SLOW = 0.5  # seconds the teacher takes for every fourth call: some are in flight at SIGTERM
DRAIN = 2  # gateway.drain_seconds: a call still running this long after SIGTERM is cut
ENDLESS = f"endless !sleep {DRAIN + 3}"  # a call cut at DRAIN (the shared stub teacher is free soon after)


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    key: str
    tenant: str
    home: Path


@contextmanager
def gateway_process(
    tmp_path: Path, teacher: ServerThread, nats_env: dict[str, str]
) -> Iterator[GatewayProcess]:
    key, tenant = new_key(), f"t{uuid.uuid4().hex[:12]}"
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump([{"sha256": hash_key(key), "tenant": tenant}]))
    port, home = free_port(), tmp_path / "home"
    env = {
        **os.environ,
        **nats_env,
        "PROTEGE_HOME": str(home),  # the pod's volume: the journal and the spool
        "PROTEGE_TEACHER__URL": teacher.url + "/v1",
        "PROTEGE_TEACHER__MODEL": "stub-teacher",
        "PROTEGE_GATEWAY__API_KEYS_FILE": str(tmp_path / "keys.yaml"),
        "PROTEGE_GATEWAY__DRAIN_SECONDS": str(DRAIN),
    }
    command = [sys.executable, "-m", "protege.cli", "gateway", "--port", str(port), "--metrics-port", "0"]
    log = (tmp_path / "gateway.log").open("w")
    process = subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, tmp_path / "gateway.log")
        yield GatewayProcess(process, url, key, tenant, home)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


async def traffic_then_sigterm(gateway: GatewayProcess, answered_before: int) -> tuple[list[str], int, float]:
    """Clients call until the gateway stops listening; SIGTERM once ``answered_before`` calls were
    answered, with a call longer than drain_seconds in flight. The calls answered 200, how many slow
    calls were in flight at SIGTERM and got their answer after it, and the seconds from SIGTERM to
    the exit."""
    counter = itertools.count()
    answered: list[str] = []
    finished_after = 0
    sigterm_at: float | None = None

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sigterm_at, finished_after
        while True:
            i = next(counter)
            slow = i % 4 == 0
            text = f"call {i}" + (f" !sleep {SLOW}" if slow else "")
            body = {"model": "stub-teacher", "messages": [{"role": "user", "content": text}]}
            started_before = sigterm_at is None
            try:
                response = await http.post("/v1/chat/completions", json=body)
            except httpx.TransportError:
                return  # no longer listening (in a cluster, the Service no longer sends it calls)
            if response.status_code != 200:
                continue
            answered.append(text)
            if slow and started_before and sigterm_at is not None:
                finished_after += 1  # in flight at SIGTERM, and answered
            if sigterm_at is None and len(answered) >= answered_before:
                sigterm_at = time.monotonic()
                gateway.process.send_signal(signal.SIGTERM)

    async def endless(http: httpx.AsyncClient) -> None:
        body = {"model": "stub-teacher", "messages": [{"role": "user", "content": ENDLESS}]}
        # cut at drain_seconds: uvicorn answers 500 (the OpenAI SDKs retry it), or closes the connection
        try:
            response = await http.post("/v1/chat/completions", json=body)
        except httpx.TransportError:
            return
        assert response.status_code == 500

    headers = {"Authorization": f"Bearer {gateway.key}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as http:
        await asyncio.gather(endless(http), *(client(http) for _ in range(CLIENTS)))
    code = await asyncio.to_thread(gateway.process.wait, 60)
    # uvicorn raises the signal again once its shutdown is done: the exit status says SIGTERM
    assert code == -signal.SIGTERM and sigterm_at is not None
    return answered, finished_after, time.monotonic() - sigterm_at


async def test_sigterm_mid_traffic_loses_no_answered_call(
    tmp_path: Path, nats_server: NatsServer, stub_teacher: ServerThread
) -> None:
    nats_env = {
        "PROTEGE_NATS_URL": nats_server.url,
        "PROTEGE_NATS_AUTH__CREDENTIALS_DIR": str(nats_server.credentials_dir),  # it logs as the gateway
    }
    with gateway_process(tmp_path, stub_teacher, nats_env) as gateway:
        answered, finished_after, stop_seconds = await traffic_then_sigterm(gateway, answered_before=60)
    assert finished_after >= 1  # calls in flight at SIGTERM were answered, not cut
    assert DRAIN <= stop_seconds < DRAIN + 5  # the endless call was cut at drain_seconds, then the flush
    records = await wait_for_records(nats_server.url, gateway.tenant, len(answered), seconds=30)
    texts = [r.request.messages[0].content for r in records if isinstance(r, CallRecord)]
    answered_texts = [text for text in texts if text != ENDLESS]  # the cut call's, if any
    assert sorted(answered_texts) == sorted(answered)  # every answered call once: none lost, none twice
    assert DiskSpool(gateway.home / "spool").is_empty()  # nothing left for the pod's volume to lose
    print(f"SIGTERM → exit {stop_seconds:.2f} s; {len(answered)} answered, {len(texts)} in NATS")
