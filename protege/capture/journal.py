"""The publisher's write-ahead journal: a killed gateway loses none of the calls it answered.

A record is written here (one ``write``, no ``fsync``: it survives the process, not the
machine) when it is handed to the publisher, and forgotten once JetStream or the disk
spool has it. Segments hold a bounded number of records (256) and are deleted when all of
them are done. A new publisher moves whatever a dead one left here into its spool, to be
replayed; JetStream drops the ones that did arrive, and there are at most a segment's worth
of those.

The publisher sends records in batches, one message each (:mod:`protege.capture.wire`), and
a batch's ``Nats-Msg-Id`` comes from the records it holds. So before a batch is published,
which records it holds is written here too (:meth:`Journal.batched`), and recovery gives
each batch back as it was: under the same id, for JetStream to drop if it arrived; not at
all when one of its records is gone from the journal (done: the batch reached JetStream
or the spool). A segment that says which records went out together is kept until no older
segment is left, since any of those may hold a record of its batches (a record held for its
shadow answer is written long before its batch forms); without that, a done record left in
an older segment would go out again alone, under an id JetStream has not seen.
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
        self._segments: set[int] = set()  # segments this journal wrote and has not deleted
        self._marked: set[int] = set()  # of those, the ones saying which records went out together
        self._current = 0
        self._written = 0
        self._fd: int | None = None

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    def recover(self, keep: Callable[[list[list[bytes]]], None]) -> int:
        """Hand what a previous owner left to ``keep``, then delete it; if ``keep`` raises, the
        journal stays as it was. Call it before any write.

        ``keep`` gets every whole record, oldest first, in groups: the records of a batch the
        previous owner formed together, in its order; every other record alone. A batch some of
        whose records are gone (done) is left out: it reached JetStream or the spool. Returns the
        number of records handed over.
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
        """Say that these records (written, not yet done) go out together, in this order.

        Not said when one of them is not here (its write failed): a record missing from a batch
        at recovery must mean that it was done, so that the batch can be left out."""
        if all(record_id in self._segment_of for record_id in record_ids):
            self._append(_BATCH + "\n".join(record_ids).encode())
            self._marked.add(self._current)

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
        if self._open[segment] <= 0:
            self._collect()

    def pending(self) -> int:
        return len(self._segment_of)

    def _rotate(self) -> None:
        previous = self._current
        if self._fd is not None:
            os.close(self._fd)
        self._current += 1
        self._written = 0
        self._fd = os.open(self._path(self._current), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segments.add(self._current)
        if previous:
            self._collect()

    def _collect(self) -> None:
        """Delete the segments no recovery needs: all their records done, and, for one that says
        which records went out together, no older segment left."""
        oldest = True
        for number in sorted(self._segments):
            if number != self._current and self._open[number] <= 0 and (oldest or number not in self._marked):
                self._path(number).unlink(missing_ok=True)
                self._segments.discard(number)
                self._marked.discard(number)
                self._open.pop(number, None)
            else:
                oldest = False

    def close(self) -> None:
        """Stop writing; an empty journal leaves no file behind."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._segment_of:
            for path in self.directory.glob(f"*{_SUFFIX}"):
                path.unlink(missing_ok=True)


def _groups(entries: list[bytes]) -> list[list[bytes]]:
    """The journal's records, oldest first, grouped as their batches (each other record alone);
    none of a batch whose records are not all here (done: it was delivered)."""
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
        emitted.update(members)
        if all(member in payloads for member in members):
            groups.append([payloads[member] for member in members])
    return groups
