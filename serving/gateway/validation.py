"""Checking a chat-completions request body before anything is sent upstream (pure)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

from pydantic import ValidationError

from protege.api.calls import ChatRequest
from protege.serving.gateway.errors import GatewayError

# Every top-level field of OpenAI's chat-completions request.
OPENAI_FIELDS = frozenset(
    {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model", "n",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "reasoning_effort",
        "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
        "verbosity", "web_search_options",
    }
)  # fmt: skip


def parse_chat_request(
    body: bytes,
    *,
    models: Collection[str],
    extra_fields: Collection[str],
    is_specialist: Callable[[str], bool] | None = None,
) -> ChatRequest:
    """The validated request, or a 400/404 GatewayError saying what is wrong and how to fix it."""
    try:
        data = json.loads(body)
    except ValueError as error:
        raise GatewayError(
            400,
            f"We could not parse the JSON body of your request ({error}). The body must be a JSON "
            "object of chat-completions parameters.",
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(400, "The request body must be a JSON object of chat-completions parameters.")
    unknown = sorted(set(data) - OPENAI_FIELDS - set(extra_fields))
    if unknown:
        raise GatewayError(
            400,
            f"Unrecognized request argument supplied: {', '.join(unknown)}. The gateway accepts "
            "OpenAI's chat-completions parameters; an operator can pass vendor extensions through "
            "with gateway.extra_request_fields.",
            param=unknown[0],
        )
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise GatewayError(400, f"Invalid value for '{where}': {first['msg']}.", param=where) from None
    if request.model not in models and not (is_specialist and is_specialist(request.model)):
        offered = ", ".join(sorted(models)) or "none configured"
        raise GatewayError(
            404,
            f"The model '{request.model}' does not exist on this gateway. Available models: {offered} "
            "(GET /v1/models lists them).",
            code="model_not_found",
            param="model",
        )
    return request
