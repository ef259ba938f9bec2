"""Ship the journal's records to JetStream, spooling to disk when NATS is away.

The shipper follows the journal (:mod:`protege.capture.journal`) a publisher writes, takes
what it holds (waiting at most ``linger_seconds`` for up to ``batch_size`` records) and
publishes it as one message per subject (:mod:`protege.capture.wire`), whose
``Nats-Msg-Id`` comes from its records' ids, so JetStream drops what a retry sends twice.
When a publish fails, the batch and everything after it goes to the disk spool, in order,
until the spool has been replayed into JetStream. Spool writes (and their ``fsync``) run in
a thread.

It runs as a task beside the writer (the listener SDK) or as a process of its own
(:func:`main`, started by a gateway's publisher): then none of
this work takes the gateway's event loop, or its core.

**Exactly once across crashes.** Before a batch goes out, the shipper notes it in its plan
(``shipper.plan``): where it ends in the journal, the size limit its messages were formed
with, and which held records it leaves pending. After it is published or spooled, the plan
says done. A shipper starting on the directory resumes after the last batch done, and forms
an unfinished batch again from the same entries, as the same messages under the same ids,
for JetStream to drop if they had arrived. One shipper works on a directory at a time (a
lock); a new one waits for the one a killed gateway left to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
import pickle
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from protege.api.calls import SUBJECT_PREFIX
from protege.capture.connection import NatsEndpoint
from protege.capture.journal import END, HELD, Entry, JournalReader, Position
from protege.capture.spool import (
    DiskSpool,
    SpoolFullError,
    SpoolInUseError,
    frame_at,
    hold_lock,
    pack_frames,
    unpack_frames,
)
from protege.capture.wire import SEPARATOR, count_records, join_records, message_id

if TYPE_CHECKING:
    from protege.config import Settings

log = logging.getLogger(__name__)

STATS_FILE = "shipper.stats"
_PLAN_FILE = "shipper.plan"
_PLAN_COMPACT_BYTES = 1 << 20


@dataclass(frozen=True)
class StreamSettings:
    name: str = "PROTEGE_CALLS"
    subjects: tuple[str, ...] = (f"{SUBJECT_PREFIX}.>",)
    max_age_seconds: float = 30 * 86400
    max_bytes: int = -1
    replicas: int = 1  # JetStream copies of the stream (a clustered NATS)
    # Must outlast the longest outage a spool can bridge, or a replay could duplicate.
    duplicate_window_seconds: float = 24 * 3600

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSettings:
        """The call-log stream as configured (call_log.*): the gateways and the curator create or
        update it with this, whichever comes first."""
        log_settings = settings.call_log
        return cls(
            name=log_settings.stream,
            max_age_seconds=log_settings.max_age_days * 86400,
            max_bytes=log_settings.max_bytes,
            replicas=log_settings.replicas,
            duplicate_window_seconds=log_settings.duplicate_window_hours * 3600,
        )

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=StorageType.FILE,
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_seconds,
        )


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> None:
    try:
        await js.stream_info(settings.name)
    except NotFoundError:
        await js.add_stream(settings.config())
    else:
        await js.update_stream(settings.config())


@dataclass
class PublisherStats:
    published: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connected: bool = False
    spool_bytes: int = 0
    shipped: int = 0  # records of the live writer published or spooled
    shipped_bytes: int = 0


class StatsBoard:
    """A shipper's figures in a small memory-mapped file, for its publisher in another process
    (a gateway's /metrics and /readyz): written with a copy, read whole or not at all."""

    SIZE = 64 << 10

    def __init__(self, directory: Path) -> None:
        fd = os.open(Path(directory) / STATS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self._map = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def write(self, stats: PublisherStats) -> None:
        frame = pack_frames([json.dumps(asdict(stats)).encode()])
        if len(frame) <= self.SIZE:
            self._map[: len(frame)] = frame

    def read(self) -> PublisherStats | None:
        """The figures last written; None if none yet, or caught mid-write."""
        data = frame_at(self._map, 0)
        return PublisherStats(**json.loads(data)) if data else None

    def close(self) -> None:
        self._map.close()


Message = tuple[str, str, bytes]  # subject, Nats-Msg-Id, payload: one record or a batch of them
# NATS refuses a message past the server's max_payload (1 MiB by default); headers count too.
_HEADER_ROOM = 4096


def _runs(records: list[Message], max_bytes: int) -> list[list[Message]]:
    """Records (one-record messages) in as few runs, one message each, as their subjects and
    ``max_bytes`` allow; each subject's records in their order."""
    runs: list[list[Message]] = []
    open_runs: dict[str, tuple[list[Message], int]] = {}  # subject → its last run, and that run's bytes
    for record in records:
        subject, _, data = record
        run, size = open_runs.get(subject, ([], 0))
        if not run or size + len(data) > max_bytes:
            run, size = [], 0
            runs.append(run)
        run.append(record)
        open_runs[subject] = run, size + len(data) + len(SEPARATOR)
    return runs


def _chunks(messages: list[Message], records: int) -> Iterator[list[Message]]:
    """Messages in order, in chunks of about ``records`` records each (a chunk is published at once)."""
    chunk: list[Message] = []
    held = 0
    for message in messages:
        chunk.append(message)
        held += count_records(message[2])
        if held >= records:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _joined(records: list[Message]) -> Message:
    """One message holding these records (of one subject), in order."""
    if len(records) == 1:
        return records[0]
    ids = [record_id for _, record_id, _ in records]
    return records[0][0], message_id(ids), join_records([data for _, _, data in records])


def formed(records: list[Message], max_bytes: int) -> list[Message]:
    """Records as the messages that carry them: the same records and limit, the same messages."""
    return [_joined(run) for run in _runs(records, max_bytes)]


def _frame(message: Message) -> bytes:
    """How a message is kept in the spool."""
    subject, msg_id, data = message
    return subject.encode() + b"\n" + msg_id.encode() + b"\n" + data


def _unframe(frame: bytes) -> Message:
    subject, msg_id, data = frame.split(b"\n", 2)
    return subject.decode(), msg_id.decode(), data


class _AckWindow:
    """Pipelined JetStream publishing with one future per batch rather than per message.

    Every message of a batch is published with a reply subject ``<inbox>.<batch>.<n>``;
    one wildcard subscription counts the acks and resolves the batch when all are in.
    This is nats-py's ``publish_async`` without a future, a JSON parse and a PubAck per
    message, which roughly halves the client's cost per record (bench/capture_throughput.py).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.batches: dict[str, _PendingBatch] = {}
        self.next_batch = 0

    @classmethod
    async def open(cls, client: Client) -> _AckWindow:
        window = cls(client.new_inbox() + ".")
        await client.subscribe(window.prefix + "*.*", cb=window._on_ack)
        return window

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self.prefix) :].partition(".")[0]
        batch = self.batches.get(token)
        if batch is None:
            return  # a late ack of a batch that timed out (and was spooled): JetStream de-duplicates
        if (msg.headers and msg.headers.get("Status")) or (b'"error"' in msg.data and _is_error(msg.data)):
            batch.failure = (
                batch.failure or msg.data.decode(errors="replace") or "no JetStream stream answered"
            )
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.done.done():
            batch.done.set_result(None)

    async def publish(self, client: Client, messages: list[Message], ack_seconds: float) -> bool:
        self.next_batch += 1
        token = str(self.next_batch)
        batch = self.batches[token] = _PendingBatch(len(messages), asyncio.get_running_loop().create_future())
        try:
            reply = f"{self.prefix}{token}."
            for index, (subject, msg_id, data) in enumerate(messages):
                await client.publish(subject, data, reply=f"{reply}{index}", headers={"Nats-Msg-Id": msg_id})
            await asyncio.wait_for(batch.done, ack_seconds)
        except TimeoutError:
            raise TimeoutError(
                f"{batch.remaining} of {len(messages)} JetStream acks did not come in time"
            ) from None
        finally:
            del self.batches[token]
        if batch.failure:
            raise RuntimeError(f"JetStream refused a record: {batch.failure[:300]}")
        return True


def _is_error(data: bytes) -> bool:
    """A JetStream API error reply (parsed only when the bytes hint at one: acks are many)."""
    try:
        return "error" in json.loads(data)
    except ValueError:
        return True


@dataclass
class _PendingBatch:
    remaining: int
    done: asyncio.Future[None]
    failure: str = ""


@dataclass
class _Plan:
    """A batch the shipper sends: where it ends in the journal, the limit its messages were
    formed with, the held records still pending after it, and the held records it ships."""

    number: int
    end: Position
    limit: int
    pending: list[Position]
    flushed: list[Position]

    def entry(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def parse(cls, data: dict[str, Any]) -> _Plan:
        return cls(
            data["number"],
            Position(**data["end"]),
            data["limit"],
            [Position(**p) for p in data["pending"]],
            [Position(**p) for p in data["flushed"]],
        )


class PlanLog:
    """The shipper's plan: each batch noted before it goes out, and said done after."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / _PLAN_FILE
        self._fd: int | None = None

    def load(self) -> tuple[_Plan | None, _Plan | None]:
        """The last batch done, and the batch after it that was not (None, None: a new journal)."""
        done: _Plan | None = None
        unfinished: _Plan | None = None
        if self.path.exists():
            for frame in unpack_frames(self.path.read_bytes(), self.path):
                data = json.loads(frame)
                if "done" in data:
                    if unfinished is not None and unfinished.number == data["done"]:
                        done, unfinished = unfinished, None
                else:
                    unfinished = _Plan.parse(data)
        return done, unfinished

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, pack_frames([data]))

    def planned(self, plan: _Plan) -> None:
        self._append(plan.entry())

    def done(self, plan: _Plan) -> None:
        self._append(json.dumps({"done": plan.number}).encode())
        if os.fstat(self._fd or 0).st_size > _PLAN_COMPACT_BYTES:  # keep only the last one
            making = self.path.with_suffix(".making")
            making.write_bytes(pack_frames([plan.entry(), json.dumps({"done": plan.number}).encode()]))
            os.replace(making, self.path)
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class ShipperConfig:
    """What a shipper needs; handed to a shipper process whole (credentials never on its command line)."""

    endpoint: NatsEndpoint
    directory: Path  # the spool directory: the spool in it, the journal in its journal/
    live: str | None = None  # the writer that may still be writing (its segments are followed)
    stream: StreamSettings = field(default_factory=StreamSettings)
    batch_size: int = 512
    ack_timeout: float = 2.0
    retry_seconds: float = 1.0
    spool_max_bytes: int = 1 << 30
    linger_seconds: float = 0.02
    parent: int | None = None  # the writer's process: when it dies, the shipper finishes and stops

    @property
    def journal(self) -> Path:
        return self.directory / "journal"


class Shipper:
    def __init__(self, config: ShipperConfig) -> None:
        self.config = config
        self.stats = PublisherStats()
        self.reader = JournalReader(config.journal, config.live)
        self.plans = PlanLog(config.journal)
        self.spool: DiskSpool | None = None
        self._pending: dict[str, Entry] = {}  # held records, by id, until their final version
        self._plan_number = 0
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._acks: _AckWindow | None = None
        self._connector: asyncio.Task[None] | None = None
        self._spool_only = False
        self._board = StatsBoard(config.journal) if config.parent is not None else None

    @property
    def tenant(self) -> str | None:
        return self.config.endpoint.tenant

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def stop(self) -> None:
        """Finish now: what the journal holds goes to the disk spool, not to NATS, and the
        shipper stops (what a live writer adds after this waits in the journal for the next)."""
        self._spool_only = True

    async def run(self) -> None:
        """Ship until the live writer is gone and everything it wrote is shipped (or stop())."""
        lock = await self._lock()
        if lock is None:
            return
        try:
            self.spool = DiskSpool(self.config.directory, max_bytes=self.config.spool_max_bytes)
            self._connector = asyncio.create_task(self._connect(), name="call-log-connect")
            await self._resume()
            await self._follow()
        finally:
            await self._shutdown()
            os.close(lock)

    async def _lock(self) -> int | None:
        """This directory's shipper lock, once a shipper a killed gateway left has finished;
        None if stopped meanwhile (the journal then waits for the next shipper)."""
        while True:
            with contextlib.suppress(SpoolInUseError):
                return hold_lock(self.config.journal / "shipper.lock", "shipper")
            if self._spool_only:
                return None
            await asyncio.sleep(0.1)

    async def _resume(self) -> None:
        """Pick up where the last shipper on this directory left: its unfinished batch first."""
        done, unfinished = self.plans.load()
        if done is not None:
            self._plan_number = done.number
            self.reader.seek(done.end)
            for position in done.pending:
                entry = self.reader.entry_at(position)
                if entry is not None:
                    self._pending.setdefault(entry.record_id, entry)
        if unfinished is not None:
            self._plan_number = unfinished.number
            entries = self.reader.take(1 << 30, until=unfinished.end)
            flushed = [e for p in unfinished.flushed if (e := self.reader.entry_at(p)) is not None]
            await self._ship(entries, flushed, unfinished)

    async def _follow(self) -> None:
        config = self.config
        while True:
            self._write_stats()
            gone = self._writer_gone()  # looked at before reading: then nothing it wrote is missed
            entries = self.reader.take(config.batch_size)
            if entries and len(entries) < config.batch_size and config.linger_seconds:
                await asyncio.sleep(config.linger_seconds)  # a few more: publishing runs in few bursts
                if entries[-1].writer == self.reader.writer:
                    entries += self.reader.take(config.batch_size - len(entries))
            gone = gone or self.reader.live_gone
            # A held record's final version comes from its writer, or never: once that writer is
            # gone and all it wrote is read, the held version ships.
            flushed = [
                e for e in self._pending.values() if e.writer != self.reader.writer or (gone and not entries)
            ]
            if entries or flushed:
                await self._ship(entries, flushed)
                continue
            if gone:  # and everything shipped: no segment is needed any more
                self.reader.delete_before(Position(self.reader.position.segment + 1, 0))
                return
            if self._spool_only:  # stopped with its writer alive: the next shipper goes on from here
                return
            if self.spool is not None and not self.spool.is_empty():
                await self._replay()
            await asyncio.sleep(config.linger_seconds or 0.02)

    def _writer_gone(self) -> bool:
        """The live writer closed (its END is read) or its process died."""
        if self.config.parent is not None and not self.reader.live_gone and not _alive(self.config.parent):
            log.warning("call log: the publisher's process is gone; shipping what it left, then stopping")
            self.reader.live_gone = True
        return self.reader.live is None or self.reader.live_gone

    def _records(self, entries: list[Entry], flushed: list[Entry], again: bool) -> list[Message]:
        """What a batch ships: its records, a held one in its final version (or, when that will
        not come, as it was held); ``again``: a batch formed again at recovery, whole."""
        records: list[Message] = []
        for entry in entries:
            if entry.kind == HELD:
                self._pending.setdefault(entry.record_id, entry)
            elif entry.kind != END:
                self._pending.pop(entry.record_id, None)
                records.append((entry.subject, entry.record_id, entry.data))
        for entry in flushed:
            if self._pending.pop(entry.record_id, None) is not None or again:
                records.append((entry.subject, entry.record_id, entry.data))
        return records

    async def _ship(self, entries: list[Entry], flushed: list[Entry], plan: _Plan | None = None) -> None:
        records = self._records(entries, flushed, again=plan is not None)
        if plan is None:
            self._plan_number += 1
            limit = (self._nc.max_payload if self._nc is not None else 1 << 20) - _HEADER_ROOM
            pending = sorted(entry.position for entry in self._pending.values())
            end = self.reader.position
            plan = _Plan(self._plan_number, end, limit, pending, [e.position for e in flushed])
        self.plans.planned(plan)
        try:
            await self._send(formed(records, plan.limit), len(records))
        finally:
            self.plans.done(plan)
            live = [e for e in entries if e.writer == self.config.live and e.kind != END]
            self.stats.shipped += len(live)
            self.stats.shipped_bytes += sum(len(e.data) for e in live)
            self.reader.delete_before(min([plan.end, *plan.pending]))
            self._write_stats()

    async def _send(self, messages: list[Message], records: int) -> None:
        """Publish, or spool: in order behind what the spool holds, and when publishing fails."""
        spooling = False  # the batch's spool write began (its thread finishes it, cancelled or not)
        try:
            if self.spool is not None and not self.spool.is_empty() and not self._spool_only:
                await self._replay()
            publish = not self._spool_only and (self.spool is None or self.spool.is_empty())
            if publish and await self._publish(messages):
                self.stats.published += records
            else:
                spooling = True
                await self._spool(messages)
        except asyncio.CancelledError:  # stopping while a batch is in flight: keep it on disk
            if not spooling:  # (if it did reach JetStream, the replay is de-duplicated)
                await self._spool(messages)
            raise
        except Exception:  # the shipper must outlive any surprise; records go to disk
            log.exception("call log: unexpected publish failure; spooling %d records", records)
            await self._spool(messages)

    async def _connect(self) -> None:
        """Connect, retrying for as long as it takes; after that the client reconnects by itself."""
        client = await self.config.endpoint.connect(
            connect_timeout=1,
            reconnect_time_wait=min(self.config.retry_seconds, 2.0),
            max_reconnect_attempts=-1,  # the first connection too: retried until NATS answers
            error_cb=self._on_error,
        )
        self._js = client.jetstream(timeout=self.config.ack_timeout)
        self._nc = client

    async def _on_error(self, error: Exception) -> None:
        name = type(error).__name__
        if name not in self.stats.errors:  # say why, once per kind of error
            log.warning("call log: NATS at %s: %s: %s", self.config.endpoint, name, str(error)[:300])
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1

    async def _publish(self, messages: list[Message]) -> bool:
        """Publish and await every ack; False if any failed (the caller spools them all)."""
        if not messages:
            return True
        if self._nc is None and self._connector is not None:  # starting up: give it a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connector), self.config.ack_timeout)
        client = self._nc
        if self._js is None or client is None or not client.is_connected:
            return False
        try:
            if not self._stream_ready and self.tenant is None:  # a tenant may not manage the stream
                await ensure_stream(self._js, self.config.stream)
                self._stream_ready = True
            if self._acks is None:
                self._acks = await _AckWindow.open(client)
            return await self._acks.publish(client, messages, self.config.ack_timeout)
        except Exception as error:
            await self._on_error(error)
            return False

    async def _replay(self) -> None:
        """Move spooled records into JetStream, oldest first; stop at the first failure."""
        assert self.spool is not None
        for batch in self.spool.batches():
            messages = [_unframe(frame) for frame in batch.payloads]
            for chunk in _chunks(messages, self.config.batch_size):
                if not await self._publish(chunk):
                    return
            self.spool.done(batch)
            records = sum(count_records(data) for _, _, data in messages)
            self.stats.replayed += records
            log.info("call log: replayed %d spooled records", records)

    async def _spool(self, messages: list[Message]) -> None:
        """Append to the disk spool in a thread: its fsync must not stall the event loop."""
        if not messages or self.spool is None:
            return
        records = sum(count_records(data) for _, _, data in messages)
        try:
            await asyncio.to_thread(self.spool.append, [_frame(message) for message in messages])
            self.stats.spooled += records
        except (SpoolFullError, OSError) as error:
            self.stats.dropped += records
            log.error("call log: DROPPED %d records: %s", records, error)

    def _write_stats(self) -> None:
        """The figures, in memory; and for a publisher in another process, on its board."""
        self.stats.connected = self.connected
        self.stats.spool_bytes = self.spool.size_bytes() if self.spool is not None else 0
        if self._board is not None:
            self._board.write(self.stats)

    async def _shutdown(self) -> None:
        if self.spool is not None and not self.spool.is_empty() and self.connected and not self._spool_only:
            await self._replay()
        self._write_stats()
        if self._board is not None:
            self._board.close()
        self.plans.close()
        self.reader.close()
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(BaseException):
                await self._connector
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self.spool is not None:
            self.spool.close()


def _alive(pid: int) -> bool:
    return os.getppid() == pid


def main() -> None:
    """A shipper process: its config comes pickled on stdin from the publisher that started it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config: ShipperConfig = pickle.loads(sys.stdin.buffer.read())
    shipper = Shipper(config)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, shipper.stop)
        await shipper.run()

    asyncio.run(run())
