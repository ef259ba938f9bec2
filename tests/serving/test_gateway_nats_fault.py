"""Under steady load through the gateway, NATS is SIGKILLed and restarted: no call fails, none is lost."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from protege.api.calls import CallRecord
from protege.services.nats import NatsServer
from protege.testing.plugin import RunningGateway, wait_for_records

pytestmark = pytest.mark.slow

CALLS = 2400
CONCURRENCY = 16


async def test_nats_killed_under_load_loses_and_duplicates_no_record(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "nats").start()  # our own NATS: this test kills it
    try:
        gateway = start_gateway(nats_url=nats.url)
        counter = itertools.count()
        statuses: list[int] = []
        sent: list[str] = []

        async def agent(client: httpx.AsyncClient) -> None:
            while (i := next(counter)) < CALLS:
                if i == CALLS // 3:
                    nats.kill()  # SIGKILL: no goodbye, JetStream's files as they were
                if i == 2 * CALLS // 3:
                    await asyncio.to_thread(nats.start)
                text = f"call {i}"
                response = await client.post(
                    "/chat/completions",
                    json={
                        "model": "stub-teacher",
                        "messages": [{"role": "user", "content": text}],
                        "stream": i % 5 == 0,
                    },
                )
                statuses.append(response.status_code)
                sent.append(text)

        headers = {"Authorization": f"Bearer {gateway.key}"}
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=30) as client:
            await asyncio.gather(*(agent(client) for _ in range(CONCURRENCY)))

        assert statuses == [200] * CALLS  # the outage never reached a caller
        records = await wait_for_records(nats.url, gateway.tenant, CALLS, seconds=120)
        assert all(isinstance(r, CallRecord) for r in records)
        texts = [r.request.messages[0].content for r in records if isinstance(r, CallRecord)]
        assert len(texts) == CALLS and sorted(texts) == sorted(sent)  # exactly one record per call
        publisher = gateway.server.server.config.app.state.gateway.sink
        assert publisher.stats.spooled > 0 and publisher.stats.replayed > 0  # the outage was real
        assert publisher.stats.dropped == 0
    finally:
        nats.stop()
