"""The demo report's arithmetic and the live view's traffic figures (pure)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter as Tally
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from rich.console import Console

from protege.api.calls import CallRecord
from protege.api.specialist import SpecialistStatus
from protege.stack.report import (
    HeldOutScores,
    PriceModel,
    TaskRow,
    agreement_over_time,
    markdown_table,
    plots_png,
    task_rows,
    traffic_over_time,
)
from protege.stack.view import Snapshot, Traffic, parse_traffic, render

START = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def record(
    seconds: float,
    *,
    specialist: bool,
    reason: str | None = None,
    ms: float = 100,
    sampled: float | None = None,
) -> CallRecord:
    """A call; ``sampled``: the specialist's score against a teacher sample of it."""
    upstream = (
        {"kind": "specialist", "model": "intent@v1", "specialist": "intent", "version": "v1"}
        if specialist
        else {"kind": "teacher", "model": "teacher"}
    )
    route = {
        "target": upstream["kind"],
        "reason": reason or ("specialist" if specialist else "no_active_specialist"),
        "specialist": "intent",
    }
    return CallRecord.model_validate(
        {
            "timestamp": (START + timedelta(seconds=seconds)).isoformat(),
            "tenant": "demo",
            "request": {"model": "m", "messages": [{"role": "user", "content": "refund please"}]},
            "response": {"choices": [{"message": {"content": "refund"}}]},
            "usage": {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000},
            "latency": {"total_ms": ms},
            "upstream": upstream,
            "route": route,
            "teacher_sample": None
            if sampled is None
            else {
                "upstream": {"kind": "teacher", "model": "teacher"},
                "usage": {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000},
                "agreement": sampled,
            },
        }
    )


PRICES = PriceModel(
    teacher_input_usd_per_mtok=2,
    teacher_output_usd_per_mtok=10,
    pool_usd_per_gpu_hour=3.6,
    pool_tokens_per_second=1000,
)


def intent_row() -> TaskRow:
    """Four teacher calls, five by the specialist, a fallback; held-out 0.1 for the base, 0.95 for it."""
    records = [record(i, specialist=False, ms=800) for i in range(4)]
    records += [record(10 + i, specialist=True, ms=50, sampled=x) for i, x in enumerate([1, 1, 1, 0])]
    records.append(record(14, specialist=True, ms=50))  # not sampled
    records.append(record(20, specialist=False, reason="fallback_invalid_output", ms=900))
    status = SpecialistStatus.model_validate(
        {"activeVersion": "v1", "versions": [{"version": "v1", "state": "Serving"}]}
    )
    [row] = task_rows(
        {"intent": records},
        {"intent": "intent"},
        {"intent": status},
        {"intent": HeldOutScores("exact_match", 30, base_zero_shot=0.1, specialist=0.95)},
        prices=PRICES,
        recent=6,
    )
    return row


def test_rows_price_quality_latency_share_and_fallbacks() -> None:
    row = intent_row()
    assert row.relative == 0.95 and row.versions == 1 and row.version == "v1"
    assert row.tokens_per_call == 1000
    assert row.teacher_usd_per_1k == 1000 * (900 * 2 + 100 * 10) / 1e6  # $2.80
    assert row.specialist_usd_per_1k == 1000 * 1000 / 1000 * 3.6 / 3600  # one second of a $3.60 hour
    assert row.traffic_share == 5 / 6  # of the last six calls, five by the specialist
    assert row.specialist_p50_ms == 50 and row.teacher_p95_ms is not None and row.teacher_p95_ms >= 800
    assert row.fallbacks == {"fallback_invalid_output": 1}
    table = markdown_table([row])
    assert "| intent | intent@v1 | 1 | exact_match | 1.00 | 0.10 | 0.95 | 95% |" in table
    # live: four teacher samples (three agree) and the fallback (0) over five scored calls
    assert row.live is not None and (row.live.calls, row.live.mean) == (5, 0.6)
    assert row.sampled_share == 4 / 5 and row.samples_usd_per_1k == pytest.approx(1000 * 4 * 0.0028 / 10)
    assert "0.60 [" in table and "n=5" in table and "80% (1.1200)" in table


def test_agreement_over_time_follows_the_last_scored_calls() -> None:
    records = [record(i, specialist=True, sampled=1.0) for i in range(10)]
    records += [record(10 + i, specialist=True, sampled=0.0) for i in range(10)]
    points = agreement_over_time(records, window=10)
    assert len(points) == 20 and points[9][1] == 1.0 and points[-1][1] == 0.0
    assert all(low <= mean <= high for _, mean, low, high in points)


def test_traffic_share_over_time_bins() -> None:
    records = [record(0, specialist=False), record(5, specialist=False), record(35, specialist=True)]
    assert traffic_over_time(records, bin_seconds=30) == [(0, 0.0, 2), (30, 1.0, 1)]


