"""Chats with tools for base models whose chat template knows no tools (SmolLM2's, for one).

Such a template silently drops a request's ``tools`` and an answer's ``tool_calls``. For
those models, training and serving both write tools and tool calls into the messages in the
Hermes format that vLLM's ``hermes`` tool parser reads back: the tool schemas in ``<tools>``
in the system prompt, each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
each tool result as a user turn in ``<tool_response>``. One function writes it for both, so
a specialist is served the prompt it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in str(template) and "tool_calls" in str(template)


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template saved with a model (``chat_template.jinja`` or the tokenizer config)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        template = json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None


def hermes_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Tools and tool calls as plain text, in the Hermes format vLLM's parser reads."""
    out = []
    for original in messages:
        message = dict(original)
        if message.get("tool_calls"):
            calls = [_hermes_call(call.get("function", {})) for call in message.pop("tool_calls")]
            message["content"] = "\n".join(filter(None, [message.get("content"), *calls]))
        if message.get("role") == "tool":
            message = {
                "role": "user",
                "content": f"<tool_response>\n{message.get('content')}\n</tool_response>",
            }
        message["content"] = message.get("content") or ""
        out.append(message)
    if tools:
        schemas = "\n".join(json.dumps(tool.get("function", tool)) for tool in tools)
        preamble = (
            "You may call one or more functions. Function signatures are within <tools></tools>:\n"
            f"<tools>\n{schemas}\n</tools>\nFor each call, return a JSON object with the function name and "
            'arguments within <tool_call></tool_call> tags: {"name": <name>, "arguments": <arguments>}'
        )
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def tools_in_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions request with its tools and tool turns written into the messages.

    ``tools`` and ``tool_choice`` stay in the request: vLLM's parser needs them to turn the
    ``<tool_call>`` text of the answer back into ``tool_calls``.
    """
    messages = request.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return request  # not ours to judge: the engine answers a malformed request
    has_tool_turns = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not request.get("tools") and not has_tool_turns:
        return request
    return {**request, "messages": hermes_messages(messages, request.get("tools"))}


def _hermes_call(function: dict[str, Any]) -> str:
    try:
        arguments: Any = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = function.get("arguments")
    return f"<tool_call>\n{json.dumps({'name': function.get('name'), 'arguments': arguments})}\n</tool_call>"
