"""The curation consumer (S2): call log → filtered, de-duplicated, PII-free examples in the store.

A durable JetStream pull consumer reads call records in batches (a message holds one or
more records, :mod:`protege.capture.wire`). Each record is checked (failed, empty,
truncated, over-long calls are dropped), redacted, and de-duplicated; the kept examples are
written to the artifact store under a key made from their content, and only then are their
messages acknowledged. So a crash at any point is harmless: unacknowledged
records come back, and writing an example again writes the same object under the same
key. Records that are not readable (bad JSON, unknown schema version, missing fields) are
counted, logged and parked on the dead-letter subject, then acknowledged: they never stop
the consumer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from protege.api.calls import SUBJECT_PREFIX, CallRecord
from protege.capture.access import CURATOR, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT
from protege.capture.connection import NatsEndpoint, NatsTarget
from protege.capture.shipper import StreamSettings, ensure_stream
from protege.capture.wire import records_in_message
from protege.config import CurationSettings, Settings
from protege.pii import Finding, PiiBackend, RecordRedaction, backend_from_settings
from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore
from protege.tasks.examples import DAY_MS, Example, example_from_record
from protege.training.curation.filters import (
    NearDuplicateIndex,
    dedup_text,
    exact_key,
    reject_reason,
    teacher_view,
)

log = logging.getLogger(__name__)

EXAMPLES_AREA = "examples"


def tenant_prefix(tenant: str) -> str:
    """Object-key prefix of a tenant's examples (keys are lower-case; tenants need not be)."""
    return f"{tenant.lower()}-{zlib.crc32(tenant.encode()) & 0xFFFF:04x}."


def _no_pii(text: str) -> list[Finding]:
    return []


