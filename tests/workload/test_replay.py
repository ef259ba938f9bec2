"""The recorded teacher answers the workload from its recordings; the replay client drives the gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from protege.serving.server import ServerThread
from protege.testing.plugin import RunningGateway, wait_for_records
from protege.testing.recorded_teacher import RecordedTeacher, request_key
from protege.workload import generate
from protege.workload.replay import replay


def test_the_request_key_ignores_what_a_model_does_not_answer_from() -> None:
    call = generate(5, seed=2)[0]
    same = {**call.request, "model": "other", "stream": True, "temperature": 0.3}
    assert request_key(same) == request_key(call.request)
    changed = {**call.request, "messages": [*call.request["messages"], {"role": "user", "content": "and?"}]}
    assert request_key(changed) != request_key(call.request)


async def test_replay_through_the_gateway_gets_the_recorded_answers(
    start_gateway: Callable[..., RunningGateway], nats_server: Any
) -> None:
    calls = generate(25, seed=5)
    with ServerThread(RecordedTeacher(calls)) as teacher:
        unknown = {"model": "m", "messages": [{"role": "user", "content": "never recorded"}]}
        async with httpx.AsyncClient() as client:
            response = await client.post(teacher.url + "/v1/chat/completions", json=unknown)
        assert response.status_code == 404 and "no recording" in response.json()["error"]["message"]

        gateway = start_gateway(app="order-desk", teacher_url=teacher.url + "/v1")
        seen: list[Any] = []
        outcomes = await replay(
            calls,
            gateway.base_url,
            gateway.key,
            model=gateway.settings.teacher.model,
            concurrency=4,
            rate=50,
            app="order-desk",
            on_outcome=seen.append,
        )
    assert len(seen) == len(outcomes) == 25 and all(o.error is None for o in outcomes)
    for outcome in outcomes:
        assert outcome.specialist is None  # no router: the teacher answered
        expected = outcome.call.answer
        if expected.get("tool_calls"):
            got = outcome.answer["tool_calls"][0]["function"] if outcome.answer else None
            assert got == {k: expected["tool_calls"][0]["function"][k] for k in ("name", "arguments")}
        else:
            assert outcome.answer is not None and outcome.answer["content"] == expected["content"]
    records = await wait_for_records(nats_server.url, gateway.tenant, 25)
    assert {r.app for r in records} == {"order-desk"}


@pytest.mark.parametrize("rate", [None, 200.0])
async def test_failed_calls_are_outcomes_not_exceptions(
    start_gateway: Callable[..., RunningGateway], rate: float | None
) -> None:
    calls = generate(3, seed=9)
    with ServerThread(RecordedTeacher(calls[:1])) as teacher:  # the other two were never recorded
        gateway = start_gateway(teacher_url=teacher.url + "/v1")
        outcomes = await replay(
            calls, gateway.base_url, gateway.key, model=gateway.settings.teacher.model, rate=rate
        )
    assert [o.error is None for o in outcomes] == [True, False, False]
    assert "no recording" in (outcomes[1].error or "")


def test_the_replay_command_reports_per_family(start_gateway: Callable[..., RunningGateway]) -> None:
    from typer.testing import CliRunner

    from protege.cli import app

    with ServerThread(RecordedTeacher(generate(40, seed=7))) as teacher:
        gateway = start_gateway(teacher_url=teacher.url + "/v1")
        arguments = ["workload", "replay", "--gateway", gateway.base_url, "--api-key", gateway.key]
        arguments += ["--model", gateway.settings.teacher.model or "", "--count", "40", "--split", "all"]
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
        assert (
            "40 calls through" in result.output
            and "sqlfix" in result.output
            and "errors:" not in result.output
        )
        wrong = CliRunner().invoke(app, [*arguments[:6], "--model", "nope", "--count", "3"])
    assert wrong.exit_code == 1 and "every call failed" in wrong.output
