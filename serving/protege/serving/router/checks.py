"""Is a specialist's answer fit to return? Output validation and confidence (pure).

Per the Specialist's ``fallback`` policy an answer must parse as JSON, satisfy a JSON
schema, be a well-formed call of an offered tool, or be SQL that SQLite's own parser
accepts; and its confidence must pass the version's rule: the mean token probability
against ``minConfidence`` when that is set, otherwise the check calibrated on the version's
held-out split (:mod:`protege.evaluation.calibration`). Any failure sends the call to the
teacher, and the reason is recorded with both answers.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from protege.api.specialist import ConfidenceSignal, FallbackSpec, OutputValidation
from protege.serving.router.table import SpecialistRoute


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


@dataclass(frozen=True)
class ConfidenceRule:
    """Below ``threshold`` on ``signal``, an answer goes to the teacher; ``source`` says who set it."""

    signal: ConfidenceSignal
    threshold: float
    source: str


def confidence_rule(route: SpecialistRoute, version: str) -> ConfidenceRule | None:
    """The version's confidence rule: ``minConfidence`` when set, else its calibrated check, if any."""
    fallback = route.fallback
    if fallback.min_confidence is not None:
        return ConfidenceRule(ConfidenceSignal.MEAN, fallback.min_confidence, "fallback.minConfidence")
    check = route.confidence_checks.get(version)
    if not fallback.calibrated_confidence or check is None:
        return None
    source = f"calibrated on {check.examples} held-out answers, {check.disagreements} wrong"
    return ConfidenceRule(check.signal, check.threshold, source)


def token_logprobs(choice: dict[str, Any]) -> list[float]:
    """The log-probabilities of a choice's tokens (OpenAI ``logprobs.content``); empty without them."""
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    return [float(t["logprob"]) for t in tokens if isinstance(t, dict) and t.get("logprob") is not None]
