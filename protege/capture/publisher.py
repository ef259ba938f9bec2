"""Publish call records to JetStream off the request path, spooling to disk when NATS is away.

``submit()`` never blocks on the network or the disk and never raises: the record is written
to the journal (so a killed process loses none, see :mod:`protege.capture.journal`) and goes
into a queue bounded in records (``queue_size``) and in bytes (``queue_max_bytes``); past
either bound it spills to the disk spool instead. One worker task takes what the queue holds
(up to ``batch_size`` records) and publishes it as one message per subject
(:mod:`protege.capture.wire`), whose ``Nats-Msg-Id`` comes from its records' ids (so
JetStream drops the duplicates a retry could make). When a publish fails, the batch and
everything after it goes to the disk spool, in order, until the spool has been replayed
into JetStream. Spool writes (and their ``fsync``) run in a thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from protege.api.calls import SUBJECT_PREFIX, CallRecord
from protege.capture.access import GATEWAY
from protege.capture.connection import NatsEndpoint, NatsTarget
from protege.capture.journal import Journal
from protege.capture.redaction import RedactingSink
from protege.capture.spool import DiskSpool, SpoolFullError
from protege.capture.wire import SEPARATOR, count_records, join_records, message_id
from protege.config import CurationSettings, Settings, load_settings

log = logging.getLogger(__name__)


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


Message = tuple[str, str, bytes]  # subject, Nats-Msg-Id, payload: one record or a batch of them
# NATS refuses a message past the server's max_payload (1 MiB by default); headers count too.
_HEADER_ROOM = 4096


def _message(record: CallRecord) -> Message:
    return record.subject, record.id, record.to_json()


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


class CallLogPublisher:
    """Publishes as the identity of ``nats_url`` (an endpoint, or bare URLs for a NATS without
    authentication). A listener-SDK tenant's identity (:attr:`tenant`) publishes its own calls
    only: records of another tenant are refused here (dropped, logged), and the stream is left
    to the gateways and the curator to create."""

    def __init__(
        self,
        nats_url: NatsTarget,
        spool_dir: Path,
        *,
        stream: StreamSettings | None = None,
        queue_size: int = 50_000,
        queue_max_bytes: int = 64 << 20,
        batch_size: int = 512,
        ack_timeout: float = 2.0,
        retry_seconds: float = 1.0,
        spool_max_bytes: int = 1 << 30,
        linger_seconds: float = 0.02,
    ) -> None:
        self.endpoint = NatsEndpoint.of(nats_url)
        self.nats_url = str(self.endpoint)  # the servers only: never the credentials
        self.stream = stream or StreamSettings()
        self.spool = DiskSpool(spool_dir, max_bytes=spool_max_bytes)
        self.stats = PublisherStats()
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.retry_seconds = retry_seconds
        # Wait this long for a batch to fill: the publishing work then runs in few bursts
        # rather than right after every call, where it would delay the next one.
        self.linger_seconds = linger_seconds
        self.journal = Journal(Path(spool_dir) / "journal")
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_size)
        self.queue_max_bytes = queue_max_bytes
        self._queued_bytes = 0  # payload bytes in the queue
        # Records past the queue's bounds, on their way to the spool (written by a thread).
        self._spill: list[Message] = []
        self._spill_bytes = 0  # of those, and of the ones being written
        self._spiller: asyncio.Task[None] | None = None
        self._spill_dropping = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._worker: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._acks: _AckWindow | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLogPublisher:
        log_settings = settings.call_log
        return cls(
            NatsEndpoint.from_settings(settings, GATEWAY),
            settings.spool_dir,
            stream=StreamSettings.from_settings(settings),
            queue_size=log_settings.queue_size,
            queue_max_bytes=log_settings.queue_max_bytes,
            batch_size=log_settings.batch_size,
            linger_seconds=log_settings.linger_ms / 1000,
            spool_max_bytes=log_settings.spool_max_bytes,
        )

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start publishing; NATS being down now is fine: records spool until it is back.

        Records a killed predecessor left in the journal go to the spool first (replayed like
        any spooled record; JetStream drops those that had arrived).
        """
        recovered = await asyncio.to_thread(self.journal.recover, self._spool_recovered)
        if recovered:
            self.stats.spooled += recovered
            log.warning("call log: recovered %d journaled records of a stopped publisher", recovered)
        self._connector = asyncio.create_task(self._connect(), name="call-log-connect")
        self._worker = asyncio.create_task(self._run(), name="call-log-publisher")

    def _spool_recovered(self, groups: list[list[bytes]]) -> None:
        """A killed predecessor's records, each batch it formed as that same message again."""
        self.spool.append([_frame(_joined([_unframe(frame) for frame in group])) for group in groups])

    async def _connect(self) -> None:
        """Connect, retrying for as long as it takes; after that the client reconnects by itself."""
        client = await self.endpoint.connect(
            connect_timeout=1,
            reconnect_time_wait=min(self.retry_seconds, 2.0),
            max_reconnect_attempts=-1,  # the first connection too: retried until NATS answers
            error_cb=self._on_error,
        )
        self._js = client.jetstream(timeout=self.ack_timeout)
        self._nc = client

    @property
    def tenant(self) -> str | None:
        """The tenant whose calls alone this publisher's identity may publish; None: any tenant's."""
        return self.endpoint.tenant

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def queue_bytes(self) -> int:
        """Payload bytes held in memory: the queue's, and those on their way to the spool."""
        return self._queued_bytes + self._spill_bytes

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def close(self, flush_seconds: float = 10.0) -> None:
        """Flush the queue (to JetStream, or to the spool) and disconnect."""
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._queue.join(), flush_seconds)
            except TimeoutError:
                log.warning("call log: flush timed out; spooling %d queued records", self._queue.qsize())
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        drained = self._drain_queue()
        await self._spool(self._formed(drained))
        for message in drained:
            self.journal.done(message[1])
        if self._spiller is not None:
            await self._spiller  # spilled records reach the spool before the journal forgets them
        self.journal.close()
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(BaseException):
                await self._connector
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self.spool.close()

    async def _on_error(self, error: Exception) -> None:
        name = type(error).__name__
        if name not in self.stats.errors:  # say why, once per kind of error
            log.warning("call log: NATS at %s: %s: %s", self.nats_url, name, str(error)[:300])
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1

    # --- the request path --------------------------------------------------------------
    def submit(self, record: CallRecord) -> None:
        """Hand a record over; never blocks on the network, never raises.

        Call it from the publisher's event loop (use :class:`BackgroundPublisher` from
        other threads).
        """
        if self.tenant is not None and record.tenant != self.tenant:
            self.stats.dropped += 1
            self.stats.errors["TenantMismatch"] = self.stats.errors.get("TenantMismatch", 0) + 1
            log.error(
                "call log: record %s is tenant %s's, but these NATS credentials are tenant %s's: dropped",
                record.id,
                record.tenant,
                self.tenant,
            )
            return
        message = _message(record)
        self.hold_message(message)
        size = len(message[2])
        if self._queued_bytes + size > self.queue_max_bytes and not self._queue.empty():
            self._spill_over(message)  # past the byte bound (a record alone always fits)
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._spill_over(message)  # backpressure goes to disk, not to the caller
            return
        self._queued_bytes += size

    def _spill_over(self, message: Message) -> None:
        """Send a record past the queue's bounds to the spool, written by a thread off the loop."""
        size = len(message[2])
        if self._spill_bytes and self._spill_bytes + size > self.queue_max_bytes:
            # the disk is a whole queue behind (it stalls): memory stays bounded, the call is not failed
            self.stats.dropped += 1
            self.journal.done(message[1])
            if not self._spill_dropping:  # once per stall, not once per record
                self._spill_dropping = True
                log.error(
                    "call log: DROPPING records: the spool's disk is %d bytes behind (queue_max_bytes)",
                    self._spill_bytes,
                )
            return
        self._spill.append(message)
        self._spill_bytes += size
        if self._spiller is None or self._spiller.done():
            self._spiller = asyncio.ensure_future(self._spill_to_disk())

    async def _spill_to_disk(self) -> None:
        while self._spill:
            records, self._spill = self._spill, []
            try:
                await self._spool(self._formed(records))  # all that came meanwhile: one write, one fsync
            except Exception:  # never lost without a word: counted and logged
                self.stats.dropped += len(records)
                log.exception("call log: DROPPED %d records: spooling them failed", len(records))
            finally:
                self._spill_bytes -= sum(len(record[2]) for record in records)
                self._spill_dropping = False
                for record in records:
                    self.journal.done(record[1])

    def hold(self, record: CallRecord) -> None:
        """Journal a record that will be submitted later, complete (a shadow answer pending):
        if the process dies meanwhile, the record as it is now still reaches the log."""
        self.hold_message(_message(record))

    def hold_message(self, message: Message) -> None:
        try:
            self.journal.write(message[1], _frame(message))
        except OSError as error:  # a full disk must not fail the call: the record is still queued
            log.error("call log: journal write failed (%s); record %s is in memory only", error, message[1])

    # --- the worker --------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            records = await self._next_batch()
            messages = self._formed(records)
            spooling = False  # the batch's spool write began (its thread finishes it, cancelled or not)
            try:
                if not self.spool.is_empty():
                    await self._replay()
                if self.spool.is_empty() and await self._publish(messages):
                    self.stats.published += len(records)
                else:
                    spooling = True
                    await self._spool(messages)
            except asyncio.CancelledError:  # closing while a batch is in flight: keep it on disk
                if not spooling:  # (if it did reach JetStream, the replay is de-duplicated)
                    await self._spool(messages)
                raise
            except Exception:  # the worker must outlive any surprise; records go to disk
                log.exception("call log: unexpected publish failure; spooling %d records", len(records))
                await self._spool(messages)
            finally:
                for record in records:
                    self.journal.done(record[1])
                    self._queue.task_done()

    def _formed(self, records: list[Message]) -> list[Message]:
        """Records as the messages that carry them, each batch's records journaled as one first."""
        limit = (self._nc.max_payload if self._nc is not None else 1 << 20) - _HEADER_ROOM
        runs = _runs(records, limit)
        for run in runs:
            if len(run) > 1:
                try:
                    self.journal.batched([record_id for _, record_id, _ in run])
                except OSError as error:  # a full disk: a recovery could then duplicate, never lose
                    log.error("call log: journal write failed (%s)", error)
        return [_joined(run) for run in runs]

    async def _next_batch(self) -> list[Message]:
        if self.spool.is_empty():
            messages = [self._took(await self._queue.get())]
        else:  # wake up regularly to retry the spool even when no new call comes
            try:
                messages = [self._took(await asyncio.wait_for(self._queue.get(), self.retry_seconds))]
            except TimeoutError:
                return []
        if self.linger_seconds and self._queue.qsize() < self.batch_size - 1:
            await asyncio.sleep(self.linger_seconds)
        while len(messages) < self.batch_size:
            try:
                messages.append(self._took(self._queue.get_nowait()))
            except asyncio.QueueEmpty:
                break
        return messages

    def _took(self, message: Message) -> Message:
        """A message out of the queue: its bytes no longer count against queue_max_bytes."""
        self._queued_bytes -= len(message[2])
        return message

    def _drain_queue(self) -> list[Message]:
        messages = []
        while True:
            try:
                messages.append(self._took(self._queue.get_nowait()))
                self._queue.task_done()
            except asyncio.QueueEmpty:
                return messages

    async def _publish(self, messages: list[Message]) -> bool:
        """Publish and await every ack; False if any failed (the caller spools them all)."""
        if not messages:
            return True
        if self._nc is None and self._connector is not None:  # starting up: give it a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connector), self.ack_timeout)
        client = self._nc
        if self._js is None or client is None or not client.is_connected:
            return False
        try:
            if not self._stream_ready and self.tenant is None:  # a tenant may not manage the stream
                await ensure_stream(self._js, self.stream)
                self._stream_ready = True
            if self._acks is None:
                self._acks = await _AckWindow.open(client)
            return await self._acks.publish(client, messages, self.ack_timeout)
        except Exception as error:
            await self._on_error(error)
            return False

    async def _replay(self) -> None:
        """Move spooled records into JetStream, oldest first; stop at the first failure."""
        for batch in self.spool.batches():
            messages = [_unframe(frame) for frame in batch.payloads]
            for chunk in _chunks(messages, self.batch_size):
                if not await self._publish(chunk):
                    return
            self.spool.done(batch)
            records = sum(count_records(data) for _, _, data in messages)
            self.stats.replayed += records
            log.info("call log: replayed %d spooled records", records)

    async def _spool(self, messages: list[Message]) -> None:
        """Append to the disk spool in a thread: its fsync must not stall the event loop."""
        if not messages:
            return
        records = sum(count_records(data) for _, _, data in messages)
        try:
            await asyncio.to_thread(self.spool.append, [_frame(message) for message in messages])
            self.stats.spooled += records
        except (SpoolFullError, OSError) as error:
            self.stats.dropped += records
            log.error("call log: DROPPED %d records: %s", records, error)


