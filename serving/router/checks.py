"""Is a specialist's answer fit to return? Output validation and confidence (pure).

Per the Specialist's ``fallback`` policy an answer must parse as JSON, satisfy a JSON
schema, be a well-formed call of an offered tool, or be SQL that SQLite's own parser
accepts; and its mean token probability must reach ``minConfidence``. Any failure sends
the call to the teacher, and the reason is recorded with both answers.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from protege.api.specialist import FallbackSpec, OutputValidation


def rejection(
    policy: FallbackSpec, message: dict[str, Any], tools: list[dict[str, Any]] | None
) -> str | None:
    """Why ``message`` (an assistant message) fails the policy's validation; None when it passes."""
    check = policy.validate_output
    content = message.get("content") or ""
    if check is OutputValidation.NONE:
        return None
    if check is OutputValidation.TOOL_CALL:
        return _tool_call_problem(message, tools)
    if check is OutputValidation.SQL:
        return _sql_problem(content)
    try:
        value = json.loads(_strip_fence(content))
    except ValueError as error:
        return f"not JSON: {error}"
    if check is OutputValidation.JSON_SCHEMA:
        import jsonschema

        try:
            jsonschema.validate(value, policy.json_schema or {})
        except jsonschema.ValidationError as error:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            return f"does not match fallback.jsonSchema at {where}: {error.message}"
    return None


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _tool_call_problem(message: dict[str, Any], tools: list[dict[str, Any]] | None) -> str | None:
    calls = message.get("tool_calls") or []
    if not calls:
        return "no tool call in the answer"
    offered = {str(t.get("function", {}).get("name")): t.get("function", {}) for t in tools or []}
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name")
        if offered and name not in offered:
            return f"calls {name!r}, which is not among the offered tools {sorted(offered)}"
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError as error:
            return f"arguments of {name!r} are not JSON: {error}"
        required = offered.get(str(name), {}).get("parameters", {}).get("required", [])
        missing = [key for key in required if not isinstance(arguments, dict) or key not in arguments]
        if missing:
            return f"call of {name!r} lacks required arguments {missing}"
    return None


def _sql_problem(text: str) -> str | None:
    """SQLite's parser decides; unknown tables or columns are fine here (no schema at hand)."""
    sql = _strip_fence(text).rstrip(";").strip()
    if not sql:
        return "empty SQL"
    with sqlite3.connect(":memory:") as db:
        try:
            db.execute(f"EXPLAIN {sql}")
        except (sqlite3.Warning, sqlite3.ProgrammingError):
            return "more than one SQL statement"
        except sqlite3.Error as error:
            message = str(error)
            if message.startswith(("no such table", "no such column", "no such function")):
                return None
            return f"not valid SQL: {message}"
    return None


def confidence(choice: dict[str, Any]) -> float | None:
    """Mean token probability of a choice from its logprobs; None when it has none."""
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    values = [t["logprob"] for t in tokens if isinstance(t, dict) and t.get("logprob") is not None]
    if not values:
        return None
    return sum(math.exp(max(v, -100.0)) for v in values) / len(values)
