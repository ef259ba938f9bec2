"""The gateway's trust boundary over HTTP: metrics apart, limits, bounds, revoked keys, specialists' names.

Real uvicorn gateways in front of the stub teacher, without a call log (none of this needs one).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from protege.api.routes import RoutingTable, SpecialistRoute
from protege.serving.gateway.auth import hash_key, new_key
from protege.testing.plugin import RunningGateway

NO_LOG = {"enabled": False}
DEADLINE_SECONDS = 20


def _start(start_gateway: Callable[..., RunningGateway], **gateway: Any) -> RunningGateway:
    overrides = gateway.pop("overrides", {})
    return start_gateway(call_log=NO_LOG, gateway=gateway, **overrides)


def _chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "stub-teacher", "messages": [{"role": "user", "content": text}], **extra}


def _post(
    gateway: RunningGateway,
    body: dict[str, Any] | bytes,
    key: str | None = None,
    path: str = "/chat/completions",
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key or gateway.key}", "Content-Type": "application/json"}
    return httpx.post(gateway.base_url + path, content=content, headers=headers, timeout=30)


def _metrics(gateway: RunningGateway) -> str:
    return httpx.get(gateway.metrics_url + "/metrics", timeout=10).text


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- /metrics on its own port, labels bounded ---------------------------------------------------


def test_metrics_are_served_apart_from_the_api_with_unknown_apps_folded(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = start_gateway(app="agent", call_log=NO_LOG, gateway={"metrics_apps": ["billing"]})
    assert gateway.metrics_url != gateway.server.url
    api = httpx.get(gateway.server.url + "/metrics")
    assert api.status_code == 404  # callers of the API cannot read every tenant's traffic
    for app in ("billing", "random-1", "random-2", None):
        headers = {"Authorization": f"Bearer {gateway.key}"} | ({"X-Protege-App": app} if app else {})
        assert (
            httpx.post(gateway.base_url + "/chat/completions", json=_chat(), headers=headers).status_code
            == 200
        )

    def line(app: str) -> str:
        labels = f'app="{app}",code="200",endpoint="chat.completions",status="ok",tenant="{gateway.tenant}"'
        return f"protege_gateway_requests_total{{{labels}}}"

    expected = [line("billing") + " 1.0", line("agent") + " 1.0", line("other") + " 2.0"]
    _until(lambda: all(e in _metrics(gateway) for e in expected), "the calls were never counted")
    assert "random-1" not in _metrics(gateway) and "protege_gateway_api_keys 1.0" in _metrics(gateway)


def test_the_api_describes_itself_in_openapi(start_gateway: Callable[..., RunningGateway]) -> None:
    document = httpx.get(_start(start_gateway).server.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings"} <= set(
        document["paths"]
    )
    assert "/metrics" not in document["paths"]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert "retry-after" in chat["responses"]["429"]["headers"]


def test_metrics_port_null_puts_metrics_back_on_the_api_port(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = _start(start_gateway, metrics_port=None)
    assert gateway.metrics_url == gateway.server.url
    assert "protege_gateway_requests_total" in _metrics(gateway)


# --- limits: 429 with retry-after -------------------------------------------------------------


def test_a_keys_requests_per_minute_are_answered_429_with_retry_after(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = _start(start_gateway, limits={"key": {"requests_per_minute": 2}})
    assert [_post(gateway, _chat()).status_code for _ in range(2)] == [200, 200]
    refused = _post(gateway, _chat())
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert (
        "2 requests per minute" in error["message"]
        and "gateway.limits.key.requests_per_minute" in (error["message"])
    )
    metrics = _metrics(gateway)
    assert 'protege_gateway_rejected_requests_total{code="429"} 1.0' in metrics
    limited = f'limit="requests_per_minute",subject="key",tenant="{gateway.tenant}"'
    assert f"protege_gateway_rate_limited_requests_total{{{limited}}} 1.0" in metrics


def test_a_tenants_tokens_are_charged_from_usage_after_each_call(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = _start(start_gateway, limits={"tenants": {}, "tenant": {"tokens_per_minute": 5}})
    answered = _post(gateway, _chat("count these few words please", stream=True))  # usage from the stream
    assert answered.status_code == 200
    refused = _post(gateway, _chat(), path="/completions")
    assert refused.status_code == 429 and "tokens (prompt plus completion) per minute" in refused.text
    assert f"the tenant '{gateway.tenant}'" in refused.json()["error"]["message"]


def test_concurrent_calls_past_the_limit_wait_and_a_slot_frees_when_a_call_ends(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = _start(start_gateway, limits={"tenant": {"concurrent_calls": 1}})
    limiter = gateway.server.server.config.app.state.gateway.limiter
    slow: list[int] = []
    thread = threading.Thread(target=lambda: slow.append(_post(gateway, _chat("!sleep 1")).status_code))
    thread.start()
    _until(lambda: limiter.in_flight("tenant", gateway.tenant) == 1, "the slow call never started")
    refused = _post(gateway, _chat())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "1 calls in progress at once" in refused.json()["error"]["message"]
    thread.join()
    assert slow == [200] and limiter.in_flight("tenant", gateway.tenant) == 0
    assert _post(gateway, _chat()).status_code == 200


# --- bounds and bad input: 4xx, never 5xx -------------------------------------------------------


def test_bounds_on_n_and_max_tokens_are_a_400_that_says_how_to_fix_it(
    start_gateway: Callable[..., RunningGateway],
) -> None:
    gateway = _start(start_gateway, max_n=2, max_output_tokens=100)
    refused = _post(gateway, _chat(n=3))
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (
        error["param"] == "n" and "3 is above this gateway's limit of 2 (gateway.max_n)" in error["message"]
    )
    refused = _post(
        gateway, {"model": "stub-teacher", "input": "hi", "max_output_tokens": 101}, path="/responses"
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_output_tokens"
    assert _post(gateway, _chat(n=2, max_tokens=100)).status_code == 200


@pytest.mark.parametrize("path", ["/chat/completions", "/responses", "/completions", "/embeddings"])
def test_deeply_nested_or_oversized_bodies_are_4xx(
    start_gateway: Callable[..., RunningGateway], path: str
) -> None:
    gateway = _start(start_gateway, max_body_bytes=64 << 10)
    nested = b'{"model": "stub-teacher", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    refused = _post(gateway, nested, path=path)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "json_too_deep"
    oversized = _post(gateway, _chat("x" * (70 << 10)), path=path)
    assert oversized.status_code == 413
    assert "larger than this gateway accepts (65536 bytes)" in oversized.json()["error"]["message"]
    assert "gateway.max_body_bytes" in oversized.json()["error"]["message"]


# --- keys re-read while running --------------------------------------------------------------------


def test_a_key_removed_from_the_keys_file_stops_working_without_a_restart(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    kept, revoked = new_key(), new_key()
    path = tmp_path / "keys.yaml"

    def write(*keys: str) -> None:
        entries = [{"sha256": hash_key(key), "tenant": "filed"} for key in keys]
        path.with_suffix(".tmp").write_text(json.dumps(entries))
        path.with_suffix(".tmp").replace(path)  # as a Secret volume swaps its files: all at once

    write(kept, revoked)
    gateway = _start(start_gateway, api_keys_file=str(path), api_keys_refresh_seconds=0.1)
    assert _post(gateway, _chat(), key=revoked).status_code == 200
    write(kept)
    _until(lambda: _post(gateway, _chat(), key=revoked).status_code == 401, "the revoked key kept working")
    assert _post(gateway, _chat(), key=kept).status_code == 200
    assert _post(gateway, _chat()).status_code == 200  # the settings' own key is not in the file
    path.write_text("- sha256: [not, a, key")  # a broken file: the last good keys stay
    broken = "protege_gateway_api_keys_file_errors_total 1.0"
    _until(lambda: broken in _metrics(gateway), "the broken file was never read")
    assert _post(gateway, _chat(), key=kept).status_code == 200


# --- another tenant's specialist is as good as unknown -------------------------------------------


def test_another_tenants_specialist_gets_the_same_404_as_an_unknown_model(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    table = tmp_path / "routes.json"
    route = SpecialistRoute(specialist="their-spec", tenant="someone-else", task_id="t1", active="v1")
    table.write_text(RoutingTable(routes=[route]).model_dump_json())
    router = {"enabled": True, "engine_url": "http://127.0.0.1:9", "table": str(table)}
    gateway = _start(
        start_gateway, overrides={"router": router, "artifact_store": (tmp_path / "store").as_uri()}
    )
    assert gateway.server.server.config.app.state.gateway.router.table.routes == [route]
    answers = {}
    for model in ("their-spec", "their-spec@v1", "no-such-spec", "no-such-spec@v1"):
        for path, body in (
            ("/chat/completions", {**_chat(), "model": model}),
            ("/responses", {"model": model, "input": "hi"}),
        ):
            response = _post(gateway, body, path=path)
            assert response.status_code == 404, response.text
            answers[model, path] = response.text.replace(model, "<model>")
    for path in ("/chat/completions", "/responses"):
        assert len({answer for (_, where), answer in answers.items() if where == path}) == 1
