"""The call log's trust boundary on a real nats-server with authentication: who may do what."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path

import nats
import openai
import pytest
from nats.errors import Error as NatsError
from typer.testing import CliRunner

from protege.api import CallRecord, ChatRequest, ChatResponse, Latency
from protege.capture import BackgroundPublisher, CallLogPublisher, NatsEndpoint, capture_openai
from protege.capture.access import CURATOR, GATEWAY, OPERATOR, tenant_user
from protege.capture.reader import read_records, subject_filter
from protege.cli import app
from protege.config import CurationPolicy, CurationSettings
from protege.services.nats import NatsServer
from protege.serving.server import ServerThread
from protege.store.artifacts import ArtifactStore
from protege.testing.plugin import ensure_call_stream
from protege.training.curation import Curator

pytestmark = pytest.mark.slow


def record(i: int, tenant: str) -> CallRecord:
    return CallRecord(
        tenant=tenant,
        app="agent",
        request=ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": f"which warehouse ships order {i}"}]}
        ),
        response=ChatResponse.model_validate({"choices": [{"message": {"content": f"warehouse {i}"}}]}),
        latency=Latency(total_ms=1.0),
    )


async def published(endpoint: NatsEndpoint, spool: Path, records: list[CallRecord]) -> CallLogPublisher:
    publisher = CallLogPublisher(endpoint, spool, ack_timeout=1, retry_seconds=0.2)
    await publisher.start()
    for each in records:
        publisher.submit(each)
    await publisher.close(flush_seconds=5)
    return publisher


async def refusals(endpoint: NatsEndpoint, *actions: str) -> list[str]:
    """What NATS answers ``endpoint`` doing each of ``actions`` (publish/subscribe to a subject)."""
    errors: list[str] = []

    async def collect(error: Exception) -> None:
        errors.append(str(error))

    client = await endpoint.connect(error_cb=collect)
    for action in actions:
        verb, _, subject = action.partition(" ")
        if verb == "publish":
            await client.publish(subject, record(0, "bigco").to_json())
        else:
            await client.subscribe(subject)
    await client.flush()
    for _ in range(50):
        if len(errors) >= len(actions):
            break
        await asyncio.sleep(0.02)
    await client.close()
    return errors


async def ids(endpoint: NatsEndpoint, tenant: str | None = None) -> list[str | None]:
    return [
        r.id if isinstance(r, CallRecord) else None
        async for r in read_records(endpoint, subject=subject_filter(tenant))
    ]


async def test_each_identity_does_its_part_and_a_tenant_only_its_own(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", tenants=["acme"]) as server:
        acme = server.endpoint(tenant_user("acme"))
        # the gateway publishes every tenant's calls (and creates the stream)
        by_gateway = [record(i, tenant) for i, tenant in enumerate(["acme", "bigco", "bigco"])]
        gateway = await published(server.endpoint(GATEWAY), tmp_path / "g", by_gateway)
        assert gateway.stats.published == 3 and gateway.stats.errors == {}
        # a tenant publishes its own calls; another tenant's record never leaves its process
        own, foreign = record(10, "acme"), record(11, "bigco")
        tenant = await published(acme, tmp_path / "t", [own, foreign])
        assert (tenant.stats.published, tenant.stats.dropped) == (1, 1)
        assert tenant.stats.errors == {"TenantMismatch": 1}
        # ...and NATS itself refuses it another tenant's subject, the call subjects, the JetStream API
        said = await refusals(
            acme,
            "publish protege.calls.bigco.agent",
            "subscribe protege.calls.>",
            "publish $JS.API.STREAM.INFO.PROTEGE_CALLS",
        )
        assert len(said) == 3 and all("permissions violation" in s for s in said), said
        with pytest.raises(PermissionError, match="does not let tenant-acme read the call log"):
            await ids(acme)
        # what acme may publish is acme's: a record claiming bigco on acme's subject is no bigco call
        forger = await acme.connect()
        await forger.jetstream().publish("protege.calls.acme.agent", record(12, "bigco").to_json())
        await forger.close()
        # the operator reads, and publishes nothing
        reader = server.endpoint(OPERATOR)
        assert await ids(reader, "bigco") == [r.id for r in by_gateway[1:]]
        assert await ids(reader, "acme") == [by_gateway[0].id, own.id, None]  # the forgery: unreadable
        assert "permissions violation" in (await refusals(reader, "publish protege.calls.acme.agent"))[0]
        # the curator consumes, and parks the forgery instead of keeping it as bigco's
        store = ArtifactStore((tmp_path / "store").as_uri())
        no_pii = CurationSettings(default=CurationPolicy(redact_pii=False))  # (what it keeps: not the point)
        curator = Curator(server.endpoint(CURATOR), store, no_pii, batch=16)
        stats = await curator.run(until_idle=True, idle_seconds=0.5)
        assert (stats.seen, stats.kept, stats.dead_lettered) == (5, 4, 1)
        # no identity, no connection
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)


def test_identities_stay_on_disk_only_readable_by_their_owner(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    first = server.endpoint(GATEWAY)
    assert "password" not in repr(first) and str(first) == server.url  # nothing secret printed
    files = [server.credentials_dir, *server.credentials_dir.iterdir()]
    assert stat.S_IMODE(os.stat(server.credentials_dir).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files[1:])
    assert NatsServer(tmp_path / "nats").endpoint(GATEWAY).password == first.password  # kept: next start


def test_the_sdk_logs_as_the_tenant_of_its_credentials(
    nats_server: NatsServer, stub_teacher: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`protege calls credentials` adds a tenant to a running server (reloaded live); the SDK's
    tenant is the one of the credentials it was handed."""
    tenant = f"sdk{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PROTEGE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PROTEGE_NATS_AUTH__CREDENTIALS_DIR", str(nats_server.credentials_dir))
    path = tmp_path / "handed-to-the-agent.json"
    made = CliRunner().invoke(app, ["calls", "credentials", tenant, "--out", str(path)])
    assert made.exit_code == 0, made.output
    assert str(path) in made.stdout and NatsEndpoint.from_credentials(path).password not in made.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ensure_call_stream(nats_server)  # a gateway's (or the curator's) job: a tenant may not
    plain = openai.OpenAI(base_url=stub_teacher.url + "/v1", api_key="k")
    with BackgroundPublisher(NatsEndpoint.from_credentials(path), tmp_path / "s") as log:
        refused = f"tenant='bigco' is refused: the call log credentials are tenant '{tenant}'"
        with pytest.raises(ValueError, match=refused):
            capture_openai(plain, log, tenant="bigco")
        client = capture_openai(plain, log, app="agent")
        client.chat.completions.create(model="stub-teacher", messages=[{"role": "user", "content": "hi"}])
    found = asyncio.run(ids(nats_server.endpoint(OPERATOR), tenant))
    assert len(found) == 1 and found[0] is not None
