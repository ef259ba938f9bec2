"""The gateway's OpenAPI document: its endpoints and the request bodies it really reads.

The chat-completions body is the call record's own model (:class:`ChatRequest`), so the
document cannot drift from what the gateway checks; the other bodies are described by
hand, with the fields the gateway reads typed and every other field allowed (the gateway
forwards what it does not know). Served at ``GET /openapi.json``; the fuzzing test
(``tests/serving/test_gateway_fuzz.py``) generates requests from it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from protege.api.calls import ChatRequest
from protege.version import __version__

_REF = "#/components/schemas/{model}"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_MODEL = {"type": "string", "minLength": 1, "description": "A model GET /v1/models lists, or a specialist."}
_STREAM = {"type": "boolean", "description": "Answer as server-sent events."}
_TOKENS = {"type": "integer", "description": "Token ids."}

_COMPLETION_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "required": ["model", "prompt"],
    "properties": {
        "model": _MODEL,
        "prompt": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": _TOKENS},
                {"type": "array", "items": {"type": "array", "items": _TOKENS}},
            ]
        },
        "stream": _STREAM,
        "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
        "max_tokens": _nullable({"type": "integer"}),
        "n": _nullable({"type": "integer"}),
        "best_of": _nullable({"type": "integer"}),
        "logprobs": _nullable({"type": "integer"}),
        "temperature": _nullable({"type": "number"}),
    },
}

_EMBEDDING_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": _TOKENS},
            ]
        },
        "encoding_format": {"type": "string"},
        "dimensions": {"type": "integer"},
    },
}

_INPUT_ITEM: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "description": "A message ({role, content}), a function_call or a function_call_output item.",
    "properties": {
        "type": {"type": "string"},
        "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "call_id": {"type": "string"},
        "name": {"type": "string"},
        "arguments": {"type": "string"},
        "output": {"type": "string"},
    },
}

_RESPONSES_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _INPUT_ITEM}]},
        "instructions": _nullable({"type": "string"}),
        "stream": _STREAM,
        "max_output_tokens": _nullable({"type": "integer"}),
        "temperature": _nullable({"type": "number"}),
        "tools": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "text": {"type": "object", "additionalProperties": True},
        "previous_response_id": _nullable({"type": "string"}),
        "store": {"type": "boolean"},
    },
}

_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string", "description": "What is wrong and how to fix it."},
                "type": {"type": "string"},
                "param": _nullable({"type": "string"}),
                "code": _nullable({"type": "string"}),
            },
        }
    },
}

_REFUSALS = {
    "400": "Invalid body: not a JSON object, nested too deeply, a field of the wrong type or over its bound.",
    "401": "No key, or an unknown or revoked one.",
    "404": "A model the gateway does not offer (another tenant's specialist included).",
    "413": "Body larger than gateway.max_body_bytes.",
    "429": "A key's or a tenant's limit was reached; retry-after says when to come back.",
    "502": "The teacher could not be reached (or a named specialist failed).",
    "504": "The teacher did not answer within teacher.timeout_seconds.",
}


def _post(summary: str, body: str, *, streams: bool = True) -> dict[str, Any]:
    ok: dict[str, Any] = {_JSON: {"schema": {"type": "object"}}}
    if streams:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "The upstream's answer.", "content": ok}}
    for status, description in _REFUSALS.items():
        responses[status] = {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}
    responses["429"]["headers"] = {
        "retry-after": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(body)}}},
            "responses": responses,
        }
    }


def _get(summary: str, *, secured: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {_JSON: {"schema": {"type": "object"}}}}},
    }
    if secured:
        operation["responses"]["401"] = {
            "description": "No key, or an unknown one.",
            "content": {_JSON: {"schema": _ref("Error")}},
        }
    else:
        operation["security"] = []
        operation["responses"]["503"] = {"description": "Not ready: no models or no keys configured."}
    return {"get": operation}


@cache
def _chat_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(ChatRequest, "validation")], ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's API port (``/metrics`` is on its own port)."""
    schemas = {
        **_chat_schemas(),
        "CompletionRequest": _COMPLETION_REQUEST,
        "EmbeddingRequest": _EMBEDDING_REQUEST,
        "ResponsesRequest": _RESPONSES_REQUEST,
        "Error": _ERROR,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Protégé gateway",
            "version": __version__,
            "description": "OpenAI-compatible: every call is forwarded to the teacher or routed to a "
            "specialist, and logged. Errors are OpenAI-style bodies whose message says how to fix them.",
        },
        "security": [{"bearer": []}, {"azureKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A Protégé gateway key."},
                "azureKey": {"type": "apiKey", "in": "header", "name": "api-key"},
            },
            "schemas": schemas,
        },
        "paths": {
            "/v1/chat/completions": _post("A chat completion (captured, routed).", "ChatRequest"),
            "/v1/responses": _post("A Responses API call (captured, routed).", "ResponsesRequest"),
            "/v1/completions": _post("A legacy completion (captured, teacher only).", "CompletionRequest"),
            "/v1/embeddings": _post("Embeddings (teacher only, counted).", "EmbeddingRequest", streams=False),
            "/v1/models": _get("The models callers may ask for."),
            "/healthz": _get("Liveness.", secured=False),
            "/readyz": _get("Readiness: models and keys configured.", secured=False),
        },
    }


__all__ = ["openapi_document"]
