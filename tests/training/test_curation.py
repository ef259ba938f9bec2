"""Curation: filters (pure), then the JetStream consumer against a real nats-server and store."""

from __future__ import annotations

import json
import time
from itertools import groupby
from pathlib import Path

import pytest

from protege.api.calls import CallRecord, CallStatus, Endpoint, ErrorInfo, Upstream, UpstreamKind
from protege.api.ids import uuid7_at
from protege.capture.access import ADMIN, CURATOR, GATEWAY
from protege.capture.wire import join_records
from protege.config import ConfigError, CurationPolicy, CurationSettings, load_settings
from protege.services.nats import NatsServer
from protege.store.artifacts import ArtifactStore
from protege.tasks.examples import DAY_MS
from protege.testing.plugin import call_log
from protege.training.curation import (
    DEAD_LETTER_STREAM,
    Curator,
    ExampleStore,
    NearDuplicateIndex,
    reject_reason,
)
from protege.workload import generate

LONG_EMAIL = (
    "Hello team, I am writing about the order I placed last week for the office. We need {n} desk lamps, "
    "two of them with the warm light option, delivered to the Lyon office before the end of the month "
    "because the new hires start on the first. Please confirm the delivery window, the invoice address "
    "and whether the lamps come with the standard two year warranty that was mentioned on the website, "
    "since our procurement rules require it for every electrical item we buy for the staff. {tail}"
)


def record(text: str, answer: str = "ok", tenant: str = "acme", **changes: object) -> CallRecord:
    base = CallRecord.model_validate(
        {
            "tenant": tenant,
            "request": {"model": "m", "messages": [{"role": "user", "content": text}]},
            "response": {"choices": [{"message": {"content": answer}, "finish_reason": "stop"}]},
            "latency": {"total_ms": 1},
        }
    )
    return base.model_copy(update=changes)


def test_only_conversations_become_examples() -> None:
    policy = CurationPolicy()
    assert reject_reason(record("Once upon a", endpoint=Endpoint.COMPLETIONS), policy) == "not_chat"
    assert reject_reason(record("hi", endpoint=Endpoint.RESPONSES), policy) is None
    assert reject_reason(record("hi", endpoint=Endpoint.CHAT_COMPLETIONS), policy) is None


def test_reject_reasons_and_tenant_policies() -> None:
    policy = CurationPolicy()
    assert reject_reason(record("hi"), policy) is None
    failed = record(
        "hi", status=CallStatus.UPSTREAM_ERROR, response=None, error=ErrorInfo(type="x", message="y")
    )
    assert reject_reason(failed, policy) == "failed"
    assert reject_reason(record("hi", answer="  "), policy) == "empty"
    by_specialist = Upstream(kind=UpstreamKind.SPECIALIST, model="m", specialist="s", version="v1")
    assert reject_reason(record("hi", upstream=by_specialist), policy) == "not_teacher"
    assert (
        reject_reason(record("hi", upstream=Upstream(kind=UpstreamKind.TEACHER, model="m")), policy) is None
    )
    truncated = record("hi")
    truncated.response.choices[0].finish_reason = "length"  # type: ignore[union-attr]
    assert reject_reason(truncated, policy) == "truncated"
    assert reject_reason(truncated, policy.model_copy(update={"drop_truncated": False})) is None
    assert reject_reason(record("x" * 40_000), policy) == "too_long"
    settings = CurationSettings(tenants={"bigco": {"max_chars": 100_000}})
    assert (
        settings.for_tenant("bigco").max_chars == 100_000 and settings.for_tenant("acme").max_chars == 32_000
    )
    with pytest.raises(ConfigError, match=r"curation\.tenants\.bigco"):
        load_settings(curation={"tenants": {"bigco": {"max_chars": -5}}})


def test_near_duplicates_are_found_and_different_texts_are_not() -> None:
    index = NearDuplicateIndex(threshold=0.9)
    assert index.add("a", LONG_EMAIL.format(n=4, tail="Thanks, Anna")) is None
    assert index.add("b", LONG_EMAIL.format(n=4, tail="Thanks, Ann")) == "a"
    assert index.add("c", "How many orders were placed in Paris last month?") is None
    assert index.add("d", "How many orders were placed in Berlin last month?") is None
    assert len(index) == 3


