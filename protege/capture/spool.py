"""A crash-safe, bounded, append-only disk spool for call records NATS could not take.

Records are framed as ``[u32 length][u32 crc32][payload]`` in segment files named by a
monotonically increasing number. Appends are fsynced before they return, so a record the
spool accepted survives a crash. A torn frame at the end of a segment (the process died
mid-write) fails its length or CRC check and is dropped on reading: it was never
acknowledged. Segments are consumed in order and deleted once everything in them has
been delivered, so replay keeps the original order.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SUFFIX = ".spool"


class SpoolFullError(Exception):
    """The spool reached its byte limit; the record was not stored."""


class SpoolInUseError(RuntimeError):
    """Another process (or publisher) already owns this spool directory."""


@dataclass(frozen=True)
class SpooledBatch:
    segment: Path
    payloads: list[bytes]
    size: int  # bytes on disk


def hold_lock(path: Path, what: str) -> int:
    """An exclusive lock on ``path``, held until its descriptor is closed (or the process ends);
    SpoolInUseError when another ``what`` holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolInUseError(
            f"{path.parent} is in use by another {what}; give each gateway or publisher its own "
            "spool directory (call_log.spool_dir)"
        ) from None
    return fd


class DiskSpool:
    def __init__(self, directory: Path, max_bytes: int = 1 << 30, segment_bytes: int = 8 << 20) -> None:
        if max_bytes < segment_bytes:
            raise ValueError(f"spool max_bytes {max_bytes} is below its segment size {segment_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._current: Path | None = None
        # One owner per directory: two writers would interleave segments and replay twice.
        self._owner = hold_lock(self.directory / "owner.lock", "process")
        # The owner is the only writer, so the size is kept here rather than listed per call.
        self._size = sum(p.stat().st_size for p in self._segments())

    def close(self) -> None:
        """Release the directory (records stay, for the next owner to replay)."""
        os.close(self._owner)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{_SUFFIX}"))

    def size_bytes(self) -> int:
        return self._size

    def is_empty(self) -> bool:
        return self._size == 0

    def append(self, payloads: list[bytes]) -> None:
        """Store ``payloads`` durably (fsync) in order, or raise SpoolFullError storing none."""
        if not payloads:
            return
        frames = pack_frames(payloads)
        with self._lock:
            if self.size_bytes() + len(frames) > self.max_bytes:
                raise SpoolFullError(
                    f"spool {self.directory} is full ({self.max_bytes} bytes); "
                    "raise its limit or bring NATS back"
                )
            segment = self._writable_segment()
            fd = os.open(segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, frames)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._size += len(frames)

    def _writable_segment(self) -> Path:
        current = self._current
        if current is None or not current.exists() or current.stat().st_size >= self.segment_bytes:
            existing = self._segments()
            number = int(existing[-1].stem) + 1 if existing else 1
            current = self.directory / f"{number:012d}{_SUFFIX}"
            current.touch(mode=0o600)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new segment's name is durable too
            finally:
                os.close(dir_fd)
            self._current = current
        return current

    def batches(self) -> Iterator[SpooledBatch]:
        """The spooled records, oldest segment first; call :meth:`done` after delivering one."""
        for segment in self._segments():
            with self._lock:
                if segment == self._current:
                    self._current = None  # new appends go to a fresh segment from now on
                data = segment.read_bytes()
            yield SpooledBatch(segment, list(unpack_frames(data, segment)), len(data))

    def done(self, batch: SpooledBatch) -> None:
        with self._lock:
            batch.segment.unlink(missing_ok=True)
            self._size -= batch.size


def pack_frames(payloads: list[bytes]) -> bytes:
    return b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)


def frame_at(data: bytes | mmap.mmap, offset: int) -> bytes | None:
    """The payload of the frame at ``offset``; None if no whole frame with a matching CRC is there."""
    if offset + _HEADER.size > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    payload = data[start : start + length]
    return payload if len(payload) == length and zlib.crc32(payload) == crc else None


def unpack_frames(data: bytes, segment: Path) -> Iterator[bytes]:
    """The whole frames of a segment; a torn one at its end (a crash mid-write) is dropped."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        payload = frame_at(data, offset)
        if payload is None:
            log.warning("spool %s: dropping a torn record at byte %d (a crash mid-write)", segment, offset)
            return
        yield payload
        offset += _HEADER.size + len(payload)
    if offset != len(data):
        log.warning("spool %s: dropping %d trailing bytes of a torn header", segment, len(data) - offset)
