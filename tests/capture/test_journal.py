"""The publisher's journal: records survive the process that took them, and are forgotten once delivered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from protege.capture import CallLogPublisher
from protege.capture.access import GATEWAY, OPERATOR
from protege.capture.journal import Journal
from protege.capture.reader import read_records, subject_filter
from protege.capture.spool import pack_frames
from protege.services.nats import NatsServer


def test_segments_go_once_all_their_records_are_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_records=2)
    for i in range(5):
        journal.write(f"r{i}", f"payload {i}".encode())
    journal.write("r0", b"a later, complete version")  # held first, submitted later: kept once
    assert len(list(tmp_path.glob("*.journal"))) == 3 and journal.pending() == 5
    for i in (0, 1, 2):
        journal.done(f"r{i}")
    assert len(list(tmp_path.glob("*.journal"))) == 2  # the first segment is gone, the second still holds r3
    for i in (3, 4):
        journal.done(f"r{i}")
    journal.close()
    assert not list(tmp_path.glob("*.journal"))


def test_recovery_hands_over_whole_records_and_keeps_them_if_that_fails(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.write(f"r{i}", f"payload {i}".encode())
    segment = next(tmp_path.glob("*.journal"))
    with segment.open("ab") as torn:  # the process died in the middle of a fourth write
        torn.write(b"\x20\x00\x00\x00\x01")

    def refuse(payloads: list[bytes]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Journal(tmp_path).recover(refuse)
    assert segment.exists()
    kept: list[list[bytes]] = []
    assert Journal(tmp_path).recover(kept.extend) == 3
    assert kept == [[b"payload 0"], [b"payload 1"], [b"payload 2"]] and not segment.exists()


def test_recovery_gives_back_each_batch_as_it_was_formed(tmp_path: Path) -> None:
    """A recovered batch goes out again as the same message, under the same id, for JetStream to drop."""
    legacy = tmp_path / "000000000000.journal"  # a record journaled by a version without batches
    legacy.write_bytes(pack_frames([b"protege.calls.t.a\nold\n{}"]))
    journal = Journal(tmp_path)
    for i in range(5):
        journal.write(f"r{i}", f"payload {i}".encode())
    journal.batched(["r3", "r1"])
    journal.done("r4")
    kept: list[list[bytes]] = []
    assert Journal(tmp_path).recover(kept.extend) == 6
    assert kept == [
        [b"protege.calls.t.a\nold\n{}"],
        [b"payload 0"],
        [b"payload 3", b"payload 1"],  # in the batch's order
        [b"payload 2"],
        [b"payload 4"],  # done, but its segment was still open: JetStream drops it (its own id)
    ]


def test_a_done_record_in_an_older_segment_goes_back_with_its_batch_or_not_at_all(tmp_path: Path) -> None:
    """A record held for its shadow answer sits in an old segment, kept by another record still
    waiting; its batch forms much later. Recovery must give it back in that batch (the same
    message id, which JetStream drops), never alone under an id JetStream has not seen."""
    journal = Journal(tmp_path, segment_records=2)
    journal.write("waiting", b"w")  # a shadow answer that never comes: keeps segment 1
    journal.write("held", b"h")
    for i in range(4):  # later calls, published alone, fill and empty segments
        journal.write(f"r{i}", f"{i}".encode())
        journal.done(f"r{i}")
    journal.write("partner", b"p")
    journal.batched(["held", "partner"])
    journal.batched(["held", "never-written"])  # not said: one of them is not in the journal
    journal.done("held")
    journal.done("partner")
    for i in range(4, 10):
        journal.write(f"r{i}", f"{i}".encode())
        journal.done(f"r{i}")
    kept: list[list[bytes]] = []
    Journal(tmp_path).recover(kept.extend)
    assert [b"h"] not in kept and [b"h", b"p"] in kept and [b"w"] in kept


KILLED_PUBLISHER = """
import asyncio, os, signal, sys
from protege.capture import CallLogPublisher, NatsEndpoint
sys.path.insert(0, sys.argv[3])
from test_publisher import make_record

async def main() -> None:
    publisher = CallLogPublisher(NatsEndpoint.from_credentials(sys.argv[1], sys.argv[5]), sys.argv[2])
    await publisher.start()
    if sys.argv[4] == "published":  # a crash between JetStream's acks and the journal forgetting
        publisher.journal.done = lambda record_id: None
    for i in range(200):
        publisher.submit(make_record(i, "journal"))
    while sys.argv[4] == "published" and publisher.stats.published < 200:
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # answered, handed over (published or not): a crash

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["queued", "published"])
async def test_a_killed_publisher_loses_and_duplicates_no_record_it_took(tmp_path: Path, killed: str) -> None:
    """Killed with 200 records taken: before publishing any, or after JetStream took them all (in
    batches) but before the journal forgot them; either way the stream ends with each once."""
    with NatsServer(tmp_path / "nats") as nats_server:
        spool = tmp_path / "spool"
        here = str(Path(__file__).parent)
        gateway = str(nats_server.credentials_file(GATEWAY))
        command = [sys.executable, "-c", KILLED_PUBLISHER, gateway, str(spool), here, killed, nats_server.url]
        died = await asyncio.to_thread(subprocess.run, command, check=False)
        assert died.returncode == -9
        successor = CallLogPublisher(nats_server.endpoint(GATEWAY), spool)
        await successor.start()
        ids: list[str] = []
        for _ in range(100):  # the spool is replayed within a second or two
            await asyncio.sleep(0.2)
            if successor.spool.is_empty() and successor.stats.replayed:
                reader = nats_server.endpoint(OPERATOR)
                ids = [r.id async for r in read_records(reader, subject=subject_filter("journal"))]
                break
        await successor.close()
        assert len(ids) == 200 and len(set(ids)) == 200  # every record once: JetStream drops replays
        assert successor.stats.spooled == 200  # all of them came back from the dead one's journal
