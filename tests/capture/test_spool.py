from pathlib import Path

import pytest

from protege.capture.spool import DiskSpool, SpoolFullError, SpoolInUseError


def drain(spool: DiskSpool) -> list[bytes]:
    out = []
    for batch in spool.batches():
        out.extend(batch.payloads)
        spool.done(batch)
    return out


def reopened(spool: DiskSpool) -> DiskSpool:
    """The same directory after a restart."""
    spool.close()
    return DiskSpool(spool.directory)


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=100)
    records = [f"record-{i}".encode() * 3 for i in range(50)]
    for start in range(0, 50, 7):
        spool.append(records[start : start + 7])
    assert len(list(tmp_path.glob("*.spool"))) > 1
    assert drain(spool) == records
    assert spool.is_empty() and list(tmp_path.glob("*.spool")) == []


def test_reopened_spool_keeps_its_records(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append([b"a", b"b"])
    assert drain(reopened(spool)) == [b"a", b"b"]


def test_a_second_owner_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    with pytest.raises(SpoolInUseError, match="give each gateway or publisher its own spool directory"):
        DiskSpool(tmp_path)
    spool.close()
    DiskSpool(tmp_path).close()


def test_torn_write_at_the_end_is_dropped_not_misread(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append([b"complete-1", b"complete-2"])
    segment = next(tmp_path.glob("*.spool"))
    with segment.open("ab") as handle:  # a crash in the middle of the next append
        handle.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")
    assert drain(reopened(spool)) == [b"complete-1", b"complete-2"]


def test_bit_flip_stops_the_segment_at_the_damage(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append([b"first", b"second"])
    segment = next(tmp_path.glob("*.spool"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert drain(reopened(spool)) == [b"first"]


def test_full_spool_refuses_the_whole_batch(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=100, segment_bytes=50)
    spool.append([b"x" * 40])
    with pytest.raises(SpoolFullError, match="raise its limit or bring NATS back"):
        spool.append([b"y" * 30, b"z" * 30])
    assert drain(spool) == [b"x" * 40]


def test_appends_during_replay_go_to_a_new_segment(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append([b"old"])
    batches = spool.batches()
    first = next(batches)
    spool.append([b"new"])  # arrives while the first segment is being replayed
    spool.done(first)
    assert first.payloads == [b"old"]
    assert drain(spool) == [b"new"]
