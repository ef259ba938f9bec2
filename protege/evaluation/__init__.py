"""Scoring answers against references, per task kind (used by training's evaluation and the router)."""

from protege.evaluation.metrics import (
    METRIC_FOR_KIND,
    exact_match,
    field_accuracy,
    json_fields,
    resolve_metric,
    run_query,
    scorer,
    similarity,
    sql_execution,
    text_of,
    tool_call,
)

__all__ = [
    "METRIC_FOR_KIND",
    "exact_match",
    "field_accuracy",
    "json_fields",
    "resolve_metric",
    "run_query",
    "scorer",
    "similarity",
    "sql_execution",
    "text_of",
    "tool_call",
]
