"""The call log's journal: records survive the process that took them, and each is shipped once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protege.capture import CallLogPublisher, SpoolInUseError
from protege.capture.access import GATEWAY, OPERATOR
from protege.capture.journal import END, HELD, RECORD, JournalReader, JournalWriter, segments
from protege.capture.reader import read_records, subject_filter
from protege.services.nats import NatsServer


def kinds_and_ids(entries: list) -> list[tuple[bytes, str]]:  # type: ignore[type-arg]
    return [(entry.kind, entry.record_id) for entry in entries]


def test_a_reader_takes_whole_entries_in_order_and_waits_for_a_live_writer(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, segment_bytes=4096)
    reader = JournalReader(tmp_path, live=writer.writer)
    for i in range(3):
        writer.append(RECORD, "protege.calls.t.a", f"r{i}", b"x" * 1000)
    assert kinds_and_ids(reader.take(10)) == [(RECORD, "r0"), (RECORD, "r1"), (RECORD, "r2")]
    assert reader.take(10) == []  # the writer's next frame is not there yet: wait, don't skip
    writer.append(HELD, "protege.calls.t.a", "r3", b"held")
    for i in range(4, 9):  # past the segment: a new one
        writer.append(RECORD, "protege.calls.t.a", f"r{i}", b"x" * 1000)
    taken = reader.take(100)
    assert [entry.record_id for entry in taken] == [f"r{i}" for i in range(3, 9)]
    assert taken[0].kind == HELD and taken[0].data == b"held"
    assert len(segments(tmp_path)) > 1 and not reader.live_gone
    writer.close()
    assert kinds_and_ids(reader.take(10)) == [(END, "")] and reader.live_gone


def test_one_writer_per_directory(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    with pytest.raises(SpoolInUseError, match="own spool directory"):
        JournalWriter(tmp_path)
    writer.close()
    JournalWriter(tmp_path).close()


def test_a_dead_writers_torn_frame_ends_its_segment(tmp_path: Path) -> None:
    """A frame cut short by a crash is not taken; what the next writer wrote is."""
    dead = JournalWriter(tmp_path, segment_bytes=4096)
    dead.append(RECORD, "protege.calls.t.a", "whole", b"{}")
    assert dead._fd is not None
    offset = dead._offset  # a crash mid-write: a header, and an entry that does not match it
    os.pwrite(dead._fd, b"\x04\x00\x00\x00\x00\x00\x00\x00torn", offset)
    os.close(dead._fd)
    os.close(dead._lock)  # the process is gone: so is its lock
    successor = JournalWriter(tmp_path, segment_bytes=4096)
    successor.append(RECORD, "protege.calls.t.a", "after", b"{}")
    reader = JournalReader(tmp_path, live=successor.writer)
    first = reader.take(10)
    assert kinds_and_ids(first) == [(RECORD, "whole")]  # a batch is one writer's
    assert kinds_and_ids(reader.take(10)) == [(RECORD, "after")]
    reader.delete_before(reader.position)
    assert [segment.writer for segment in segments(tmp_path)] == [successor.writer]
    successor.close()


KILLED_PUBLISHER = """
import asyncio, os, signal, sys
from protege.capture import CallLogPublisher, NatsEndpoint
from protege.capture.shipper import Shipper
sys.path.insert(0, sys.argv[3])
from test_publisher import make_record

async def main() -> None:
    killed = sys.argv[4]
    endpoint = NatsEndpoint.from_credentials(sys.argv[1], sys.argv[5])
    if killed == "published":  # a crash after JetStream's acks, before the plan says the batch is done
        send = Shipper._send

        async def send_then_die(self, messages, records):
            await send(self, messages, records)
            if self.stats.published >= 200:
                os.kill(os.getpid(), signal.SIGKILL)

        Shipper._send = send_then_die
    shipper = "process" if killed == "gateway" else "inline"
    publisher = CallLogPublisher(endpoint, sys.argv[2], shipper=shipper)
    if killed != "queued":
        await publisher.start()
    for i in range(200):
        publisher.submit(make_record(i, "journal"))
    await asyncio.sleep(0 if killed == "queued" else 2)
    os.kill(os.getpid(), signal.SIGKILL)  # answered, handed over (published or not): a crash

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["queued", "published", "gateway"])
async def test_a_killed_publisher_loses_and_duplicates_no_record_it_took(tmp_path: Path, killed: str) -> None:
    """Killed with 200 records taken: before any shipper ran; after JetStream took them all (in
    batches) but before the shipper noted it; or a gateway whose shipper process lives on.
    Either way the stream ends with each once."""
    with NatsServer(tmp_path / "nats") as nats_server:
        spool = tmp_path / "spool"
        here = str(Path(__file__).parent)
        gateway = str(nats_server.credentials_file(GATEWAY))
        command = [sys.executable, "-c", KILLED_PUBLISHER, gateway, str(spool), here, killed, nats_server.url]
        died = await asyncio.to_thread(subprocess.run, command, check=False)
        assert died.returncode == -9
        successor = CallLogPublisher(nats_server.endpoint(GATEWAY), spool)
        await successor.start()  # its shipper waits for an orphaned one to finish first
        await successor.close()
        reader = nats_server.endpoint(OPERATOR)
        ids = [r.id async for r in read_records(reader, subject=subject_filter("journal"))]
        assert len(ids) == 200 and len(set(ids)) == 200  # every record once: JetStream drops repeats
        assert not segments(spool / "journal")  # all shipped, nothing left