class ExampleStore:
    """Curated examples in the artifact store, one object per distinct example."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @staticmethod
    def key(example: Example) -> str:
        text = dedup_text(example.user_text, json.dumps(example.answer, sort_keys=True))
        return tenant_prefix(example.tenant) + exact_key(example.system_prompt + "\n" + text)

    def has(self, key: str) -> bool:
        return self.store.has_object(EXAMPLES_AREA, key)

    def put(self, key: str, example: Example) -> None:
        self.store.put_object(EXAMPLES_AREA, key, example.model_dump_json().encode())

    def keys(self, tenant: str | None = None) -> list[str]:
        return self.store.list_objects(EXAMPLES_AREA, tenant_prefix(tenant) if tenant else "")

    def load(self, tenant: str | None = None) -> list[Example]:
        return [example for _, example in self._read(self.keys(tenant))]

    def _read(self, keys: list[str]) -> Iterator[tuple[str, Example]]:
        for key in keys:
            try:
                data = self.store.get_object(EXAMPLES_AREA, key)
            except ArtifactNotFoundError:  # pruned since it was listed
                continue
            yield key, Example.model_validate_json(data)

    def prune(self, max_age_days: Callable[[str], float], now_ms: int) -> Counter[str]:
        """Delete the examples whose call is older than its tenant's ``max_age_days``; how many, by tenant.

        An example's age comes from its call's UUIDv7 id; one with an id of another kind is kept.
        """
        pruned: Counter[str] = Counter()
        for key, example in self._read(self.keys()):
            logged = example.logged_at_ms
            if logged is not None and logged < now_ms - max_age_days(example.tenant) * DAY_MS:
                self.store.delete_object(EXAMPLES_AREA, key)
                pruned[example.tenant] += 1
        return pruned


@dataclass
class CurationStats:
    seen: int = 0
    kept: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    dead_lettered: int = 0
    expired: int = 0  # deleted from the store past their tenant's retention_days
    rejected: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)


class Curator:
    def __init__(
        self,
        nats_url: NatsTarget,
        store: ArtifactStore,
        settings: CurationSettings | None = None,
        *,
        stream: str = "PROTEGE_CALLS",
        durable: str = "protege-curator",
        batch: int = 256,
        prune_every_seconds: float = 3600.0,
        create_stream: StreamSettings | None = None,
    ) -> None:
        self.endpoint = NatsEndpoint.of(nats_url)
        self.nats_url = str(self.endpoint)  # the servers only: never the credentials
        self.examples = ExampleStore(store)
        self.settings = settings or CurationSettings()
        self.stream = stream
        self.durable = durable
        self.create_stream = create_stream  # made (or updated) before consuming, as a gateway does
        self.batch = batch  # records curated (and acknowledged) together
        self._records_per_message = float(batch)  # until seen: so the first fetch takes one message
        self.stats = CurationStats()
        self.prune_every_seconds = prune_every_seconds
        self._pruned_at = float("-inf")
        self._near: dict[str, NearDuplicateIndex] = {}

    @classmethod
    def from_settings(cls, settings: Settings, store: ArtifactStore) -> Curator:
        """The curator of a configured installation: its NATS, its call-log stream, its curation."""
        endpoint = NatsEndpoint.from_settings(settings, CURATOR)
        stream = StreamSettings.from_settings(settings)  # a tenant's SDK may not make it: the curator does
        return cls(endpoint, store, settings.curation, stream=stream.name, create_stream=stream)

    def pii_backend(self) -> PiiBackend:
        """The PII detectors ``curation.pii_detector`` names (Presidio's NER where installed)."""
        return backend_from_settings(self.settings)

    def _example(self, record: CallRecord, redact_pii: bool) -> Example:
        return example_from_record(record, RecordRedaction(self.pii_backend() if redact_pii else _no_pii))

    def _near_index(self, tenant: str) -> NearDuplicateIndex:
        if tenant not in self._near:
            index = NearDuplicateIndex(self.settings.for_tenant(tenant).near_duplicate_jaccard)
            for example in self.examples.load(tenant):  # after a restart: what is already kept
                index.add(self.examples.key(example), near_text(example))
            self._near[tenant] = index
        return self._near[tenant]

    async def run(
        self, *, until_idle: bool = False, idle_seconds: float = 2.0, stop: asyncio.Event | None = None
    ) -> CurationStats:
        """Curate until ``stop`` is set, or (``until_idle``) until no record came for ``idle_seconds``."""
        client = await self.endpoint.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        try:
            js = client.jetstream()
            await _ensure_dead_letter_stream(js)
            if self.create_stream is not None:
                await ensure_stream(js, self.create_stream)
            config = ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.ack_wait_seconds,
                max_ack_pending=self.batch * 4,
            )
            while True:
                try:
                    subscription = await js.pull_subscribe(
                        f"{SUBJECT_PREFIX}.>", durable=self.durable, stream=self.stream, config=config
                    )
                    break
                except NotFoundError:  # no call logged yet: the first gateway publish makes the stream
                    if until_idle or (stop is not None and stop.is_set()):
                        return self.stats
                    await asyncio.sleep(idle_seconds)
            while stop is None or not stop.is_set():
                await self._prune_if_due()
                try:
                    messages = await subscription.fetch(self._fetch_size(), timeout=idle_seconds)
                except TimeoutError:
                    if until_idle:
                        # Idle means nothing left, also nothing that a crashed reader took and
                        # never acknowledged (JetStream hands it out again after ack_wait).
                        info = await subscription.consumer_info()
                        if info.num_pending == 0 and info.num_ack_pending == 0:
                            break
                    continue
                await self._curate_batch(js, messages)
        finally:
            await client.close()
        return self.stats

    async def _prune_if_due(self) -> None:
        """Delete expired examples, at most once per ``prune_every_seconds`` (a pass reads every example)."""
        if time.monotonic() - self._pruned_at < self.prune_every_seconds:
            return
        self._pruned_at = time.monotonic()
        pruned = await asyncio.to_thread(
            self.examples.prune,
            lambda tenant: self.settings.for_tenant(tenant).retention_days,
            time.time_ns() // 1_000_000,
        )
        for tenant, count in sorted(pruned.items()):
            self._near.pop(tenant, None)  # rebuilt from the store, without them, when next needed
            log.info("curation: %d examples of tenant %s passed retention_days: deleted", count, tenant)
        self.stats.expired += sum(pruned.values())

    def _fetch_size(self) -> int:
        """Messages to fetch for about ``batch`` records: a message holds one record or hundreds, and
        a batch must be curated within ``ack_wait_seconds``."""
        return max(1, round(self.batch / self._records_per_message))

    async def _curate_batch(self, js: JetStreamContext, messages: list[Msg]) -> None:
        records: list[CallRecord] = []
        seen = self.stats.seen
        for message in messages:
            for line, found in records_in_message(message.data, message.subject):
                self.stats.seen += 1
                if isinstance(found, ValueError):
                    await self._dead_letter(js, message, line, found)
                else:
                    records.append(teacher_view(found))
        if messages:
            self._records_per_message = max(1.0, (self.stats.seen - seen) / len(messages))
        to_write: dict[str, Example] = {}
        for record in records:
            policy = self.settings.for_tenant(record.tenant)
            reason = reject_reason(record, policy)
            if reason is not None:
                self.stats.rejected[reason] += 1
                continue
            # In a thread: NER takes milliseconds a text (and seconds to load, the first time), and
            # the event loop must keep the connection and the acks going meanwhile.
            example = await asyncio.to_thread(self._example, record, policy.redact_pii)
            key = self.examples.key(example)
            if key in to_write or await asyncio.to_thread(self.examples.has, key):
                self.stats.duplicates += 1
                continue
            if self._near_index(record.tenant).add(key, near_text(example)) is not None:
                self.stats.near_duplicates += 1
                continue
            to_write[key] = example
        await asyncio.to_thread(self._write, to_write)  # durable before any ack
        for example in to_write.values():
            self.stats.redactions.update(example.redactions)
        self.stats.kept += len(to_write)
        for message in messages:
            await message.ack()

    def _write(self, examples: dict[str, Example]) -> None:
        for key, example in examples.items():
            self.examples.put(key, example)

    async def _dead_letter(self, js: JetStreamContext, message: Msg, line: bytes, error: ValueError) -> None:
        """Park an unreadable record (a line of ``message``) on the dead-letter subject."""
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            reason = f"{'.'.join(str(p) for p in first['loc']) or 'record'}: {first['msg']}"
        else:
            reason = f"{type(error).__name__}: {error}"
        reason = reason.replace("\n", " ")[:300]
        sequence = message.metadata.sequence.stream
        log.warning(
            "curation: unreadable record #%d on %s parked on %s: %s",
            sequence,
            message.subject,
            DEAD_LETTER_SUBJECT,
            reason,
        )
        headers = {
            "Protege-Error": reason,
            "Protege-Subject": message.subject,
            "Protege-Sequence": str(sequence),
        }
        await js.publish(DEAD_LETTER_SUBJECT, line, headers=headers, stream=DEAD_LETTER_STREAM)
        self.stats.dead_lettered += 1


def near_text(example: Example) -> str:
    return dedup_text(example.user_text, json.dumps(example.answer, sort_keys=True))


async def _ensure_dead_letter_stream(js: JetStreamContext) -> None:
    try:
        await js.stream_info(DEAD_LETTER_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=DEAD_LETTER_STREAM,
                subjects=["protege.deadletter.>"],
                storage=StorageType.FILE,
                max_age=30 * 86400,
            )
        )