async def publish(
    url: str,
    records: list[CallRecord],
    raw: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
    stream_exists: bool = False,
) -> None:
    client = await call_log(url, GATEWAY).connect()  # as a gateway: it may make the stream
    js = client.jetstream()
    if not stream_exists:
        await js.add_stream(name="PROTEGE_CALLS", subjects=["protege.calls.>"])
    for start in range(0, len(records), 40):  # as a gateway does: a message holds a batch of a subject's
        for subject, batch in groupby(records[start : start + 40], key=lambda item: item.subject):
            await js.publish(subject, join_records([item.to_json() for item in batch]))
    for subject, data in raw:
        await js.publish(subject, data)
    await client.close()


@pytest.mark.slow
async def test_curator_keeps_clean_unique_examples_and_parks_bad_messages(tmp_path: Path) -> None:
    calls = generate(300, seed=21)
    good = [call.to_record("acme") for call in calls]
    extra = [
        record("my email is jane.doe@example.com, call me at (415) 555-0132", "Noted, Jane."),
        record(
            "hi", status=CallStatus.TIMEOUT, response=None, error=ErrorInfo(type="timeout", message="slow")
        ),
        record("hi", answer=""),
        record(LONG_EMAIL.format(n=4, tail="Thanks, Anna"), "Confirmed."),
        record(LONG_EMAIL.format(n=4, tail="Thanks, Ann"), "Confirmed."),  # near duplicate
        good[0].model_copy(update={"id": record("x").id}),  # exact duplicate of a call, new id
    ]
    bad = [
        ("protege.calls.acme.agent", b"{not json"),
        (
            "protege.calls.acme.agent",
            json.dumps({**json.loads(good[1].to_json()), "schema_version": 99}).encode(),
        ),
        ("protege.calls.acme.agent", json.dumps({"tenant": "acme"}).encode()),
    ]
    kept_beside_a_torn_line = record("what are your opening hours on sundays?", "From 10 to 4.")
    mixed = join_records([kept_beside_a_torn_line.to_json(), b'{"torn'])
    with NatsServer(tmp_path / "nats") as server:
        await publish(server.url, good + extra, [*bad, (kept_beside_a_torn_line.subject, mixed)])
        store = ArtifactStore((tmp_path / "store").as_uri())
        stats = await Curator(server.endpoint(CURATOR), store, batch=64).run(until_idle=True, idle_seconds=1)
        distinct = {
            (c.request["messages"][-1]["content"], json.dumps(c.answer, sort_keys=True)) for c in calls
        }
        assert stats.seen == len(good) + len(extra) + len(bad) + 2
        accounted = stats.kept + stats.duplicates + stats.near_duplicates + sum(stats.rejected.values())
        assert accounted + stats.dead_lettered == stats.seen
        assert stats.rejected == {"failed": 1, "empty": 1} and stats.dead_lettered == 4
        # Calls that differ only in punctuation or one value in a long text are near duplicates.
        assert 0.8 * len(distinct) <= stats.kept <= len(distinct) + 2
        # The extra call's email and phone; the workload's customers sign with their first names.
        assert stats.redactions["EMAIL"] == 1 and stats.redactions["PHONE"] == 1
        assert set(stats.redactions) == {"EMAIL", "PHONE", "PERSON"}
        examples = ExampleStore(store).load("acme")
        assert len(examples) == stats.kept
        texts = [e.user_text for e in examples]
        # Anna's name is redacted; Ann's call is then a duplicate of hers.
        assert texts.count(LONG_EMAIL.format(n=4, tail="Thanks, <PERSON_1>")) == 1
        assert LONG_EMAIL.format(n=4, tail="Thanks, Ann") not in texts
        assert texts.count(str(good[0].request.messages[-1].content)) == 1
        assert texts.count("what are your opening hours on sundays?") == 1
        dumped = "".join(e.model_dump_json() for e in examples)
        assert "jane.doe@example.com" not in dumped and "555-0132" not in dumped

        client = await server.endpoint(ADMIN).connect()
        parked = await client.jetstream().pull_subscribe("protege.deadletter.>", stream=DEAD_LETTER_STREAM)
        messages = await parked.fetch(4, timeout=5)
        assert [m.data for m in messages] == [*(data for _, data in bad), b'{"torn']  # the line alone
        assert "schema version 99" in messages[1].headers["Protege-Error"]  # type: ignore[index]
        await client.close()

        # A restarted curator (same durable) has nothing left; a second one re-reading the
        # whole log (another durable) writes nothing new: writes are idempotent.
        again = await Curator(server.endpoint(CURATOR), store, batch=64).run(until_idle=True, idle_seconds=1)
        assert again.seen == 0
        reread = await Curator(server.endpoint(CURATOR), store, durable="second-reader").run(
            until_idle=True, idle_seconds=1
        )
        assert reread.kept == 0 and len(ExampleStore(store).keys("acme")) == stats.kept