def test_the_gateway_metrics_give_traffic_share_and_fallback_rate() -> None:
    registry = CollectorRegistry()  # the gateway's counter, as its /metrics exposes it
    calls = Counter(
        "protege_router_calls", "calls", ["target", "specialist", "version", "reason"], registry=registry
    )
    calls.labels("specialist", "intent", "v1", "specialist").inc(6)
    calls.labels("teacher", "intent", "v1", "fallback_low_confidence").inc(2)
    calls.labels("teacher", "", "", "no_task_match").inc(2)
    traffic = parse_traffic(generate_latest(registry).decode())
    assert traffic.calls == 10 and traffic.specialist_share == 0.6
    assert traffic.fallbacks == 2 and traffic.fallback_rate == 0.25


def test_the_live_view_shows_parts_tasks_specialists_and_traffic() -> None:
    serving = SpecialistStatus.model_validate(
        {"phase": "Serving", "examples": 64, "newExamples": 3, "activeVersion": "v1", "trafficShare": 100,
         "scoreVsTeacher": 0.97}
    )  # fmt: skip
    canary = SpecialistStatus.model_validate(
        {"phase": "Canary", "examples": 41, "candidateVersion": "v2", "trafficShare": 50}
    )
    view = Snapshot(
        parts={"nats": (101, True, 0), "gateway": (102, False, 2)},
        serving=("RUNNING", ""),
        heartbeat={"at": time.time() - 4, "error": "store unreachable"},
        tasks=[("t-1", "label-order", 64), ("t-2", "search-flights", 41)],
        specialists={"label-order": serving, "search-flights": canary},
        traffic=Traffic(
            by_reason=Tally({"specialist": 6, "fallback_invalid_output": 2, "no_active_specialist": 2}),
            by_specialist=Tally({"label-order": 6}),
        ),
    )
    console = Console(record=True, width=160)
    console.print(render(view))
    text = console.export_text()
    assert "gateway" in text and "down" in text and "RUNNING" in text
    assert "store unreachable" in text and "s ago" in text
    assert "search-flights" in text and "41" in text
    assert "Canary" in text and "v2" in text and "0.97" in text
    assert "10 calls, 60% answered by specialists, fallback rate 25%" in text
    assert "fallback_invalid_output 2" in text

    console = Console(record=True, width=160)
    console.print(render(Snapshot({}, ("NOT_STARTED", ""), {}, [], {}, None)))
    quiet = console.export_text()
    assert "heartbeat" in quiet and "not yet" in quiet and "metrics are not available" in quiet


def test_the_plots_render_with_a_bar_of_calls_per_bin() -> None:
    records = [record(i, specialist=i % 3 == 0) for i in range(0, 300, 4)] + [record(301, specialist=True)]
    traffic = traffic_over_time(records)
    assert traffic[-1] == (300, 1.0, 1)  # the share of a last bin of one call: hence its bar
    scored = [record(i, specialist=True, sampled=float(i % 5 != 0)) for i in range(0, 300, 4)]
    agreement = {"intent": agreement_over_time(scored)}
    png = plots_png([intent_row()], traffic, {"drift": 290.0}, PRICES, agreement=agreement)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_each_task_shows_its_input_drift_beside_the_live_agreement() -> None:
    row = intent_row()
    assert row.drift is None and "n=5 | - | 80% (1.1200) |" in markdown_table([row])  # no novelty: "-"
    records = [record(i, specialist=True, sampled=1.0) for i in range(20)]
    for index, call in enumerate(records):  # the router found 5 of the 20 calls unlike the training calls
        call.route.task_id, call.route.novel = "t-intent", index % 4 == 0
    [row] = task_rows(
        {"intent": records},
        {"intent": "intent"},
        {"intent": SpecialistStatus()},
        {},
        prices=PRICES,
    )
    assert row.drift is not None and (row.drift.calls, row.drift.mean) == (20, 0.25)
    assert row.drift.low < 0.25 < row.drift.high
    table = markdown_table([row])
    header = table.splitlines()[0]
    assert "| live agreement | input drift (novel calls) |" in header
    assert f"n=20 | 25% [{row.drift.low:.0%}, {row.drift.high:.0%}] n=20 |" in table


def test_the_plots_render_before_any_task_has_a_score_or_a_price() -> None:
    """No point to place on the log cost axis yet (no held-out scores, or calls of no kind priced)."""
    unscored = dataclasses.replace(intent_row(), teacher=None, base_zero_shot=None, specialist_score=None)
    unpriced = dataclasses.replace(intent_row(), teacher_usd_per_1k=0.0, specialist_usd_per_1k=0.0)
    for row in (unscored, unpriced):
        assert plots_png([row], [], {}, PRICES).startswith(b"\x89PNG")
