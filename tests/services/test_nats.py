"""JetStream through a real nats-server launched by protege.services."""

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from protege.services.nats import NatsServer
from protege.services.process import ServiceError, port_open

pytestmark = pytest.mark.slow


async def test_jetstream_publish_consume_ack(nats_server: NatsServer) -> None:
    client = await nats_server.endpoint().connect()  # the admin: any stream
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="T1", subjects=["t1.>"], storage=StorageType.FILE))
        for i in range(10):
            ack = await js.publish(
                f"t1.acme.app{i % 2}", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id-{i}"}
            )
            assert ack.seq == i + 1
        duplicate = await js.publish("t1.acme.app0", b"m0", headers={"Nats-Msg-Id": "id-0"})
        assert duplicate.duplicate
        sub = await js.pull_subscribe("t1.>", "worker", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        messages = await sub.fetch(10, timeout=5)
        assert [m.data for m in messages] == [f"m{i}".encode() for i in range(10)]
        for message in messages[:6]:
            await message.ack_sync()
        # The unacked ones come back after the ack wait; the acked ones never do.
        info = await js.consumer_info("T1", "worker")
        assert info.num_ack_pending == 4
    finally:
        await client.close()


async def test_restart_after_kill_keeps_the_stream(tmp_path: object) -> None:
    server = NatsServer(tmp_path)  # type: ignore[arg-type]
    with server:
        client = await server.endpoint().connect()
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="K", subjects=["k.>"], storage=StorageType.FILE))
        await js.publish("k.a", b"kept")
        await client.close()
        server.kill()
        assert not port_open(server.host, server.port)
        server.start()
        client = await server.endpoint().connect()  # the identities outlive a restart too
        info = await client.jetstream().stream_info("K")
        assert info.state.messages == 1
        await client.close()
    await asyncio.sleep(0)
    assert not port_open(server.host, server.port)


def test_start_failure_reports_the_log(tmp_path: object, nats_server: NatsServer) -> None:
    clash = NatsServer(tmp_path, port=nats_server.port)  # type: ignore[arg-type]
    with pytest.raises(ServiceError, match="exited with code") as raised:
        clash.start()
    assert "address already in use" in str(raised.value)
