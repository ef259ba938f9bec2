"""The listener SDK around the real openai client, talking to a real upstream, logging to real NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from protege.api.calls import CallRecord, CallStatus
from protege.capture import BackgroundPublisher, CallLogPublisher, capture_openai
from protege.config import CurationSettings
from protege.services.nats import NatsServer
from protege.services.process import free_port
from protege.serving.server import ServerThread
from protege.testing.plugin import ensure_call_stream, records_of, wait_for_records

pytestmark = pytest.mark.slow


@pytest.fixture
def tenant() -> str:
    return f"sdk{uuid.uuid4().hex[:10]}"


@pytest.fixture
def publisher(nats_server: NatsServer, tmp_path: Path, tenant: str) -> Iterator[BackgroundPublisher]:
    """A publisher with the tenant's own credentials (it may publish the tenant's calls only)."""
    ensure_call_stream(nats_server)
    with BackgroundPublisher(nats_server.tenant_endpoint(tenant), tmp_path / "spool") as background:
        yield background


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def test_sync_client_calls_are_unchanged_and_logged(
    stub_teacher: ServerThread, publisher: BackgroundPublisher, nats_server: NatsServer, tenant: str
) -> None:
    plain = openai.OpenAI(base_url=stub_teacher.url + "/v1", api_key="teacher-key")
    client = capture_openai(plain, publisher, tenant=tenant, app="agent")
    answer = client.chat.completions.create(model="stub-teacher", messages=messages("hello"))
    assert answer == plain.chat.completions.create(model="stub-teacher", messages=messages("hello"))
    streamed = client.chat.completions.create(
        model="stub-teacher", messages=messages("stream it"), stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "echo: stream it"
    client.models.list()  # not a chat completion: passed through, not logged
    records = records_of(nats_server.url, tenant, 2)
    assert len(records) == 2 and all(isinstance(r, CallRecord) for r in records)
    by_text = {r.request.messages[1].content: r for r in records if isinstance(r, CallRecord)}
    assert by_text["hello"].response is not None and by_text["hello"].response.content == "echo: hello"
    assert by_text["stream it"].response is not None and by_text["stream it"].response.content == text
    assert [(r.source, r.app, r.status, r.error) for r in by_text.values()] == [
        ("sdk", "agent", CallStatus.OK, None)
    ] * 2
    assert by_text["stream it"].latency.ttft_ms is not None


def test_responses_api_calls_are_logged_in_chat_shape(
    stub_teacher: ServerThread, publisher: BackgroundPublisher, nats_server: NatsServer, tenant: str
) -> None:
    """The Agents SDK's default API: whole and streamed, recorded as the gateway records them."""
    from protege.api.calls import Endpoint

    plain = openai.OpenAI(base_url=stub_teacher.url + "/v1", api_key="teacher-key")
    client = capture_openai(plain, publisher, tenant=tenant, app="agent")
    whole = client.responses.create(model="stub-teacher", instructions="You are terse.", input="hello")
    assert whole.output_text == "echo: hello"
    with client.responses.stream(model="stub-teacher", input="stream it") as stream:
        streamed = stream.get_final_response()
    assert streamed.output_text == "echo: stream it"
    records = [r for r in records_of(nats_server.url, tenant, 2) if isinstance(r, CallRecord)]
    by_text = {r.request.messages[-1].content: r for r in records}
    assert set(by_text) == {"hello", "stream it"} and all(r.endpoint is Endpoint.RESPONSES for r in records)
    assert [m.role for m in by_text["hello"].request.messages] == ["system", "user"]
    for text, record in by_text.items():
        assert record.response is not None and record.response.content == f"echo: {text}"
        assert record.status is CallStatus.OK and record.usage is not None and record.usage.total_tokens


async def test_async_client_with_a_publisher_in_the_same_loop(
    stub_teacher: ServerThread, nats_server: NatsServer, tmp_path: Path, tenant: str
) -> None:
    await asyncio.to_thread(ensure_call_stream, nats_server)
    log = CallLogPublisher(nats_server.tenant_endpoint(tenant), tmp_path / "spool")
    await log.start()
    client = capture_openai(
        openai.AsyncOpenAI(base_url=stub_teacher.url + "/v1", api_key="k"), log, tenant=tenant
    )
    answer = await client.chat.completions.create(model="stub-teacher", messages=messages("async"))
    assert answer.choices[0].message.content == "echo: async"
    stream = await client.chat.completions.create(
        model="stub-teacher", messages=messages("a b c"), stream=True
    )
    assert [c async for c in stream][-1].choices[0].finish_reason == "stop"
    await log.close()
    records = await wait_for_records(nats_server.url, tenant, 2)
    assert sorted(r.response.content for r in records if isinstance(r, CallRecord) and r.response) == [
        "echo: a b c",
        "echo: async",
    ]


