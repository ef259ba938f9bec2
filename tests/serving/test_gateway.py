"""The gateway end to end: real uvicorn, real stub teacher over HTTP, real NATS, the OpenAI SDK."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from protege.api.calls import CallStatus, UpstreamKind
from protege.config import load_settings
from protege.services.process import free_port
from protege.serving.server import ServerThread
from protege.testing.plugin import RunningGateway, records_of
from protege.testing.stub_teacher import StubTeacher

pytestmark = pytest.mark.slow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "Find orders",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def post(gateway: RunningGateway, body: dict | bytes, **headers: str) -> httpx.Response:  # type: ignore[type-arg]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gateway.base_url + "/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json", **headers},
    )


def chat(text: str, **extra: object) -> dict:  # type: ignore[type-arg]
    return {"model": "stub-teacher", "messages": [{"role": "user", "content": text}], **extra}


def test_non_streamed_answer_is_byte_identical_and_logged_once(
    start_gateway: Callable[..., RunningGateway], stub_teacher: ServerThread
) -> None:
    gateway = start_gateway(app="support-bot")
    body = json.dumps(chat("where is my order 1234?", temperature=0.2)).encode()
    direct = httpx.post(stub_teacher.url + "/v1/chat/completions", content=body)
    through = post(gateway, body)
    assert through.status_code == 200
    assert through.content == direct.content
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.tenant == gateway.tenant and record.app == "support-bot" and record.source == "gateway"
    assert record.status is CallStatus.OK and record.error is None
    assert (
        record.request.temperature == 0.2 and record.request.messages[0].content == "where is my order 1234?"
    )
    assert record.response is not None and record.response.content == "echo: where is my order 1234?"
    assert record.usage is not None and record.usage.total_tokens > 0
    assert record.upstream is not None and record.upstream.kind is UpstreamKind.TEACHER
    assert record.latency.total_ms > 0 and record.latency.ttft_ms is None


def test_streamed_answer_is_byte_identical_and_assembled(
    start_gateway: Callable[..., RunningGateway], stub_teacher: ServerThread
) -> None:
    gateway = start_gateway()
    body = json.dumps(chat("stream this answer please", stream=True, stream_options={"include_usage": True}))
    with httpx.stream("POST", stub_teacher.url + "/v1/chat/completions", content=body) as response:
        direct = response.read()
    with httpx.stream(
        "POST",
        gateway.base_url + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {gateway.key}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        through = response.read()
    assert through == direct and through.endswith(b"data: [DONE]\n\n")
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.status is CallStatus.OK
    assert record.response is not None and record.response.content == "echo: stream this answer please"
    assert record.response.finish_reason == "stop"
    assert record.usage is not None and record.usage.completion_tokens == 5
    assert record.latency.ttft_ms is not None and record.latency.ttft_ms <= record.latency.total_ms


def test_stream_is_relayed_as_it_arrives(
    start_gateway: Callable[..., RunningGateway], tmp_path: object
) -> None:
    with ServerThread(StubTeacher(chunk_delay=0.4)) as slow:
        gateway = start_gateway(teacher_url=slow.url + "/v1")
        client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
        arrivals = []
        stream = client.chat.completions.create(**chat("one two three four", stream=True))
        for _ in stream:
            arrivals.append(time.monotonic())
        # The stub waits 0.4 s after each of its 5 content chunks: a buffering gateway would
        # deliver them all at once, a relaying one as they come.
        assert len(arrivals) >= 6
        assert arrivals[-1] - arrivals[0] >= 1.2


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through_and_are_captured(
    start_gateway: Callable[..., RunningGateway], stream: bool
) -> None:
    gateway = start_gateway()
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    request = chat("orders from last week", tools=TOOLS, tool_choice="auto")
    if stream:
        chunks = list(client.chat.completions.create(**request, stream=True))
        arguments = "".join(
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            for c in chunks
            if c.choices and c.choices[0].delta.tool_calls
        )
    else:
        completion = client.chat.completions.create(**request)
        [call] = completion.choices[0].message.tool_calls or []
        arguments = call.function.arguments
    assert json.loads(arguments) == {"query": "orders from last week"}
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.request.tools == TOOLS and record.request.tool_choice == "auto"
    assert record.response is not None and record.response.finish_reason == "tool_calls"
    [captured] = record.response.tool_calls
    assert captured.id == "call_stub_0" and captured.function.name == "search_orders"
    assert json.loads(captured.function.arguments) == {"query": "orders from last week"}


def test_every_call_is_one_record_and_app_header_tags_it(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = start_gateway(app="default-app")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key)
    tagged = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.key, default_headers={"X-Protege-App": "sql-writer"}
    )
    for i in range(20):
        (tagged if i % 4 == 0 else client).chat.completions.create(**chat(f"call {i}", stream=i % 2 == 0))
    records = records_of(gateway.settings.nats_url, gateway.tenant, 20)
    assert len(records) == 20
    assert sorted(r.request.messages[0].content for r in records) == sorted(f"call {i}" for i in range(20))
    assert {r.app for r in records} == {"default-app", "sql-writer"}
    assert sum(r.app == "sql-writer" for r in records) == 5
    assert len({r.id for r in records}) == 20


def test_auth_failures_are_401_in_openai_format(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway()
    missing = httpx.post(gateway.base_url + "/chat/completions", json=chat("hi"))
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        openai.OpenAI(base_url=gateway.base_url, api_key="pgk-wrong").chat.completions.create(**chat("hi"))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="pgk-wrong").models.list()
    models = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key).models.list()
    assert [m.id for m in models.data] == ["stub-teacher"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "could not parse the JSON body"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (
            json.dumps(chat("hi", stream="yes")).encode(),
            400,
            "Invalid value for 'stream': expected a boolean",
        ),
        (
            json.dumps(chat("hi", stream=True, stream_options=True)).encode(),
            400,
            "Invalid value for 'stream_options': expected an object",
        ),
        (json.dumps({"model": "stub-teacher"}).encode(), 400, "Invalid value for 'messages'"),
        (
            json.dumps({"model": "stub-teacher", "messages": "hi"}).encode(),
            400,
            "Invalid value for 'messages'",
        ),
        (json.dumps(chat("hi", temperature="hot")).encode(), 400, "Invalid value for 'temperature'"),
        (json.dumps({**chat("hi"), "model": "gpt-9"}).encode(), 404, "The model 'gpt-9' does not exist"),
        (json.dumps(chat("x" * 5000)).encode(), 413, "raise gateway.max_body_bytes"),
    ],
)
def test_bad_input_gets_an_openai_4xx_and_no_record(
    start_gateway: Callable[..., RunningGateway], body: bytes, status: int, message: str
) -> None:
    gateway = start_gateway(gateway={"max_body_bytes": 4096})
    response = post(gateway, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    assert f'protege_gateway_rejected_requests_total{{code="{status}"}} 1.0' in metrics


def test_bad_app_header_unknown_route_and_method_are_4xx(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = start_gateway()
    bad_app = post(gateway, chat("hi"), **{"X-Protege-App": "my app!"})
    assert bad_app.status_code == 400 and "X-Protege-App" in bad_app.json()["error"]["message"]
    unknown = httpx.get(gateway.base_url + "/completions/legacy")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(gateway.base_url + "/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_upstream_http_error_passes_through_and_is_recorded(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = start_gateway()
    response = post(gateway, chat("!status 503"))
    assert response.status_code == 503 and response.json()["error"]["message"] == "stub error 503"
    streamed = post(gateway, chat("!status 429", stream=True))
    assert streamed.status_code == 429
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert sorted(r.error.status_code for r in records if r.error) == [429, 503]
    assert all(r.status is CallStatus.UPSTREAM_ERROR and r.response is None for r in records)


def test_upstream_timeout_is_504_and_recorded(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(teacher={"timeout_seconds": 0.3})
    response = post(gateway, chat("!sleep 1.5"))
    assert response.status_code == 504 and "teacher.timeout_seconds" in response.json()["error"]["message"]
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.status is CallStatus.TIMEOUT and record.error is not None and record.error.type == "timeout"


def test_unreachable_teacher_is_502_and_recorded(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(teacher_url=f"http://127.0.0.1:{free_port()}/v1")
    for stream in (False, True):
        response = post(gateway, chat("hello", stream=stream))
        assert response.status_code == 502 and response.json()["error"]["code"] == "connect_error"
    records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert all(r.status is CallStatus.UPSTREAM_ERROR for r in records)


def test_error_event_inside_a_stream_is_recorded(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway()
    response = post(gateway, chat("partial !stream-error", stream=True))
    assert response.status_code == 200 and b"stub stream broke" in response.content
    [record] = records_of(gateway.settings.nats_url, gateway.tenant, 1)
    assert record.status is CallStatus.UPSTREAM_ERROR and record.error is not None
    assert record.error.message == "stub stream broke"
    assert record.response is not None and record.response.content == "echo: partial !stream-error"


def test_client_disconnects_are_recorded(start_gateway: Callable[..., RunningGateway]) -> None:
    with ServerThread(StubTeacher(chunk_delay=0.3)) as slow:
        gateway = start_gateway(teacher_url=slow.url + "/v1")
        headers = {"Authorization": f"Bearer {gateway.key}"}
        url = gateway.base_url + "/chat/completions"
        with httpx.stream(
            "POST", url, json=chat("a b c d e f g h", stream=True), headers=headers
        ) as response:
            first = next(response.iter_raw())  # read one chunk, then hang up
        assert first.startswith(b"data: ")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=chat("!sleep 2"), headers=headers, timeout=0.5)
        records = records_of(gateway.settings.nats_url, gateway.tenant, 2)
    assert [r.status for r in records] == [CallStatus.CLIENT_DISCONNECTED] * 2
    streamed = next(r for r in records if r.request.stream)
    # The partial answer up to the hang-up is kept, unfinished.
    assert streamed.response is not None and streamed.response.finish_reason is None
    assert "echo: a b c d e f g h".startswith(streamed.response.content or "")


def test_metrics_and_health(start_gateway: Callable[..., RunningGateway]) -> None:
    gateway = start_gateway(app="metered")
    post(gateway, chat("count me"))
    records_of(gateway.settings.nats_url, gateway.tenant, 1)
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    labels = f'app="metered",code="200",endpoint="chat.completions",status="ok",tenant="{gateway.tenant}"'
    assert f"protege_gateway_requests_total{{{labels}}} 1.0" in metrics
    assert 'protege_calllog_records_total{outcome="published"} 1.0' in metrics
    assert 'protege_calllog_records_total{outcome="dropped"} 0.0' in metrics
    assert "protege_calllog_connected 1.0" in metrics
    assert httpx.get(gateway.server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["call_log"]["connected"] is True
    assert gateway.key not in metrics and gateway.key not in json.dumps(ready)


def test_idle_connections_outlive_the_clients_pool_expiry(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    """A client reuses a pooled connection until its own expiry (httpx, so the OpenAI SDK: 5 s); a gateway
    that closed idle connections at the same age would race it and fail a call now and then."""
    assert load_settings().gateway.keep_alive_seconds > httpx.Limits().keepalive_expiry + 55  # LBs: 60 s
    gateway = start_gateway(gateway={"keep_alive_seconds": 1})  # the setting reaches the server
    ask = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with socket.create_connection((gateway.server.host, gateway.server.port), timeout=5) as connection:
        for _ in range(2):
            connection.sendall(ask)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.4)  # idle, yet under the keep-alive: the same connection answers again
        time.sleep(1.5)
        assert connection.recv(4096) == b""  # past it: closed by the gateway