class _Message:
    """Just enough of a JetStream message for a batch that never reaches NATS."""

    def __init__(self, call: CallRecord) -> None:
        self.data, self.subject = call.to_json(), call.subject
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_a_failed_write_acknowledges_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the store write fails, no message of the batch is acknowledged: JetStream redelivers them."""
    curator = Curator("nats://127.0.0.1:1", ArtifactStore((tmp_path / "store").as_uri()))

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(curator, "_write", broken)
    messages = [_Message(record(f"hello {i}")) for i in range(3)]
    with pytest.raises(OSError, match="disk full"):
        await curator._curate_batch(None, messages)  # type: ignore[arg-type]
    assert not any(m.acked for m in messages)


@pytest.mark.slow
async def test_before_the_first_call_there_is_nothing_to_curate(tmp_path: Path) -> None:
    """A fresh flywheel ticks before any gateway made the call log: no error, nothing curated."""
    with NatsServer(tmp_path / "nats") as server:
        curator = Curator(server.endpoint(CURATOR), ArtifactStore((tmp_path / "store").as_uri()))
        stats = await curator.run(until_idle=True)
        assert stats.seen == 0 and stats.kept == 0


@pytest.mark.slow
async def test_examples_past_their_tenants_retention_are_deleted(tmp_path: Path) -> None:
    """A curator's prune pass deletes examples older than their tenant's retention_days (from the
    call's UUIDv7 time), keeps the rest, and a call like a deleted one is curated again."""
    now_ms = time.time_ns() // 1_000_000

    def logged(days_ago: int, text: str, tenant: str = "acme") -> CallRecord:
        return record(text, tenant=tenant, id=str(uuid7_at(now_ms - days_ago * DAY_MS)))

    records = [
        logged(40, "which warehouse ships the blue lamps"),
        logged(40, "cancel my subscription to the garden magazine", tenant="archive"),
        logged(10, "the invoice for march is missing a line"),
    ]
    settings = CurationSettings(tenants={"archive": {"retention_days": 60}})
    with NatsServer(tmp_path / "nats") as server:
        await publish(server.url, records)
        store = ArtifactStore((tmp_path / "store").as_uri())
        curator = Curator(server.endpoint(CURATOR), store, settings)
        stats = await curator.run(until_idle=True, idle_seconds=1)
        assert stats.kept == 3 and stats.expired == 0  # pruned before anything was stored
        curator.prune_every_seconds = 0  # the next pass is due
        assert (await curator.run(until_idle=True, idle_seconds=1)).expired == 1
        assert {e.user_text for e in ExampleStore(store).load()} == {
            "cancel my subscription to the garden magazine",  # its tenant keeps 60 days
            "the invoice for march is missing a line",
        }
        await publish(server.url, [record("which warehouse ships the blue lamps")], stream_exists=True)
        # curated again: neither the store nor the near-duplicate index remembers the deleted one
        assert (await curator.run(until_idle=True, idle_seconds=1)).kept == 4


def test_every_curator_of_an_installation_reads_its_configured_stream(tmp_path: Path) -> None:
    """`protege curate` and the local flywheel build it the one way (the flywheel ignored the stream)."""
    configured = load_settings(
        home=tmp_path, call_log={"stream": "AGENT_CALLS"}, curation={"ack_wait_seconds": 5}
    )
    curator = Curator.from_settings(configured, ArtifactStore(tmp_path.as_uri()))
    assert (curator.stream, curator.settings, curator.nats_url) == (
        "AGENT_CALLS",
        configured.curation,
        configured.nats_url,
    )
    # it makes the stream when no gateway has yet (a tenant's listener SDK may not), as configured
    assert curator.create_stream is not None and curator.create_stream.name == "AGENT_CALLS"
