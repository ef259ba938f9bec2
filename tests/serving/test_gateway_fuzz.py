"""Fuzzing the gateway's API from its own OpenAPI document (schemathesis): no request gets a 5xx.

Bodies that fit the document (positive) and bodies that break it (negative), for every
operation, sent with a valid key to a real gateway in front of a teacher that always
answers well: whatever a caller sends, the gateway answers it, refuses it with a 4xx, or
passes on the teacher's answer. The run is derandomized (the same examples every time);
``PROTEGE_FUZZ_EXAMPLES`` raises the number of examples per operation and mode.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.types import Receive, Scope, Send

from protege.serving.gateway.openapi import openapi_document
from protege.serving.server import ServerThread
from protege.testing.plugin import RunningGateway

MODEL = "fuzz-teacher"
EXAMPLES = int(os.environ.get("PROTEGE_FUZZ_EXAMPLES", "15"))


class WellBehavedTeacher:
    """Answers every POST in the shape its endpoint has (streamed when asked), whatever it is sent."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw, more = b"", True
        while more:
            message = await receive()
            raw, more = raw + message.get("body", b""), message.get("more_body", False)
        try:
            request = json.loads(raw)
        except ValueError:
            request = {}
        stream = isinstance(request, dict) and request.get("stream") is True
        path = scope["path"]
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if path.endswith("/embeddings"):
            body: Any = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]}
            events = None
        elif path.endswith("/responses"):
            response = {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "model": MODEL,
                "output": [
                    {
                        "type": "message",
                        "id": "msg_1",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": "ok", "annotations": []}],
                    }
                ],
                "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
            }
            body = response
            events = [{"type": "response.completed", "sequence_number": 1, "response": response}]
        elif path.endswith("/completions") and not path.endswith("/chat/completions"):
            choice = {"index": 0, "text": "ok", "finish_reason": "stop"}
            body = {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            }
            events = [{**body, "usage": None}, {**body, "choices": [], "usage": usage}]
        else:
            message = {"role": "assistant", "content": "ok"}
            head = {"id": "chatcmpl-1", "created": 1, "model": MODEL}
            body = {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
            chunk = {**head, "object": "chat.completion.chunk"}
            events = [
                {**chunk, "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": usage},
            ]
        if stream and events is not None:
            data = (
                b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            )
            content_type = b"text/event-stream"
        else:
            data, content_type = json.dumps(body).encode(), b"application/json"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
        )
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def well_behaved_teacher() -> Iterator[ServerThread]:
    with ServerThread(WellBehavedTeacher()) as server:
        yield server


def _document() -> dict[str, Any]:
    """The gateway's own document, its bodies' ``model`` narrowed to the model it offers.

    Otherwise nearly every fitting body would stop at the 404 of an unknown model.
    """
    document = copy.deepcopy(openapi_document())
    schemas = document["components"]["schemas"]
    for name in ("ChatRequest", "ResponsesRequest", "CompletionRequest", "EmbeddingRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [MODEL]}
    return document


SCHEMA = schemathesis.openapi.from_dict(_document())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    start_gateway: Callable[..., RunningGateway], well_behaved_teacher: ServerThread, mode: GenerationMode
) -> None:
    gateway = start_gateway(
        teacher_url=well_behaved_teacher.url + "/v1",
        teacher={"model": MODEL},
        call_log={"enabled": False},
        gateway={"max_n": 4, "max_output_tokens": 4096, "max_body_bytes": 256 << 10},
    )
    session = requests.Session()
    headers = {"Authorization": f"Bearer {gateway.key}"}
    operations = [result.ok() for result in SCHEMA.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/responses",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "GET /v1/models",
    }
    statuses: dict[int, int] = {}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing of a bodiless GET can break the document

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=gateway.server.url, session=session, headers=headers, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, response.text

        fuzz()
    assert sum(statuses.values()) >= len(operations)  # every operation was called
    if mode is GenerationMode.POSITIVE:
        assert statuses.get(200, 0) > 0  # fitting bodies do reach the teacher
