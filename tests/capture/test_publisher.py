"""The call-log publisher against a real nats-server, including NATS dying mid-run."""

import asyncio
import os
import threading
import uuid
from pathlib import Path

import pytest

from protege.api import CallRecord, ChatRequest, ChatResponse, Latency
from protege.capture import CallLogPublisher, DiskSpool, StreamSettings, ensure_stream
from protege.capture.access import ADMIN, GATEWAY
from protege.capture.reader import read_records, subject_filter
from protege.services.nats import NatsServer
from protege.services.process import free_port
from protege.testing.plugin import call_log

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


async def stream_ids(url: str, tenant: str | None = None) -> list[str]:
    """The ids in the stream, app by app: the stream keeps each subject's order (a batch is one
    message per subject, so records of different apps may come in another order)."""
    records = []
    async for record in read_records(call_log(url), subject=subject_filter(tenant)):
        assert isinstance(record, CallRecord)
        records.append(record)
    return in_app_order(records)


def in_app_order(records: list[CallRecord]) -> list[str]:
    return [record.id for record in sorted(records, key=lambda record: record.app)]


async def wait_for(condition, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds * 20)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("shipper", ["inline", "process"])
async def test_records_reach_jetstream_once_each(
    nats_server: NatsServer, tmp_path: Path, shipper: str
) -> None:
    publisher = CallLogPublisher(nats_server.endpoint(GATEWAY), tmp_path / "spool", shipper=shipper)  # type: ignore[arg-type]
    await publisher.start()
    tenant = f"pub{uuid.uuid4().hex[:8]}"
    records = [make_record(i, tenant) for i in range(300)]
    for record in records:
        publisher.submit(record)
    await publisher.close()
    assert publisher.stats.published == 300 and publisher.stats.spooled == 0
    assert await stream_ids(nats_server.url, tenant) == in_app_order(records)
    client = await nats_server.endpoint(ADMIN).connect()
    try:  # handed over at once, so published as one batch: one message per app
        subjects = f"protege.calls.{tenant}.>"
        info = await client.jetstream().stream_info("PROTEGE_CALLS", subjects_filter=subjects)
    finally:
        await client.close()
    assert info.state.subjects == {f"protege.calls.{tenant}.app{i}": 1 for i in range(3)}