class BackgroundPublisher:
    """A :class:`CallLogPublisher` on its own thread and event loop, for synchronous code.

    ``submit()`` is thread-safe and returns at once. Used by the listener SDK, where the
    caller's code may be synchronous or run its own event loop.

    ``curation``: the policies that say which tenants redact at capture (``redact_at_capture``),
    as the gateway reads them; None reads Protégé's settings (``PROTEGE_*`` variables, the
    config file). A tenant that redacts at capture has its records redacted in a worker thread
    before the journal, the spool or JetStream see them (:mod:`protege.capture.redaction`).
    """

    def __init__(
        self,
        nats_url: NatsTarget,
        spool_dir: Path,
        *,
        curation: CurationSettings | None = None,
        **options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self.publisher = CallLogPublisher(nats_url, spool_dir, **options)
        self._sink = RedactingSink.wrap(curation or load_settings().curation, self.publisher)
        self._thread = threading.Thread(target=self._loop.run_forever, name="protege-call-log", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.publisher.start(), self._loop).result()
        self._closed = False

    @property
    def stats(self) -> PublisherStats:
        return self.publisher.stats

    @property
    def tenant(self) -> str | None:
        return self.publisher.tenant

    def submit(self, record: CallRecord) -> None:
        if self._closed:
            raise RuntimeError("this BackgroundPublisher is closed; create a new one")
        self._loop.call_soon_threadsafe(self._sink.submit, record)

    def close(self, flush_seconds: float = 10.0) -> None:
        """Flush (records being redacted, then to JetStream or the spool), stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        future = asyncio.run_coroutine_threadsafe(self._flush(flush_seconds), self._loop)
        future.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _flush(self, flush_seconds: float) -> None:
        if isinstance(self._sink, RedactingSink):
            try:
                await asyncio.wait_for(self._sink.drain(), flush_seconds)
            except TimeoutError:
                log.error("call log: records still being redacted after %.0f s are lost", flush_seconds)
            self._sink.close()
        await self.publisher.close(flush_seconds)

    def __enter__(self) -> BackgroundPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
