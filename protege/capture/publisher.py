"""Hand call records to the call log: a copy into the journal on the request path, nothing more.

``submit()`` never blocks on the network or the disk and never raises: the record's JSON is
written to the journal (:mod:`protege.capture.journal`: segment files, one ``pwrite``, so a
killed process loses none) and that is all the caller's event loop does. A shipper
(:mod:`protege.capture.shipper`) follows the journal and publishes its records to JetStream
in batches, spooling to disk when NATS is away. A gateway runs its shipper as a process of
its own (``shipper="process"``): batching, NATS, acks and the spool then take neither its
event loop nor its core. The listener SDK runs it as a task beside the writer (``"inline"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from protege.api.calls import CallRecord
from protege.capture.access import GATEWAY
from protege.capture.connection import NatsEndpoint, NatsTarget
from protege.capture.journal import HELD, RECORD, JournalWriter
from protege.capture.redaction import RedactingSink
from protege.capture.shipper import PublisherStats, Shipper, ShipperConfig, StatsBoard, StreamSettings
from protege.config import CurationSettings, Settings, load_settings

log = logging.getLogger(__name__)

ShipperMode = Literal["inline", "process"]


class CallLogPublisher:
    """Publishes as the identity of ``nats_url`` (an endpoint, or bare URLs for a NATS without
    authentication). A listener-SDK tenant's identity (:attr:`tenant`) publishes its own calls
    only: records of another tenant are refused here (dropped, logged), and the stream is left
    to the gateways and the curator to create.

    ``queue_max_bytes`` bounds the journal's records not yet shipped (past it, with the shipper
    stopped or a whole bound behind, records are dropped and counted); ``shipper`` runs the
    shipper as a task in this event loop (``"inline"``) or as a process of its own.
    """

    def __init__(
        self,
        nats_url: NatsTarget,
        spool_dir: Path,
        *,
        stream: StreamSettings | None = None,
        queue_max_bytes: int = 64 << 20,
        batch_size: int = 512,
        ack_timeout: float = 2.0,
        retry_seconds: float = 1.0,
        spool_max_bytes: int = 1 << 30,
        linger_seconds: float = 0.02,
        shipper: ShipperMode = "inline",
        segment_bytes: int = 4 << 20,
    ) -> None:
        self.endpoint = NatsEndpoint.of(nats_url)
        self.nats_url = str(self.endpoint)  # the servers only: never the credentials
        self.spool_dir = Path(spool_dir)
        self.journal = JournalWriter(
            self.spool_dir / "journal",
            segment_bytes=min(segment_bytes, queue_max_bytes),
            max_bytes=queue_max_bytes,
        )
        self.mode = shipper
        self.config = ShipperConfig(
            self.endpoint,
            self.spool_dir,
            live=self.journal.writer,
            stream=stream or StreamSettings(),
            batch_size=batch_size,
            ack_timeout=ack_timeout,
            retry_seconds=retry_seconds,
            spool_max_bytes=spool_max_bytes,
            linger_seconds=linger_seconds,
            parent=os.getpid() if shipper == "process" else None,
        )
        self.shipper: Shipper | None = None  # inline
        self._task: asyncio.Task[None] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._refused = 0  # records of another tenant than the identity's
        self._errors: dict[str, int] = {}
        self._shipped = PublisherStats()  # the shipper's figures, as last read
        self._board: StatsBoard | None = None  # where a shipper process writes them
        if shipper == "process":
            self._board = StatsBoard(self.journal.directory)
            self._board.write(self._shipped)  # not a former shipper's

    @classmethod
    def from_settings(cls, settings: Settings, shipper: ShipperMode = "process") -> CallLogPublisher:
        log_settings = settings.call_log
        return cls(
            NatsEndpoint.from_settings(settings, GATEWAY),
            settings.spool_dir,
            stream=StreamSettings.from_settings(settings),
            queue_max_bytes=log_settings.queue_max_bytes,
            batch_size=log_settings.batch_size,
            linger_seconds=log_settings.linger_ms / 1000,
            spool_max_bytes=log_settings.spool_max_bytes,
            shipper=shipper,
        )

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start shipping; NATS being down now is fine: records spool until it is back.

        Records a killed predecessor left in the journal are shipped first (JetStream drops
        those that had arrived)."""
        if self.mode == "inline":
            self.shipper = Shipper(self.config)
            self._task = asyncio.create_task(self.shipper.run(), name="call-log-shipper")
        else:
            self._spawn()
            self._watch = asyncio.create_task(self._supervise(), name="call-log-shipper-watch")

    def _spawn(self) -> None:
        """The shipper process: its own session (a terminal's Ctrl-C is the gateway's to handle),
        its config on stdin (the credentials never on a command line)."""
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from protege.capture.shipper import main; main()"],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(pickle.dumps(self.config))
        self._process.stdin.close()

    async def _supervise(self) -> None:
        """Start the shipper process again if it stops while this publisher writes."""
        while True:
            await asyncio.sleep(1.0)
            if self._process is not None and self._process.poll() is not None and not self.journal.closed:
                self._errors["ShipperExited"] = self._errors.get("ShipperExited", 0) + 1
                code = self._process.returncode
                log.error("call log: the shipper process exited (%s); starting it again", code)
                self._spawn()

    async def close(self, flush_seconds: float = 10.0) -> None:
        """Ship what the journal holds (to JetStream, or past ``flush_seconds`` to the spool) and stop."""
        self.journal.close()  # the shipper ships the rest, then stops
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._task is not None and self.shipper is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_seconds)
            except TimeoutError:
                log.warning("call log: flush timed out; spooling what the journal holds")
                self.shipper.stop()
                await self._task
        if self._process is not None and not await self._exited(flush_seconds):
            log.warning("call log: flush timed out; spooling what the journal holds")
            self._process.send_signal(signal.SIGTERM)  # the rest to the spool: quick
            if not await self._exited(min(flush_seconds, 5)):
                self._process.kill()  # what it held stays in the journal, for the next start
                await self._exited(5)
        if self._board is not None:
            self._read_stats()  # its last figures
            self._board.close()
            self._board = None

    async def _exited(self, seconds: float) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + seconds
        while self._process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # --- figures -----------------------------------------------------------------------
    def _read_stats(self) -> PublisherStats:
        if self.shipper is not None:
            return self.shipper.stats
        if self._board is not None:
            self._shipped = self._board.read() or self._shipped
        return self._shipped

    @property
    def stats(self) -> PublisherStats:
        shipped = self._read_stats()
        errors = dict(shipped.errors)
        for name, count in self._errors.items():
            errors[name] = errors.get(name, 0) + count
        return PublisherStats(
            published=shipped.published,
            spooled=shipped.spooled,
            replayed=shipped.replayed,
            dropped=shipped.dropped + self.journal.dropped + self._refused,
            errors=errors,
            connected=shipped.connected,
            spool_bytes=shipped.spool_bytes,
            shipped=shipped.shipped,
            shipped_bytes=shipped.shipped_bytes,
        )

    @property
    def tenant(self) -> str | None:
        """The tenant whose calls alone this publisher's identity may publish; None: any tenant's."""
        return self.endpoint.tenant

    @property
    def queue_depth(self) -> int:
        """Records in the journal not yet shipped."""
        return max(0, self.journal.records - self._read_stats().shipped)

    @property
    def queue_bytes(self) -> int:
        """Bytes of records in the journal not yet shipped."""
        return max(0, self.journal.bytes - self._read_stats().shipped_bytes)

    @property
    def connected(self) -> bool:
        return self._read_stats().connected

    @property
    def spool_bytes(self) -> int:
        return self._read_stats().spool_bytes

    # --- the request path --------------------------------------------------------------
    def submit(self, record: CallRecord) -> None:
        """Hand a record over; never blocks on the network or a disk, never raises."""
        if self.tenant is not None and record.tenant != self.tenant:
            self._refused += 1
            self._errors["TenantMismatch"] = self._errors.get("TenantMismatch", 0) + 1
            log.error(
                "call log: record %s is tenant %s's, but these NATS credentials are tenant %s's: dropped",
                record.id,
                record.tenant,
                self.tenant,
            )
            return
        self._keep(RECORD, record)

    def hold(self, record: CallRecord) -> None:
        """Journal a record that will be submitted later, complete (a shadow answer pending):
        if the process dies meanwhile, the record as it is now still reaches the log."""
        self._keep(HELD, record)

    def _keep(self, kind: bytes, record: CallRecord) -> None:
        try:
            self.journal.append(kind, record.subject, record.id, record.to_json())
        except (OSError, ValueError) as error:  # a full disk, a closed journal: never the call's failure
            self.journal.dropped += 1
            log.error("call log: record %s not journaled (%s): dropped", record.id, error)


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
