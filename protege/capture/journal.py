"""The call log's journal: records a publisher took, kept until shipped, across a killed process.

The writer (the gateway's event loop, or the SDK's publisher) writes each record into a
segment file: one ``pwrite`` into the page cache, no ``fsync``, so a killed process loses
none of them (a crashed machine does: the spool is what survives that). The shipper
(:mod:`protege.capture.shipper`), in another process or in a task beside the writer,
follows the segments, publishes or spools their records, and deletes the segments it is
done with. So the request path pays one system call, and serializing batches, NATS, acks
and the spool happen elsewhere. (Copying into a shared memory map instead cost the loaded
gateway more: each fresh page of a file mapping takes a fault in the writer, on ext4 one
that allocates; bench/gateway_overhead.py.)

Segments are ``<number>-<writer>.ring``: numbered in the order they were made (numbers only
grow, across writers too), and named after the writer (one publisher's lifetime) that made
them, so a shipper knows which segments a dead writer left. Each is made at its full size
(``segment_bytes``, or more for a record that needs it) and renamed into place, then filled
with frames ``[u32 length][u32 crc32][entry]``. A reader (it maps the segment) never takes a
frame the writer has not finished: a header of zeros, or a length or CRC that does not match,
means "not yet" while the writer lives and "the end of the segment" once it is gone.

Entries: ``R<subject>\\n<id>\\n<json>`` a record to ship; ``H`` the same for a record held
(its final version follows as ``R``: a shadow answer is pending; if it never comes, the
held version is shipped); ``E`` the writer closed.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from protege.capture.spool import _HEADER, frame_at, hold_lock, pack_frames

log = logging.getLogger(__name__)

_SUFFIX = ".ring"
RECORD, HELD, END = b"R", b"H", b"E"


@dataclass(frozen=True, order=True)
class Position:
    """Where a frame starts in the journal: a segment's number and an offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Entry:
    kind: bytes  # RECORD, HELD or END
    writer: str
    subject: str
    record_id: str
    data: bytes
    position: Position
    end: Position  # where the next frame starts


@dataclass(frozen=True)
class Segment:
    number: int
    writer: str
    path: Path


def segments(directory: Path) -> list[Segment]:
    """The journal's segments, oldest first."""
    found = []
    for path in directory.glob(f"*{_SUFFIX}"):
        number, _, writer = path.stem.partition("-")
        if number.isdigit() and writer:
            found.append(Segment(int(number), writer, path))
    return sorted(found, key=lambda segment: segment.number)


class JournalWriter:
    """Appends records to the journal; one writer per directory (a lock says so).

    Bounded by ``max_bytes`` of segments not yet shipped: past it (the shipper is stopped or
    far behind), records are dropped and counted, never held in memory or failing a call.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 4 << 20, max_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(self.directory / "writer.lock", "publisher")
        self.segment_bytes = segment_bytes
        self.max_bytes = max(max_bytes, segment_bytes)
        self.writer = f"{os.getpid()}x{secrets.token_hex(4)}"
        # Numbers only grow, across writers too (a shipper's plan names positions of segments it
        # has since deleted): after every segment here, and after the clock's microseconds.
        last = max((segment.number for segment in segments(self.directory)), default=0)
        self._number = max(last, time.time_ns() // 1000)
        self._fd: int | None = None  # the segment being written
        self._size = 0  # its size
        self._offset = 0
        self.records = 0  # records and bytes written by this writer
        self.bytes = 0
        self.dropped = 0
        self._full_until = 0.0  # while the journal is full: when to look again
        self.closed = False

    def append(self, kind: bytes, subject: str, record_id: str, data: bytes) -> bool:
        """Keep one entry; False when it was dropped (the journal is full, or closed)."""
        if self.closed:
            self.dropped += 1
            return False
        return self._append(kind, subject, record_id, data, bounded=True)

    def _append(self, kind: bytes, subject: str, record_id: str, data: bytes, *, bounded: bool) -> bool:
        entry = b"".join((kind, subject.encode(), b"\n", record_id.encode(), b"\n", data))
        size = _HEADER.size + len(entry)
        fd = self._fd
        if fd is None or self._offset + size > self._size:
            fd = self._rotate(size, bounded=bounded)
            if fd is None:
                self.dropped += 1
                return False
        # One write into the page cache: a reader that catches it half done finds a frame whose
        # CRC does not match yet, and waits.
        os.pwrite(fd, pack_frames([entry]), self._offset)
        self._offset += size
        self.records += 1
        self.bytes += len(data)
        return True

    def _rotate(self, size: int, *, bounded: bool) -> int | None:
        """A new segment with room for ``size`` bytes; None while the journal is full."""
        now = time.monotonic()
        if bounded and now < self._full_until:
            return None
        on_disk = 0
        for segment in segments(self.directory):
            with contextlib.suppress(FileNotFoundError):  # the shipper deletes what it shipped
                on_disk += segment.path.stat().st_size
        if bounded and on_disk + max(size, self.segment_bytes) > self.max_bytes:
            if not self._full_until:
                log.error(
                    "call log: DROPPING records: %d bytes of the journal are not shipped yet "
                    "(call_log.queue_max_bytes); is the shipper running?",
                    on_disk,
                )
            self._full_until = now + 1.0
            return None
        self._full_until = 0.0
        self._close_segment()
        self._number += 1
        final = self.directory / f"{self._number:016d}-{self.writer}{_SUFFIX}"
        making = final.with_suffix(".making")
        fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._size = max(size, self.segment_bytes)
        os.ftruncate(fd, self._size)
        os.rename(making, final)  # a reader sees the segment whole, at its full size
        self._fd, self._offset = fd, 0
        return fd

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Say so in the journal (the shipper then ships the rest and stops), and let go."""
        if self.closed:
            return
        self._append(END, "", "", b"", bounded=False)
        self.closed = True
        self._close_segment()
        os.close(self._lock)


