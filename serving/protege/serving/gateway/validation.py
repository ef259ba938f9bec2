"""Checking request bodies before anything is sent upstream (pure).

The gateway forwards every field it does not know unchanged: an SDK that sends a new
parameter must not break. It refuses only what it cannot pass on or read itself — a body
that is not a JSON object, a field it reads (``model``, ``messages``, ``stream``,
``stream_options``, ``tools``, ...) of the wrong type, a model it does not offer — with a
400/404 that says what is wrong and how to fix it; and what its operator bounds
(:class:`Bounds`): how deeply the body nests, ``n``, the output-token caps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from protege.api.calls import ChatRequest
from protege.api.responses import ChatView, ConversionError, chat_request
from protege.serving.gateway.errors import GatewayError


@dataclass(frozen=True)
class Bounds:
    """What the operator lets one call ask for (gateway.max_json_depth, max_n, max_output_tokens)."""

    max_json_depth: int = 64
    max_n: int | None = None
    max_output_tokens: int | None = None


NO_BOUNDS = Bounds()


@dataclass(frozen=True)
class Parsed:
    data: dict[str, Any]  # the body as the caller sent it
    chat: ChatRequest  # the call in chat-completions shape: what the record holds and the router reads


@dataclass(frozen=True)
class ParsedResponses(Parsed):
    view: ChatView  # the chat shape, and whether only the teacher can answer
    continued: bool = False  # ``data`` holds the conversation of the response it continues, put back


def _too_deep(api: str, limit: int) -> GatewayError:
    return GatewayError(
        400,
        f"The JSON body of your request nests arrays and objects more than {limit} levels deep, more "
        f"than this gateway accepts (gateway.max_json_depth). Send {api} parameters nested less deeply.",
        code="json_too_deep",
    )


def _depth_within(data: object, limit: int) -> bool:
    """Whether ``data`` nests at most ``limit`` arrays and objects deep (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def _json_object(body: bytes, api: str, bounds: Bounds = NO_BOUNDS) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        raise _too_deep(api, bounds.max_json_depth) from None
    except ValueError as error:
        raise GatewayError(
            400,
            f"We could not parse the JSON body of your request ({error}). The body must be a JSON "
            f"object of {api} parameters.",
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(400, f"The request body must be a JSON object of {api} parameters.")
    limit = bounds.max_json_depth
    # fewer brackets than the limit cannot nest deeper than it (counted in C: most bodies stop here)
    if body.count(b"[") + body.count(b"{") > limit and not _depth_within(data, limit):
        raise _too_deep(api, limit)
    return data


def _bounded(name: str, value: object, bound: int | None, setting: str, what: str) -> None:
    """A 400 naming the field, its value and the bound when an integer field is above its bound."""
    if bound is None or not isinstance(value, int) or isinstance(value, bool) or value <= bound:
        return
    raise GatewayError(
        400,
        f"Invalid value for '{name}': {value} is above this gateway's limit of {bound} ({setting}). "
        f"Ask for at most {bound} {what}, or ask your Protégé operator to raise {setting}.",
        param=name,
        code="integer_above_max_value",
    )


def _as_int(value: object) -> object:
    """An integer field as an upstream's lax parser would read it ("5" and 5.0 are 5)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_bounds(
    request: ChatRequest, data: dict[str, Any], bounds: Bounds, *, responses: bool = False
) -> None:
    choices, tokens = "choices per call", "output tokens"
    _bounded("n", request.n, bounds.max_n, "gateway.max_n", choices)
    _bounded("best_of", _as_int(data.get("best_of")), bounds.max_n, "gateway.max_n", choices)
    _bounded("max_tokens", request.max_tokens, bounds.max_output_tokens, "gateway.max_output_tokens", tokens)
    name = "max_output_tokens" if responses else "max_completion_tokens"
    cap = request.max_completion_tokens
    _bounded(name, cap, bounds.max_output_tokens, "gateway.max_output_tokens", tokens)


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(error: ValidationError, data: dict[str, Any], api: str) -> GatewayError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "missing":
        message = f"Invalid value for '{where}': the field is required ({api} requests carry it)."
    else:
        message = (
            f"Invalid value for '{where}': {first['msg']} (got {_shown(first['input'])}). The gateway "
            f"reads this field, so it must have the type the {api} API gives it."
        )
    return GatewayError(400, message, param=where)


def _strict_bool(data: dict[str, Any], name: str, api: str) -> None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise GatewayError(
            400,
            f"Invalid value for '{name}': expected a boolean (true or false), got {_shown(value)}.",
            param=name,
        )
    options = data.get("stream_options") if name == "stream" else None
    if options is not None and not isinstance(options, dict):
        raise GatewayError(
            400,
            f"Invalid value for 'stream_options': expected an object such as "
            f'{{"include_usage": true}}, got {_shown(options)}.',
            param="stream_options",
        )
    if isinstance(options, dict):
        _strict_bool(options, "include_usage", api)


def _model_offered(
    model: str, models: Collection[str], is_specialist: Callable[[str], bool] | None = None
) -> None:
    if model not in models and not (is_specialist and is_specialist(model)):
        offered = ", ".join(sorted(models)) or "none configured"
        raise GatewayError(
            404,
            f"The model '{model}' does not exist on this gateway. Available models: {offered} "
            "(GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        shown = "it is missing" if model is None else f"got {_shown(model)}"
        raise GatewayError(
            400,
            f"Invalid value for 'model': a model name (a non-empty string) is required; {shown}.",
            param="model",
        )
    return model


def parse_chat_request(
    body: bytes,
    *,
    models: Collection[str],
    is_specialist: Callable[[str], bool] | None = None,
    bounds: Bounds = NO_BOUNDS,
) -> Parsed:
    """A ``/v1/chat/completions`` body, or a 400/404 GatewayError saying what is wrong and how to fix it."""
    api = "chat-completions"
    data = _json_object(body, api, bounds)
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as error:
        raise _invalid(error, data, api) from None
    _strict_bool(data, "stream", api)
    _strict_bool(data, "logprobs", api)
    _check_bounds(request, data, bounds)
    _model_offered(request.model, models, is_specialist)
    return Parsed(data, request)


def parse_completions_request(body: bytes, *, models: Collection[str], bounds: Bounds = NO_BOUNDS) -> Parsed:
    """A legacy ``/v1/completions`` body; its record holds the prompt as one user message."""
    api = "completions"
    data = _json_object(body, api, bounds)
    model = _model(data)
    prompt = data.get("prompt")
    if not isinstance(prompt, str | list):
        shown = "it is missing" if prompt is None else f"got {_shown(prompt)}"
        raise GatewayError(
            400,
            f"Invalid value for 'prompt': a string or an array of strings or tokens is required; {shown}.",
            param="prompt",
        )
    _strict_bool(data, "stream", api)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    record: dict[str, Any] = {key: value for key, value in data.items() if key not in ("prompt", "logprobs")}
    record["messages"] = [
        {"role": "user", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)}
    ]
    if isinstance(data.get("logprobs"), int) and not isinstance(data["logprobs"], bool):
        record["logprobs"], record["top_logprobs"] = True, data["logprobs"]
    try:
        request = ChatRequest.model_validate(record)
    except ValidationError as error:
        raise _invalid(error, data, api) from None
    _check_bounds(request, data, bounds)
    _model_offered(model, models)
    return Parsed(data, request)


def parse_embeddings_request(
    body: bytes, *, models: Collection[str], bounds: Bounds = NO_BOUNDS
) -> dict[str, Any]:
    """A ``/v1/embeddings`` body: a JSON object with a model the gateway offers and an input."""
    api = "embeddings"
    data = _json_object(body, api, bounds)
    model = _model(data)
    if not isinstance(data.get("input"), str | list):
        shown = "it is missing" if data.get("input") is None else f"got {_shown(data['input'])}"
        raise GatewayError(
            400,
            f"Invalid value for 'input': a string or an array of strings or tokens is required; {shown}.",
            param="input",
        )
    _model_offered(model, models)
    return data


def parse_responses_request(
    body: bytes,
    *,
    models: Collection[str],
    is_specialist: Callable[[str], bool] | None = None,
    bounds: Bounds = NO_BOUNDS,
    continued: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> ParsedResponses:
    """A ``/v1/responses`` body and its chat-completions shape (:mod:`protege.api.responses`).

    ``continued`` gives the request with the conversation of the response it continues put back
    (:mod:`protege.serving.gateway.kept_responses`), or None to take it as it came.
    """
    api = "Responses"
    data = _json_object(body, api, bounds)
    whole = continued(data) if continued is not None else None
    data = whole or data
    model = _model(data)
    try:
        view = chat_request(data)
    except ConversionError as error:
        raise GatewayError(400, error.message, param=error.param) from None
    _strict_bool(data, "stream", api)
    try:
        request = ChatRequest.model_validate(view.body)
    except ValidationError as error:
        raise _invalid(error, data, api) from None
    _check_bounds(request, data, bounds, responses=True)
    specialist = bool(is_specialist and is_specialist(model))
    if specialist and view.teacher_only is not None:
        raise GatewayError(
            400,
            f"The model '{model}' is a specialist, and this request can only be answered by the teacher "
            f"(it carries {view.teacher_only}). Send the whole conversation as 'input' without those, "
            "or ask for the teacher's model.",
            param="model",
        )
    _model_offered(model, models, is_specialist)
    return ParsedResponses(data, request, view, continued=whole is not None)
