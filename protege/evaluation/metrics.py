"""Task-aware scores of an answer against a reference answer (pure; SQL runs on a given SQLite db).

Every scorer takes two assistant messages (``{"content": ..., "tool_calls": [...]}``) and
returns a score in [0, 1]. The metric follows the task's output kind:

- label → ``exact_match``: 1 if the normalized texts are equal;
- json → ``json_fields``: share of the fields (flattened, dotted) equal in both; 0 if not JSON;
- tool_call → ``tool_call``: per call, half for the function name and half for the
  arguments' field accuracy;
- sql → ``sql_execution``: 1 if both queries return the same rows on the task's database
  (0 if invalid); without a database, 1 for equal normalized SQL;
- prose → ``similarity``: token F1.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

from protege.api.specialist import EvaluationMetric, OutputKind

Message = dict[str, Any]

METRIC_FOR_KIND = {
    OutputKind.LABEL: EvaluationMetric.EXACT_MATCH,
    OutputKind.JSON: EvaluationMetric.JSON_FIELDS,
    OutputKind.TOOL_CALL: EvaluationMetric.TOOL_CALL,
    OutputKind.SQL: EvaluationMetric.SQL_EXECUTION,
    OutputKind.PROSE: EvaluationMetric.SIMILARITY,
}

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)


def text_of(message: Message) -> str:
    """The message's text with a surrounding code fence removed."""
    content = message.get("content") or ""
    text = content if isinstance(content, str) else json.dumps(content)
    fenced = _FENCE.match(text)
    return (fenced.group(1) if fenced else text).strip()


def _normalize(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".!").split())


def exact_match(predicted: Message, reference: Message) -> float:
    return float(_normalize(text_of(predicted)) == _normalize(text_of(reference)))


def parse_json(text: str) -> Any:
    """The JSON value of ``text``, or raise ValueError."""
    return json.loads(text)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, item in value.items():
            items |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return items or {prefix: {}}
    if isinstance(value, list):
        items = {}
        for index, item in enumerate(value):
            items |= _flatten(item, f"{prefix}[{index}]")
        return items or {prefix: []}
    return {prefix: value}


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return _normalize(a) == _normalize(b)
    return bool(a == b)


def field_accuracy(predicted: Any, reference: Any) -> float:
    """Share of fields (of both, flattened) that are present in both with equal values."""
    mine, theirs = _flatten(predicted), _flatten(reference)
    keys = set(mine) | set(theirs)
    if not keys:
        return 1.0
    return sum(k in mine and k in theirs and _same_value(mine[k], theirs[k]) for k in keys) / len(keys)


def json_fields(predicted: Message, reference: Message) -> float:
    try:
        mine = parse_json(text_of(predicted))
    except ValueError:
        return 0.0
    return field_accuracy(mine, parse_json(text_of(reference)))


def _calls(message: Message) -> list[tuple[str, str]]:
    calls = message.get("tool_calls") or []
    return [
        (str(c.get("function", {}).get("name", "")), str(c.get("function", {}).get("arguments", "")))
        for c in calls
    ]


def tool_call(predicted: Message, reference: Message) -> float:
    mine, theirs = _calls(predicted), _calls(reference)
    if not theirs:
        return float(not mine)
    total = 0.0
    for (name, arguments), (want_name, want_arguments) in zip(mine, theirs, strict=False):
        if name != want_name:
            continue
        try:
            total += 0.5 + 0.5 * field_accuracy(json.loads(arguments), json.loads(want_arguments))
        except ValueError:
            total += 0.5  # the right function, with arguments that are not JSON
    return total / max(len(mine), len(theirs))


def run_query(database: sqlite3.Connection, sql: str, max_steps: int = 5_000_000) -> list[tuple[Any, ...]]:
    """Rows of a read-only query; raises sqlite3.Error for invalid SQL, writes, or runaway queries."""
    steps = 0

    def guard() -> int:
        nonlocal steps
        steps += 1
        return int(steps > max_steps // 1000)  # non-zero aborts the statement

    database.execute("PRAGMA query_only = ON")  # a predicted DELETE cannot change the database
    database.set_progress_handler(guard, 1000)
    try:
        cursor = database.execute(sql)
        if cursor.description is None:
            raise sqlite3.OperationalError("not a query: only SELECT statements are evaluated")
        return cursor.fetchall()
    finally:
        database.set_progress_handler(None, 0)


def _normalize_sql(sql: str) -> str:
    return " ".join(sql.lower().rstrip(";").split())


def sql_execution(
    predicted: Message, reference: Message, database: sqlite3.Connection | None = None
) -> float:
    mine, theirs = text_of(predicted), text_of(reference)
    if database is None:
        return float(_normalize_sql(mine) == _normalize_sql(theirs))
    try:
        got = run_query(database, mine)
    except sqlite3.Error:
        return 0.0
    want = run_query(database, theirs)
    ordered = "order by" in theirs.lower()
    return float(got == want if ordered else Counter(got) == Counter(want))


def similarity(predicted: Message, reference: Message) -> float:
    """Token F1 between the two texts (bag of lower-cased words)."""
    mine, theirs = (
        Counter(_normalize(text_of(predicted)).split()),
        Counter(_normalize(text_of(reference)).split()),
    )
    overlap = sum((mine & theirs).values())
    if not mine or not theirs:
        return float(mine == theirs)
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(mine.values()), overlap / sum(theirs.values())
    return 2 * precision * recall / (precision + recall)


def scorer(
    metric: EvaluationMetric, database: sqlite3.Connection | None = None
) -> Callable[[Message, Message], float]:
    """The scoring function of a metric (``auto`` must be resolved from the output kind first)."""
    if metric is EvaluationMetric.SQL_EXECUTION:
        return lambda predicted, reference: sql_execution(predicted, reference, database)
    table: dict[EvaluationMetric, Callable[[Message, Message], float]] = {
        EvaluationMetric.EXACT_MATCH: exact_match,
        EvaluationMetric.JSON_FIELDS: json_fields,
        EvaluationMetric.TOOL_CALL: tool_call,
        EvaluationMetric.SIMILARITY: similarity,
    }
    if metric not in table:
        raise ValueError(
            f"metric {metric.value!r} is resolved from the task's output kind; pass a concrete metric"
        )
    return table[metric]


def resolve_metric(metric: EvaluationMetric, kind: OutputKind) -> EvaluationMetric:
    return METRIC_FOR_KIND[kind] if metric is EvaluationMetric.AUTO else metric
