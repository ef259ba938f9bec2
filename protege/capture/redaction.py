"""Redaction at capture: a tenant's calls are cleaned of PII before any record of them is kept.

For a tenant whose curation policy sets ``redact_at_capture``, the gateway — and the listener
SDK's :class:`~protege.capture.publisher.BackgroundPublisher` — hands its records to a
:class:`RedactingSink` in front of the publisher: each record goes through the same
redactor as curation (:func:`protege.pii.redact_record`, the detectors
``curation.pii_detector`` names) in a worker thread, and only the redacted record reaches the
publisher, so the journal, the disk spool, JetStream and, later, the dead-letter stream never
see the raw text. The teacher still gets the call as the caller sent it; what is logged, and
so what training and evaluation see, has placeholders instead.

A record being redacted when the process is killed is lost (it was never journaled: that is
the point); one whose redaction fails is dropped and logged, never written raw.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from protege.api.calls import CallRecord
from protege.capture.recorder import RecordSink
from protege.config import CurationSettings

if TYPE_CHECKING:
    from protege.pii import PiiBackend

log = logging.getLogger(__name__)


class RedactingSink:
    """A :class:`RecordSink` that redacts the records of the tenants that ask for it, off the
    event loop, then hands them to ``sink`` (``submit``, and ``hold`` when ``sink`` has it)."""

    def __init__(
        self, sink: RecordSink, curation: CurationSettings, *, backend: PiiBackend | None = None
    ) -> None:
        self.sink = sink
        self.curation = curation
        self._backend = backend
        # One worker: records are redacted in the order they came (a held record before its
        # completed self), and the NER model is used by one thread at a time anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protege-redact")
        self._executor.submit(self.backend)  # load the detectors now, not on the first call
        self._pending: set[asyncio.Future[CallRecord]] = set()
        self.redacted = 0
        self.dropped = 0

    @classmethod
    def wrap(cls, curation: CurationSettings, sink: RecordSink | None) -> Any:
        """``sink`` behind a RedactingSink when any tenant redacts at capture, else ``sink`` itself."""
        wanted = curation.default.redact_at_capture or any(
            curation.for_tenant(tenant).redact_at_capture for tenant in curation.tenants
        )
        return cls(sink, curation) if sink is not None and wanted else sink

    @property
    def tenant(self) -> str | None:
        """The tenant the sink's credentials bind it to (the listener SDK reads it), if any."""
        return getattr(self.sink, "tenant", None)

    def backend(self) -> PiiBackend:
        if self._backend is None:
            from protege.pii import backend_from_settings

            self._backend = backend_from_settings(self.curation)
        return self._backend

    def wants(self, tenant: str) -> bool:
        return self.curation.for_tenant(tenant).redact_at_capture

    def submit(self, record: CallRecord) -> None:
        """Hand a record over (from the event loop); never blocks, never raises."""
        if self.wants(record.tenant):
            self._redact_then(record, self.sink.submit)
        else:
            self.sink.submit(record)

    def hold(self, record: CallRecord) -> None:
        """The sink's ``hold`` (journal a record its extras will complete), redacted first."""
        hold = getattr(self.sink, "hold", None)
        if hold is None:
            return
        if self.wants(record.tenant):
            self._redact_then(record, hold)
        else:
            hold(record)

    def _redact_then(self, record: CallRecord, then: Any) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._redact, record)
        self._pending.add(future)

        def done(future: asyncio.Future[CallRecord]) -> None:
            self._pending.discard(future)
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                self.dropped += 1
                log.error("call log: redacting record %s failed, dropped unwritten: %r", record.id, error)
                return
            self.redacted += 1
            then(future.result())

        future.add_done_callback(done)

    def _redact(self, record: CallRecord) -> CallRecord:
        from protege.pii import redact_record

        return redact_record(record, self.backend())

    async def drain(self) -> None:
        """Wait until every record handed over has reached the sink (at shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
            await asyncio.sleep(0)  # let the done callbacks run

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
