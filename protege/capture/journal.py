"""The publisher's write-ahead journal: a killed gateway loses none of the calls it answered.

A record is written here (one ``write``, no ``fsync``: it survives the process, not the
machine) when it is handed to the publisher, and forgotten once JetStream or the disk
spool has it. Segments hold a bounded number of records (256) and are deleted when all of
them are done. A new publisher moves whatever a dead one left here into its spool, to be
replayed; JetStream drops the ones that did arrive, and there are at most a segment's worth
of those.

The publisher sends records in batches, one message each (:mod:`protege.capture.wire`), and
a batch's ``Nats-Msg-Id`` comes from the records it holds. So before a batch is published,
which records it holds is written here too (:meth:`Journal.batched`): a recovered record
goes out again in the same batch, under the same id, and JetStream can drop it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from protege.capture.spool import pack_frames, unpack_frames

_SUFFIX = ".journal"
_RECORD = b"R"  # an entry: R<record id>\n<payload>
_BATCH = b"B"  # B<record id>\n<record id>... (the records one message holds, in order)


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

    def recover(self, keep: Callable[[list[list[bytes]]], None]) -> int:
        """Hand what a previous owner left to ``keep``, then delete it; if ``keep`` raises, the
        journal stays as it was. Call it before any write.

        ``keep`` gets every whole record, oldest first, in groups: the records of a batch the
        previous owner formed together, in its order; every other record alone. Returns the
        number of records.
        """
        left = sorted(self.directory.glob(f"*{_SUFFIX}"))
        entries = [entry for path in left for entry in unpack_frames(path.read_bytes(), path)]
        groups = _groups(entries)
        if groups:
            keep(groups)
        for path in left:
            path.unlink(missing_ok=True)
        self._current = int(left[-1].stem) if left else 0
        return sum(len(group) for group in groups)

    def write(self, record_id: str, payload: bytes) -> None:
        """Keep ``payload`` until :meth:`done` (a record written twice is kept once, as written first)."""
        if record_id in self._segment_of:
            return
        self._append(_RECORD + record_id.encode() + b"\n" + payload)
        self._segment_of[record_id] = self._current
        self._open[self._current] += 1

    def batched(self, record_ids: list[str]) -> None:
        """Say that these records (written, not yet done) go out together, in this order."""
        self._append(_BATCH + "\n".join(record_ids).encode())

    def _append(self, entry: bytes) -> None:
        if self._fd is None or self._written >= self.segment_records:
            self._rotate()
        assert self._fd is not None
        os.write(self._fd, pack_frames([entry]))
        self._written += 1

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


def _groups(entries: list[bytes]) -> list[list[bytes]]:
    """The journal's records, oldest first, grouped as their batches (each other record alone)."""
    payloads: dict[str, bytes] = {}
    batch_of: dict[str, tuple[str, ...]] = {}
    alone: list[bytes] = []  # written by a version that kept no record ids: each its own group
    order: list[str | int] = []
    for entry in entries:
        kind, body = entry[:1], entry[1:]
        if kind == _RECORD:
            record_id, _, payload = body.partition(b"\n")
            if record_id.decode() not in payloads:  # a record written twice is kept as written first
                payloads[record_id.decode()] = payload
                order.append(record_id.decode())
        elif kind == _BATCH:
            members = tuple(body.decode().split("\n"))
            for member in members:
                batch_of[member] = members
        else:
            order.append(len(alone))
            alone.append(entry)
    groups: list[list[bytes]] = []
    emitted: set[str] = set()
    for item in order:
        if isinstance(item, int):
            groups.append([alone[item]])
            continue
        if item in emitted:
            continue
        members = batch_of.get(item, (item,))
        present = [member for member in members if member in payloads]
        emitted.update(present)
        groups.append([payloads[member] for member in present])
    return groups
