"""The call-log publisher against a real nats-server, including NATS dying mid-run."""

import asyncio
from pathlib import Path

import nats
import pytest

from protege.api import CallRecord, ChatRequest, ChatResponse, Latency
from protege.capture import CallLogPublisher, StreamSettings
from protege.services.nats import NatsServer

pytestmark = pytest.mark.slow


def make_record(i: int, tenant: str = "acme") -> CallRecord:
    return CallRecord(
        tenant=tenant,
        app=f"app{i % 3}",
        request=ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
        ),
        response=ChatResponse.model_validate({"choices": [{"message": {"content": f"a{i}"}}]}),
        latency=Latency(total_ms=1.0),
    )


async def stream_ids(url: str, stream: str) -> list[str]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        count = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("protege.calls.>", stream=stream)
        ids: list[str] = []
        while len(ids) < count:
            for message in await sub.fetch(min(500, count - len(ids)), timeout=5):
                record = CallRecord.from_json(message.data)
                assert message.subject == f"protege.calls.{record.tenant}.{record.app}"
                ids.append(record.id)
                await message.ack()
        return ids
    finally:
        await client.close()


async def wait_for(condition, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 20)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_records_reach_jetstream_once_each(nats_server: NatsServer, tmp_path: Path) -> None:
    stream = StreamSettings(name="PUB_BASIC", subjects=("protege.calls.>",))
    publisher = CallLogPublisher(nats_server.url, tmp_path / "spool", stream=stream)
    await publisher.start()
    records = [make_record(i) for i in range(300)]
    for record in records:
        publisher.submit(record)
    await publisher.close()
    assert publisher.stats.published == 300 and publisher.stats.spooled == 0
    assert await stream_ids(nats_server.url, "PUB_BASIC") == [r.id for r in records]
    client = await nats.connect(nats_server.url)
    await client.jetstream().delete_stream("PUB_BASIC")
    await client.close()


async def test_nats_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    publisher = CallLogPublisher(server.url, tmp_path / "spool", ack_timeout=0.5, retry_seconds=0.2)
    await publisher.start()
    submitted: list[str] = []
    try:
        for i in range(2400):
            record = make_record(i)
            publisher.submit(record)
            submitted.append(record.id)
            if i == 800:
                server.kill()
            if i == 1600:
                await wait_for(lambda: publisher.stats.spooled > 0)  # the outage was felt
                server.start()
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # a steady load, not one burst
        await wait_for(lambda: publisher.spool.is_empty() and publisher._queue.empty())
        await publisher.close()
        assert publisher.stats.dropped == 0
        assert publisher.stats.replayed > 0
        ids = await stream_ids(server.url, "PROTEGE_CALLS")
        assert len(ids) == len(submitted)
        assert sorted(ids) == sorted(submitted)
    finally:
        server.stop()


async def test_nats_down_at_start_then_up(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")  # ports chosen, not started yet
    publisher = CallLogPublisher(server.url, tmp_path / "spool", ack_timeout=0.5, retry_seconds=0.2)
    await publisher.start()
    records = [make_record(i) for i in range(50)]
    for record in records:
        publisher.submit(record)
    await wait_for(lambda: publisher.stats.spooled == 50)
    server.start()
    try:
        records.append(make_record(50))
        publisher.submit(records[-1])
        await wait_for(lambda: publisher.spool.is_empty() and publisher._queue.empty(), seconds=60)
        await publisher.close()
        assert publisher.stats.replayed >= 50 and publisher.stats.dropped == 0
        # Spooled records are replayed before the newer one: the stream keeps call order.
        assert await stream_ids(server.url, "PROTEGE_CALLS") == [r.id for r in records]
    finally:
        server.stop()
