"""How call records travel in the call log: one JetStream message carries a batch of records.

A message on ``protege.calls.<tenant>.<app>`` holds one or more records of that subject as
JSON lines (one record's JSON per line; JSON escapes every newline inside a string, so a
line is always one whole record). A message of one record is exactly that record's JSON,
as the call log has always held.

Batching is what makes logging cheap: JetStream, the NATS client and the server spend about
the same per message whatever it holds, so a gateway under load publishes and acknowledges
one message per few hundred calls rather than one per call (bench/capture_throughput.py,
bench/gateway_overhead.py).

A message's ``Nats-Msg-Id`` comes from the ids of the records it holds: a batch published
again (a timed-out publish, a spool replay, a journal recovery) has the same id, and
JetStream drops it; a different batch never has the same id, so no record is ever dropped
as another's duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from protege.api.calls import CallRecord

SEPARATOR = b"\n"


def message_id(record_ids: Sequence[str]) -> str:
    """The ``Nats-Msg-Id`` of the message holding these records, in this order: a single
    record's own id, a batch's a digest of all of them."""
    if len(record_ids) == 1:
        return record_ids[0]
    digest = hashlib.blake2b("\n".join(record_ids).encode(), digest_size=16).hexdigest()
    return f"batch-{len(record_ids)}-{digest}"


def join_records(payloads: Sequence[bytes]) -> bytes:
    """One message's data: the records' JSON, one per line."""
    return SEPARATOR.join(payloads)


def count_records(data: bytes) -> int:
    return data.count(SEPARATOR) + 1


def records_in_message(data: bytes, subject: str) -> Iterator[tuple[bytes, CallRecord | ValueError]]:
    """Each record of a message with its line: the record, or why it is unreadable.

    A record whose tenant or app is not its subject's is refused (a ValueError): an
    identity may publish only its own tenant's subjects, so such a record is a forgery,
    never taken for that tenant's. One unreadable line leaves the others readable.
    """
    for line in data.split(SEPARATOR):
        try:
            record = CallRecord.from_json(line)
        except ValueError as error:  # pydantic's ValidationError is one
            yield line, error
            continue
        if record.subject != subject:
            forged = f"record of {record.tenant}/{record.app} published on {subject}"
            yield line, ValueError(f"{forged}: its tenant and app must be its subject's")
            continue
        yield line, record