def test_stream_closed_early_and_connection_errors_are_recorded_and_raised_as_usual(
    stub_teacher: ServerThread, publisher: BackgroundPublisher, nats_server: NatsServer, tenant: str
) -> None:
    client = capture_openai(
        openai.OpenAI(base_url=stub_teacher.url + "/v1", api_key="k"), publisher, tenant=tenant
    )
    stream = client.chat.completions.create(
        model="stub-teacher", messages=messages("one two three"), stream=True
    )
    next(iter(stream))
    stream.close()  # the agent stops reading
    nowhere = openai.OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        capture_openai(nowhere, publisher, tenant=tenant).chat.completions.create(
            model="stub-teacher", messages=messages("anyone?")
        )
    records = [r for r in records_of(nats_server.url, tenant, 2) if isinstance(r, CallRecord)]
    assert sorted(r.status.value for r in records) == ["client_disconnected", "upstream_error"]


def test_a_tenant_that_redacts_at_capture_has_no_raw_pii_logged_by_the_sdk(
    stub_teacher: ServerThread, nats_server: NatsServer, tmp_path: Path, tenant: str
) -> None:
    """The SDK honours the tenant's ``redact_at_capture`` as the gateway does: what reaches
    JetStream, the journal and the spool is redacted; the agent still gets the raw answer."""
    ensure_call_stream(nats_server)
    curation = CurationSettings(tenants={tenant: {"redact_at_capture": True}}, pii_detector="builtin")
    raw = "I'm Jane, mail jane.doe@example.com, call +44 20 7946 0958"
    endpoint, teacher = nats_server.tenant_endpoint(tenant), stub_teacher.url + "/v1"
    with BackgroundPublisher(endpoint, tmp_path / "spool", curation=curation) as log:
        client = capture_openai(openai.OpenAI(base_url=teacher, api_key="k"), log, app="agent")
        answer = client.chat.completions.create(model="stub-teacher", messages=messages(raw))
        assert answer.choices[0].message.content == f"echo: {raw}"
    [record] = records_of(nats_server.url, tenant, 1)
    assert isinstance(record, CallRecord) and record.response is not None
    assert record.request.messages[1].content == "I'm <PERSON_1>, mail <EMAIL_1>, call <PHONE_1>"
    assert record.response.content == "echo: I'm <PERSON_1>, mail <EMAIL_1>, call <PHONE_1>"
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert b"jane.doe@example.com" not in path.read_bytes(), path


def test_a_broken_sink_never_fails_the_call(stub_teacher: ServerThread, tenant: str) -> None:
    class Broken:
        def submit(self, record: CallRecord) -> None:
            raise OSError("disk on fire")

    client = capture_openai(
        openai.OpenAI(base_url=stub_teacher.url + "/v1", api_key="k"), Broken(), tenant=tenant
    )
    answer = client.chat.completions.create(model="stub-teacher", messages=messages("still fine"))
    assert answer.choices[0].message.content == "echo: still fine"


def test_bad_tenant_and_client_type_are_refused_up_front(
    publisher: BackgroundPublisher, tmp_path: Path
) -> None:
    unbound = CallLogPublisher("nats://127.0.0.1:9", tmp_path / "unbound")  # no identity, never started
    with pytest.raises(ValueError, match=r"may only hold 1-64 letters"):
        capture_openai(openai.OpenAI(api_key="k"), unbound, tenant="acme corp")
    with pytest.raises(ValueError, match=r"no tenant: the call log credentials name none"):
        capture_openai(openai.OpenAI(api_key="k"), unbound)
    with pytest.raises(ValueError, match=r"tenant='acme' is refused"):  # the credentials are another's
        capture_openai(openai.OpenAI(api_key="k"), publisher, tenant="acme")
    with pytest.raises(TypeError, match=r"openai\.OpenAI or openai\.AsyncOpenAI"):
        capture_openai(object(), publisher)  # type: ignore[type-var]
