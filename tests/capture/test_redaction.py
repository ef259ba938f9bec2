"""Redaction at capture: the records of a tenant that asks for it reach the publisher redacted.

A recording sink stands in for the publisher (what it is handed is what the journal, the
spool and JetStream would get); then a real gateway, stub teacher and NATS, end to end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from protege.api.calls import CallRecord
from protege.capture.redaction import RedactingSink
from protege.config import CurationSettings, load_settings
from protege.pii import builtin_backend
from protege.testing.plugin import RunningGateway, records_of

RAW = ("jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "AB 12 34 56 C")
TEXT = f"I'm Jane, mail {RAW[0]}, call {RAW[1]}, card {RAW[2]}, NI number {RAW[3]}"


def call(tenant: str) -> CallRecord:
    return CallRecord.model_validate(
        {
            "tenant": tenant,
            "request": {"model": "m", "messages": [{"role": "user", "name": "jane_d", "content": TEXT}]},
            "response": {"choices": [{"message": {"content": f"Noted: {RAW[0]}"}}]},
            "latency": {"total_ms": 1},
        }
    )


class Recorder:
    """Stands in for the publisher: keeps what it is handed."""

    def __init__(self) -> None:
        self.submitted: list[CallRecord] = []
        self.held: list[CallRecord] = []

    def submit(self, record: CallRecord) -> None:
        self.submitted.append(record)

    def hold(self, record: CallRecord) -> None:
        self.held.append(record)


async def test_only_the_tenants_that_ask_are_redacted_and_held_records_too() -> None:
    curation = CurationSettings(tenants={"careful": {"redact_at_capture": True}})
    recorder = Recorder()
    sink = RedactingSink(recorder, curation, backend=builtin_backend())
    try:
        sink.hold(call("careful"))
        sink.submit(call("careful"))
        sink.submit(call("relaxed"))
        await sink.drain()
    finally:
        sink.close()
    assert [r.tenant for r in recorder.submitted] == ["relaxed", "careful"]  # the relaxed one at once
    careful = [recorder.held[0], recorder.submitted[1]]
    for record in careful:
        dumped = record.model_dump_json()
        assert not [value for value in RAW if value in dumped] and "jane_d" not in dumped
        assert "<EMAIL_1>" in dumped and "<NATIONAL_ID_1>" in dumped
    assert TEXT in recorder.submitted[0].model_dump_json()
    assert sink.redacted == 2 and sink.dropped == 0


async def test_a_record_whose_redaction_fails_is_dropped_not_written_raw() -> None:
    def broken(text: str) -> list:  # type: ignore[type-arg]
        raise ValueError("detector bug")

    recorder = Recorder()
    sink = RedactingSink(recorder, CurationSettings(default={"redact_at_capture": True}), backend=broken)
    try:
        sink.submit(call("careful"))
        await sink.drain()
    finally:
        sink.close()
    assert recorder.submitted == [] and sink.dropped == 1


async def test_redaction_runs_off_the_event_loop() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(text: str) -> list:  # type: ignore[type-arg]
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return builtin_backend()(text)

    recorder = Recorder()
    sink = RedactingSink(recorder, CurationSettings(default={"redact_at_capture": True}), backend=slow)
    try:
        sink.submit(call("careful"))
        await asyncio.wait_for(started.wait(), 5)  # the loop runs while the detector works
        release.set()
        await sink.drain()
    finally:
        sink.close()
    assert len(recorder.submitted) == 1


def test_no_tenant_redacting_at_capture_means_no_wrapper(tmp_path: Path) -> None:
    recorder = Recorder()
    assert RedactingSink.wrap(load_settings(home=tmp_path).curation, recorder) is recorder
    policies = load_settings(home=tmp_path, curation={"tenants": {"t": {"redact_at_capture": True}}})
    wrapped = RedactingSink.wrap(policies.curation, recorder)
    assert isinstance(wrapped, RedactingSink) and wrapped.tenant is None
    recorder.tenant = "t"  # type: ignore[attr-defined]  # a publisher bound to a tenant's credentials
    assert wrapped.tenant == "t"  # so the listener SDK can take it for the publisher it wraps
    wrapped.close()


@pytest.mark.slow
def test_gateway_logs_redacted_calls_and_the_teacher_sees_them_raw(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    import httpx

    gateway = start_gateway(curation={"default": {"redact_at_capture": True}, "pii_detector": "builtin"})
    body = {"model": "stub-teacher", "messages": [{"role": "user", "name": "jane_d", "content": TEXT}]}
    answer = httpx.post(
        gateway.base_url + "/chat/completions",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 200 and RAW[0] in answer.text  # the stub teacher echoes the raw text
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert isinstance(record, CallRecord)
    dumped = record.model_dump_json()
    assert not [value for value in RAW if value in dumped] and "jane_d" not in dumped
    assert "<EMAIL_1>" in dumped and "<PHONE_1>" in dumped and "<CREDIT_CARD_1>" in dumped
    for path in gateway.settings.home.rglob("*"):  # journal and spool: nothing raw on disk either
        if path.is_file():
            assert RAW[0].encode() not in path.read_bytes(), path
