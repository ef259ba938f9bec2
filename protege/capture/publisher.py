"""Publish call records to JetStream off the request path, spooling to disk when NATS is away.

``submit()`` never blocks on the network and never raises: the record goes into a bounded
queue; one worker task publishes batches with ``Nats-Msg-Id`` = record id (so JetStream
drops the duplicates a retry could make). When a publish fails, the batch and everything
after it goes to the disk spool, in order, until the spool has been replayed into JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from protege.api.calls import SUBJECT_PREFIX, CallRecord
from protege.capture.spool import DiskSpool, SpoolFullError
from protege.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    name: str = "PROTEGE_CALLS"
    subjects: tuple[str, ...] = (f"{SUBJECT_PREFIX}.>",)
    max_age_seconds: float = 30 * 86400
    max_bytes: int = -1
    # Must outlast the longest outage a spool can bridge, or a replay could duplicate.
    duplicate_window_seconds: float = 24 * 3600

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=StorageType.FILE,
            max_age=self.max_age_seconds,
            max_bytes=self.max_bytes,
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


def _frame(subject: str, msg_id: str, data: bytes) -> bytes:
    return subject.encode() + b"\n" + msg_id.encode() + b"\n" + data


def _record_frame(record: CallRecord) -> bytes:
    return _frame(record.subject, record.id, record.to_json())


def _unframe(frame: bytes) -> tuple[str, str, bytes]:
    subject, msg_id, data = frame.split(b"\n", 2)
    return subject.decode(), msg_id.decode(), data


class CallLogPublisher:
    def __init__(
        self,
        nats_url: str,
        spool_dir: Path,
        *,
        stream: StreamSettings | None = None,
        queue_size: int = 50_000,
        batch_size: int = 512,
        ack_timeout: float = 2.0,
        retry_seconds: float = 1.0,
        spool_max_bytes: int = 1 << 30,
    ) -> None:
        self.nats_url = nats_url
        self.stream = stream or StreamSettings()
        self.spool = DiskSpool(spool_dir, max_bytes=spool_max_bytes)
        self.stats = PublisherStats()
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.retry_seconds = retry_seconds
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue(maxsize=queue_size)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._worker: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLogPublisher:
        log_settings = settings.call_log
        stream = StreamSettings(
            name=log_settings.stream,
            max_age_seconds=log_settings.max_age_days * 86400,
            max_bytes=log_settings.max_bytes,
            duplicate_window_seconds=log_settings.duplicate_window_hours * 3600,
        )
        return cls(
            settings.nats_url,
            settings.spool_dir,
            stream=stream,
            queue_size=log_settings.queue_size,
            batch_size=log_settings.batch_size,
            spool_max_bytes=log_settings.spool_max_bytes,
        )

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start publishing; NATS being down now is fine: records spool until it is back."""
        self._connector = asyncio.create_task(self._connect(), name="call-log-connect")
        self._worker = asyncio.create_task(self._run(), name="call-log-publisher")

    async def _connect(self) -> None:
        """Connect, retrying for as long as it takes; after that the client reconnects by itself."""
        client = await nats.connect(
            self.nats_url.split(","),
            connect_timeout=1,
            reconnect_time_wait=min(self.retry_seconds, 2.0),
            max_reconnect_attempts=-1,  # the first connection too: retried until NATS answers
            error_cb=self._on_error,
        )
        self._js = client.jetstream(timeout=self.ack_timeout)
        self._nc = client

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

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
        self._spool_frames(self._drain_queue())
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
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1

    # --- the request path --------------------------------------------------------------
    def submit(self, record: CallRecord) -> None:
        """Hand a record over; never blocks on the network, never raises.

        Call it from the publisher's event loop (use :class:`BackgroundPublisher` from
        other threads). Serializing happens in the worker, off the caller's path.
        """
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._spool_frames([_record_frame(record)])  # backpressure goes to disk, not to the caller

    # --- the worker --------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            frames = [_record_frame(record) for record in await self._next_batch()]
            try:
                if not self.spool.is_empty():
                    await self._replay()
                if self.spool.is_empty() and await self._publish(frames):
                    self.stats.published += len(frames)
                else:
                    self._spool_frames(frames)
            except Exception:  # the worker must outlive any surprise; records go to disk
                log.exception("call log: unexpected publish failure; spooling %d records", len(frames))
                self._spool_frames(frames)
            finally:
                for _ in frames:
                    self._queue.task_done()

    async def _next_batch(self) -> list[CallRecord]:
        if self.spool.is_empty():
            records = [await self._queue.get()]
        else:  # wake up regularly to retry the spool even when no new call comes
            try:
                records = [await asyncio.wait_for(self._queue.get(), self.retry_seconds)]
            except TimeoutError:
                return []
        while len(records) < self.batch_size:
            try:
                records.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return records

    def _drain_queue(self) -> list[bytes]:
        frames = []
        while True:
            try:
                frames.append(_record_frame(self._queue.get_nowait()))
                self._queue.task_done()
            except asyncio.QueueEmpty:
                return frames

    async def _publish(self, frames: list[bytes]) -> bool:
        """Publish and await every ack; False if any failed (the caller spools them all)."""
        if not frames:
            return True
        if self._nc is None and self._connector is not None:  # starting up: give it a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._connector), self.ack_timeout)
        if self._js is None or not self.connected:
            return False
        try:
            if not self._stream_ready:
                await ensure_stream(self._js, self.stream)
                self._stream_ready = True
            acks: list[asyncio.Future[Any]] = []
            try:
                for frame in frames:  # pipelined: all sent, then all acks awaited together
                    subject, msg_id, data = _unframe(frame)
                    acks.append(await self._js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}))
                done, pending = await asyncio.wait(acks, timeout=self.ack_timeout)
            finally:
                for future in acks:
                    if not future.done():
                        future.cancel()  # frees its slot in the client's pending-ack window
        except Exception as error:
            await self._on_error(error)
            return False
        failures = [future.exception() for future in done if future.exception() is not None]
        if pending:
            await self._on_error(TimeoutError(f"{len(pending)} JetStream acks did not come in time"))
        elif failures:
            await self._on_error(failures[0])  # type: ignore[arg-type]
        return not (failures or pending)

    async def _replay(self) -> None:
        """Move spooled records into JetStream, oldest first; stop at the first failure."""
        for batch in self.spool.batches():
            for start in range(0, len(batch.payloads), self.batch_size):
                chunk = batch.payloads[start : start + self.batch_size]
                if not await self._publish(chunk):
                    return
            self.spool.done(batch)
            self.stats.replayed += len(batch.payloads)
            log.info("call log: replayed %d spooled records", len(batch.payloads))

    def _spool_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        try:
            self.spool.append(frames)
            self.stats.spooled += len(frames)
        except (SpoolFullError, OSError) as error:
            self.stats.dropped += len(frames)
            log.error("call log: DROPPED %d records: %s", len(frames), error)


class BackgroundPublisher:
    """A :class:`CallLogPublisher` on its own thread and event loop, for synchronous code.

    ``submit()`` is thread-safe and returns at once. Used by the listener SDK, where the
    caller's code may be synchronous or run its own event loop.
    """

    def __init__(self, nats_url: str, spool_dir: Path, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self.publisher = CallLogPublisher(nats_url, spool_dir, **options)
        self._thread = threading.Thread(target=self._loop.run_forever, name="protege-call-log", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.publisher.start(), self._loop).result()
        self._closed = False

    @property
    def stats(self) -> PublisherStats:
        return self.publisher.stats

    def submit(self, record: CallRecord) -> None:
        if self._closed:
            raise RuntimeError("this BackgroundPublisher is closed; create a new one")
        self._loop.call_soon_threadsafe(self.publisher.submit, record)

    def close(self, flush_seconds: float = 10.0) -> None:
        """Flush (to JetStream or the spool), stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        future = asyncio.run_coroutine_threadsafe(self.publisher.close(flush_seconds), self._loop)
        future.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BackgroundPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
