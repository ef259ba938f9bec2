"""The publisher's write-ahead journal: a killed gateway loses none of the calls it answered.

A record is written here (one ``write``, no ``fsync``: it survives the process, not the
machine) when it is handed to the publisher, and forgotten once JetStream or the disk
spool has it. Segments hold a bounded number of records (256) and are deleted when all of
them are done. A new publisher moves whatever a dead one left here into its spool, to be
replayed; JetStream drops the ones that did arrive (``Nats-Msg-Id`` is the record id), and
there are at most a segment's worth of those.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from protege.capture.spool import pack_frames, unpack_frames

_SUFFIX = ".journal"


class Journal:
    def __init__(self, directory: Path, segment_records: int = 256) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_records = segment_records
        self._segment_of: dict[str, int] = {}  # record id → segment holding it
        self._open: Counter[int] = Counter()  # records not yet done, per segment
        self._current = 0
        self._written = 0
        self._fd: int | None = None

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    def recover(self, keep: Callable[[list[bytes]], None]) -> int:
        """Hand what a previous owner left (every whole record, oldest first) to ``keep``, then
        delete it; if ``keep`` raises, the journal stays as it was. Call it before any write."""
        left = sorted(self.directory.glob(f"*{_SUFFIX}"))
        payloads = [frame for path in left for frame in unpack_frames(path.read_bytes(), path)]
        if payloads:
            keep(payloads)
        for path in left:
            path.unlink(missing_ok=True)
        self._current = int(left[-1].stem) if left else 0
        return len(payloads)

    def write(self, record_id: str, payload: bytes) -> None:
        """Keep ``payload`` until :meth:`done` (a record written twice is kept once, as written first)."""
        if record_id in self._segment_of:
            return
        if self._fd is None or self._written >= self.segment_records:
            self._rotate()
        assert self._fd is not None
        os.write(self._fd, pack_frames([payload]))
        self._written += 1
        self._segment_of[record_id] = self._current
        self._open[self._current] += 1

    def done(self, record_id: str) -> None:
        segment = self._segment_of.pop(record_id, None)
        if segment is None:
            return
        self._open[segment] -= 1
        if self._open[segment] <= 0 and segment != self._current:
            del self._open[segment]
            self._path(segment).unlink(missing_ok=True)

    def pending(self) -> int:
        return len(self._segment_of)

    def _rotate(self) -> None:
        previous = self._current
        if self._fd is not None:
            os.close(self._fd)
        self._current += 1
        self._written = 0
        self._fd = os.open(self._path(self._current), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if previous and self._open.get(previous, 0) <= 0:
            self._open.pop(previous, None)
            self._path(previous).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop writing; an empty journal leaves no file behind."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._segment_of:
            for path in self.directory.glob(f"*{_SUFFIX}"):
                path.unlink(missing_ok=True)