class JournalReader:
    """Follows the journal's segments in order, from a position; ``live`` is the writer that
    may still be writing (None: every writer is gone)."""

    def __init__(self, directory: Path, live: str | None) -> None:
        self.directory = Path(directory)
        self.live = live
        self.live_gone = False  # the live writer ended (its END entry) or died
        self.position = Position(0, 0)
        self._segment: Segment | None = None
        self._map: mmap.mmap | None = None

    def seek(self, position: Position) -> None:
        self.position = position
        self._open(None)

    @property
    def writer(self) -> str | None:
        """The writer of the segment the reader is in."""
        return self._segment.writer if self._segment is not None else None

    def _open(self, segment: Segment | None) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._segment = segment
        if segment is not None:
            with segment.path.open("rb") as file:
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def _current(self) -> bool:
        """Open the segment the position is in, or the first one after it; False if none."""
        if self._segment is not None and self._segment.number == self.position.segment:
            return True
        for segment in segments(self.directory):
            if segment.number >= self.position.segment:
                if segment.number > self.position.segment:
                    self.position = Position(segment.number, 0)
                self._open(segment)
                return True
        return False

    @staticmethod
    def _frame(journal: mmap.mmap, offset: int) -> bytes | None:
        entry = frame_at(journal, offset)
        return entry or None  # an empty frame is the zeros a segment is made of, not an entry

    def take(self, limit: int, until: Position | None = None) -> list[Entry]:
        """Up to ``limit`` entries from the position on (not past ``until``), all of one writer."""
        taken: list[Entry] = []
        while len(taken) < limit and (until is None or self.position < until):
            if not self._current():
                break
            segment, journal = self._segment, self._map
            assert segment is not None and journal is not None
            offset = self.position.offset
            entry = self._frame(journal, offset)
            if entry is None:
                following = [s for s in segments(self.directory) if s.number > segment.number]
                if not self._finished(segment, journal, offset, bool(following)):
                    break
                if not following or (taken and following[0].writer != segment.writer):
                    break  # nothing more yet; or another writer's: a batch is one writer's
                self.position = Position(following[0].number, 0)
                continue
            kind = entry[:1]
            subject, _, rest = entry[1:].partition(b"\n")
            record_id, _, data = rest.partition(b"\n")
            end = Position(segment.number, offset + _HEADER.size + len(entry))
            taken.append(
                Entry(kind, segment.writer, subject.decode(), record_id.decode(), data, self.position, end)
            )
            self.position = end
            if kind == END and segment.writer == self.live:
                self.live_gone = True
        return taken

    def _finished(self, segment: Segment, journal: mmap.mmap, offset: int, followed: bool) -> bool:
        """No whole frame at ``offset``: is that the segment's end, or one being written?
        ``followed``: a later segment exists."""
        if segment.writer != self.live or self.live_gone:
            return True  # its writer is gone: a torn frame (the crash) or the unwritten rest
        if not followed:
            return False  # the writer is still in this segment
        # It made a new segment, so it finished with this one first; look once more.
        return self._frame(journal, offset) is None

    def entry_at(self, position: Position) -> Entry | None:
        """The entry at ``position`` (a held record's, read again at recovery)."""
        saved = self.position
        self.seek(position)
        found = self.take(1)
        self.seek(saved)
        return found[0] if found and found[0].position == position else None

    def delete_before(self, position: Position) -> None:
        """Delete the segments wholly before ``position``: everything in them is shipped."""
        for segment in segments(self.directory):
            if segment.number >= position.segment:
                break
            if self._segment is not None and segment.number == self._segment.number:
                self._open(None)
            segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._open(None)