async def test_the_last_n_records_are_n_whatever_the_messages_hold(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    publisher = CallLogPublisher(nats_server.endpoint(GATEWAY), tmp_path / "spool")
    await publisher.start()
    tenant = f"last{uuid.uuid4().hex[:8]}"
    records = [make_record(i, tenant).model_copy(update={"app": "tail"}) for i in range(50)]
    for record in records:
        publisher.submit(record)
    await publisher.close()
    reader = call_log(nats_server.url)
    last = [r async for r in read_records(reader, subject=subject_filter(tenant), last=5)]
    assert [r.id for r in last if isinstance(r, CallRecord)] == [r.id for r in records[-5:]]


async def test_a_stream_jetstream_refuses_spools_rather_than_drops(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    clash = StreamSettings(name="CLASHING", subjects=("protege.calls.>",))  # overlaps PROTEGE_CALLS
    # the admin may manage any stream: JetStream itself refuses this one
    admin = nats_server.endpoint(ADMIN)
    publisher = CallLogPublisher(admin, tmp_path / "spool", stream=clash, retry_seconds=0.2)
    await asyncio.gather(publisher.start(), ensure_default_stream(nats_server.url))
    publisher.submit(make_record(0, "clash"))
    await wait_for(lambda: publisher.stats.spooled == 1)
    await publisher.close()
    assert publisher.stats.dropped == 0 and publisher.stats.published == 0
    assert publisher.stats.errors  # the refusal is counted (and exported as a metric)
    assert not DiskSpool(tmp_path / "spool").is_empty()  # kept for a replay once the config is fixed


async def ensure_default_stream(url: str) -> None:
    client = await call_log(url, GATEWAY).connect()
    await ensure_stream(client.jetstream(), StreamSettings())
    await client.close()


@pytest.mark.parametrize("shipper", ["inline", "process"])
async def test_nats_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path, shipper: str) -> None:
    server = NatsServer(tmp_path / "nats").start()
    gateway = server.endpoint(GATEWAY)
    publisher = CallLogPublisher(
        gateway,
        tmp_path / "spool",
        ack_timeout=0.5,
        retry_seconds=0.2,
        shipper=shipper,  # type: ignore[arg-type]
    )
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
        await wait_for(lambda: publisher.spool_bytes == 0 and publisher.queue_depth == 0)
        await publisher.close()
        assert publisher.stats.dropped == 0
        assert publisher.stats.replayed > 0
        ids = await stream_ids(server.url)
        assert len(ids) == len(submitted)
        assert sorted(ids) == sorted(submitted)
    finally:
        server.stop()


async def test_nats_down_at_start_then_up(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")  # ports chosen and identities made, not started yet
    gateway = server.endpoint(GATEWAY)
    publisher = CallLogPublisher(gateway, tmp_path / "spool", ack_timeout=0.5, retry_seconds=0.2)
    await publisher.start()
    records = [make_record(i) for i in range(50)]
    for record in records:
        publisher.submit(record)
    await wait_for(lambda: publisher.stats.spooled == 50)
    server.start()
    try:
        records.append(make_record(50))
        publisher.submit(records[-1])
        await wait_for(lambda: publisher.spool_bytes == 0 and publisher.queue_depth == 0, seconds=60)
        await publisher.close()
        assert publisher.stats.replayed >= 50 and publisher.stats.dropped == 0
        # Spooled records are replayed before the newer one: the stream keeps call order.
        assert await stream_ids(server.url) == in_app_order(records)
    finally:
        server.stop()


def large_record(i: int, tenant: str, size: int) -> CallRecord:
    record = make_record(i, tenant)
    record.request.messages[0].content = f"q{i} " + "x" * size  # a long prompt: a large record
    return record


async def test_records_larger_than_a_segment_get_one_of_their_own_and_all_arrive(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    publisher = CallLogPublisher(nats_server.endpoint(GATEWAY), tmp_path / "spool", segment_bytes=8 << 10)
    await publisher.start()
    tenant = f"big{uuid.uuid4().hex[:8]}"
    records = [large_record(i, tenant, 16 << 10) for i in range(30)]  # 30 of ~16 KiB, segments of 8 KiB
    for record in records:
        publisher.submit(record)
    await publisher.close()
    assert publisher.stats.published == len(records) and publisher.stats.dropped == 0
    assert sorted(await stream_ids(nats_server.url, tenant)) == sorted(r.id for r in records)
    assert not list((tmp_path / "spool" / "journal").glob("*.ring"))  # all shipped: all deleted


async def test_a_journal_no_shipper_drains_stays_within_its_bound_and_counts_what_it_drops(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The shipper stopped (or a whole bound behind): records past queue_max_bytes are dropped
    and counted, never held in memory or failing a call; the rest all arrive once it runs."""
    bound = 256 << 10
    publisher = CallLogPublisher(
        nats_server.endpoint(GATEWAY), tmp_path / "spool", queue_max_bytes=bound, segment_bytes=32 << 10
    )
    tenant = f"full{uuid.uuid4().hex[:8]}"
    records = [large_record(i, tenant, 15 << 10) for i in range(40)]  # ~600 KiB, before start(): no shipper
    for record in records:
        publisher.submit(record)
    journal = sum(path.stat().st_size for path in (tmp_path / "spool" / "journal").glob("*.ring"))
    assert journal <= bound
    dropped = publisher.stats.dropped
    assert 0 < dropped < len(records)
    await publisher.start()
    await publisher.close()
    assert publisher.stats.published == len(records) - dropped and publisher.stats.dropped == dropped
    assert len(await stream_ids(nats_server.url, tenant)) == len(records) - dropped


async def test_spool_writes_and_their_fsync_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []  # the threads os.fsync ran in
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(threading.get_ident())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    publisher = CallLogPublisher(  # NATS away: every record goes to the spool
        f"nats://127.0.0.1:{free_port()}", tmp_path / "spool", ack_timeout=0.1
    )
    await publisher.start()
    for i in range(12):
        publisher.submit(make_record(i))
    await wait_for(lambda: publisher.stats.spooled == 12)
    await publisher.close()
    assert synced and threading.get_ident() not in synced  # never the event loop's thread


async def test_a_gateways_shipper_killed_mid_run_is_started_again_and_ships_each_record_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    publisher = CallLogPublisher(nats_server.endpoint(GATEWAY), tmp_path / "spool", shipper="process")
    await publisher.start()
    tenant = f"ship{uuid.uuid4().hex[:8]}"
    records = [make_record(i, tenant) for i in range(600)]
    for i, record in enumerate(records):
        publisher.submit(record)
        if i == 300:
            await wait_for(lambda: publisher.stats.published > 0)  # it ran, and shipped some
            assert publisher._process is not None
            publisher._process.kill()  # mid-run, batches noted and not
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await wait_for(lambda: publisher.stats.errors.get("ShipperExited") == 1)
    await publisher.close()
    assert sorted(await stream_ids(nats_server.url, tenant)) == sorted(r.id for r in records)
