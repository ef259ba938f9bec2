"""Task-aware metrics, including SQL execution on the workload's real SQLite database."""

from __future__ import annotations

import json
import sqlite3

import pytest

from protege.api.specialist import EvaluationMetric, OutputKind
from protege.evaluation import (
    exact_match,
    field_accuracy,
    json_fields,
    resolve_metric,
    run_query,
    scorer,
    similarity,
    sql_execution,
    tool_call,
)
from protege.workload import build_database, generate


def say(text: str) -> dict:  # type: ignore[type-arg]
    return {"role": "assistant", "content": text}


def call(name: str, **arguments: object) -> dict:  # type: ignore[type-arg]
    return {
        "role": "assistant",
        "tool_calls": [{"function": {"name": name, "arguments": json.dumps(arguments)}}],
    }


def test_exact_match_normalizes_case_space_and_final_period() -> None:
    assert exact_match(say(" Refund_Request. "), say("refund_request")) == 1
    assert exact_match(say("cancel_order"), say("refund_request")) == 0


def test_json_fields_compares_parsed_values_field_by_field() -> None:
    reference = say('{"name": "Anna", "quantity": 3, "city": "Lyon", "product": "mug"}')
    assert (
        json_fields(
            say('```json\n{"city": "lyon", "name": "Anna", "quantity": 3.0, "product": "mug"}\n```'),
            reference,
        )
        == 1
    )
    assert (
        json_fields(say('{"name": "Anna", "quantity": 4, "city": "Lyon", "product": "mug"}'), reference)
        == 0.75
    )
    assert json_fields(say('{"name": "Anna"'), reference) == 0  # invalid JSON
    assert field_accuracy({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == 0.5
    assert field_accuracy({"ok": True}, {"ok": 1}) == 0  # booleans are not numbers


def test_tool_call_scores_name_and_arguments() -> None:
    reference = call("search_flights", origin="Paris", destination="Rome", date="2026-03-04")
    assert (
        tool_call(call("search_flights", date="2026-03-04", origin="Paris", destination="Rome"), reference)
        == 1
    )
    assert tool_call(
        call("search_flights", origin="Paris", destination="Oslo", date="2026-03-04"), reference
    ) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert tool_call(call("book_hotel", origin="Paris"), reference) == 0
    assert tool_call(say("I will search flights for you."), reference) == 0
    assert tool_call(say("no tools needed"), say("fine")) == 1


def test_sql_execution_compares_result_rows() -> None:
    db = build_database()
    reference = say("SELECT COUNT(*) FROM orders WHERE status = 'shipped';")
    assert sql_execution(say("select count(id) from orders where status='shipped'"), reference, db) == 1
    assert sql_execution(say("SELECT COUNT(*) FROM orders"), reference, db) == 0
    assert sql_execution(say("SELECT COUNT(*) FROM order"), reference, db) == 0  # invalid: no such table
    assert sql_execution(say("DELETE FROM orders"), reference, db) == 0  # refused, and nothing deleted
    assert run_query(db, "SELECT COUNT(*) FROM orders") == [(300,)]
    assert sql_execution(say("SELECT 1; SELECT 2"), reference, db) == 0
    unordered = say("SELECT name FROM products WHERE price > 10")
    assert (
        sql_execution(say("SELECT name FROM products WHERE 10 < price ORDER BY name DESC"), unordered, db)
        == 1
    )
    assert (
        sql_execution(say("SELECT count(*) FROM orders"), say("SELECT COUNT(*) FROM orders;")) == 1
    )  # no database
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        run_query(
            db, "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
        )


def test_every_teacher_answer_of_the_workload_scores_one_against_itself() -> None:
    db = build_database()
    for workload_call in generate(100, seed=5):
        answer = workload_call.answer
        kind = {"intent": OutputKind.LABEL, "extract": OutputKind.JSON, "tool": OutputKind.TOOL_CALL}.get(
            workload_call.task, OutputKind.SQL
        )
        score = scorer(resolve_metric(EvaluationMetric.AUTO, kind), db)
        assert score(answer, answer) == 1, workload_call.task


def test_similarity_is_token_f1() -> None:
    assert similarity(say("the order ships today"), say("The order ships today.")) == 1
    assert similarity(say("the order ships"), say("the order ships today")) == pytest.approx(
        2 * 1 * 0.75 / 1.75
    )
    assert similarity(say(""), say("text")) == 0


def test_auto_must_be_resolved() -> None:
    with pytest.raises(ValueError, match="resolved from the task's output kind"):
        scorer(EvaluationMetric.AUTO)
    assert resolve_metric(EvaluationMetric.AUTO, OutputKind.SQL) is EvaluationMetric.SQL_EXECUTION
    assert resolve_metric(EvaluationMetric.SIMILARITY, OutputKind.SQL) is EvaluationMetric.SIMILARITY
