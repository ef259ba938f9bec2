"""The demo's report: per task, quality (teacher, base zero-shot, specialist), latency, tokens,
cost per 1,000 calls, traffic share, fallbacks, live agreement, input drift; versions over time.
Pure: data in, rows out; the rendering (terminal table, Markdown, HTML with plots) is separate.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field
from rich.table import Table

from protege.api.calls import CallRecord, UpstreamKind
from protege.api.specialist import SpecialistStatus
from protege.capture.stats import percentile
from protege.flywheel.policy import Estimate, estimate
from protege.flywheel.rollout import input_drift, record_scores


class PriceModel(BaseModel):
    """What a call costs: the teacher by the token, a specialist by its share of a GPU-hour."""

    teacher_input_usd_per_mtok: float = Field(
        default=2.50, ge=0, description="Teacher $ per 1M prompt tokens."
    )
    teacher_output_usd_per_mtok: float = Field(
        default=10.0, ge=0, description="Teacher $ per 1M completion tokens."
    )
    pool_usd_per_gpu_hour: float = Field(default=0.80, ge=0, description="One pool replica's GPU-hour.")
    pool_tokens_per_second: float = Field(
        default=5000,
        gt=0,
        description="Tokens (prompt + completion) one replica processes per second, batched.",
    )

    def teacher_cost(self, prompt: float, completion: float) -> float:
        return (
            prompt * self.teacher_input_usd_per_mtok + completion * self.teacher_output_usd_per_mtok
        ) / 1e6

    def specialist_cost(self, prompt: float, completion: float) -> float:
        return (prompt + completion) / self.pool_tokens_per_second * self.pool_usd_per_gpu_hour / 3600

    def describe(self) -> str:
        return (
            f"teacher ${self.teacher_input_usd_per_mtok:g}/M prompt + "
            f"${self.teacher_output_usd_per_mtok:g}/M completion tokens; "
            f"pool ${self.pool_usd_per_gpu_hour:g}/GPU-hour at "
            f"{self.pool_tokens_per_second:g} tokens/s per replica"
        )


@dataclass(frozen=True)
class HeldOutScores:
    """Scores on the workload's held-out calls (never trained on), against the teacher's answers."""

    metric: str
    calls: int
    base_zero_shot: float
    specialist: float
    teacher: float = 1.0  # the teacher's answers are the references


@dataclass
class TaskRow:
    family: str
    specialist: str
    version: str | None
    versions: int
    metric: str
    teacher: float
    base_zero_shot: float | None
    specialist_score: float | None
    teacher_p50_ms: float | None
    teacher_p95_ms: float | None
    specialist_p50_ms: float | None
    specialist_p95_ms: float | None
    tokens_per_call: float
    teacher_usd_per_1k: float
    specialist_usd_per_1k: float
    traffic_share: float  # over the family's last calls
    fallbacks: dict[str, int] = field(default_factory=dict)
    sampled_share: float = 0.0  # of the calls specialists answered, the share the teacher answered too
    samples_usd_per_1k: float = 0.0  # the teacher samples' cost per 1,000 calls of the task
    live: Estimate | None = None  # the agreement with the teacher over every scored call
    drift: Estimate | None = None  # the share of its calls the router found unlike the training calls

    @property
    def relative(self) -> float | None:
        if self.specialist_score is None or not self.teacher:
            return None
        return self.specialist_score / self.teacher


def _latencies(records: Sequence[CallRecord], kind: UpstreamKind) -> tuple[float | None, float | None]:
    values = sorted(r.latency.total_ms for r in records if r.upstream is not None and r.upstream.kind is kind)
    if not values:
        return None, None
    return percentile(values, 50), percentile(values, 95)


def task_rows(
    records_by_family: dict[str, list[CallRecord]],
    specialist_of: dict[str, str],
    statuses: dict[str, SpecialistStatus],
    held_out: dict[str, HeldOutScores],
    *,
    prices: PriceModel,
    recent: int = 100,
    confidence: float = 0.9,
) -> list[TaskRow]:
    rows = []
    for family, records in sorted(records_by_family.items()):
        name = specialist_of.get(family)
        if name is None or not records:
            continue
        status = statuses.get(name, SpecialistStatus())
        scores = held_out.get(family)
        prompt = sum(r.usage.prompt_tokens for r in records if r.usage) / len(records)
        completion = sum(r.usage.completion_tokens for r in records if r.usage) / len(records)
        last = records[-recent:]
        teacher_p50, teacher_p95 = _latencies(records, UpstreamKind.TEACHER)
        specialist_p50, specialist_p95 = _latencies(records, UpstreamKind.SPECIALIST)
        fallbacks = Counter(
            r.route.reason.value for r in records if r.route.reason.value.startswith("fallback_")
        )
        answered = [
            r for r in records if r.upstream is not None and r.upstream.kind is UpstreamKind.SPECIALIST
        ]
        samples = [r.teacher_sample.usage for r in answered if r.teacher_sample is not None]
        samples_usd = sum(prices.teacher_cost(u.prompt_tokens, u.completion_tokens) for u in samples if u)
        rows.append(
            TaskRow(
                family=family,
                specialist=name,
                version=status.active_version,
                versions=len([v for v in status.versions if v.version]),
                metric=scores.metric if scores else "-",
                teacher=scores.teacher if scores else 1.0,
                base_zero_shot=scores.base_zero_shot if scores else None,
                specialist_score=scores.specialist if scores else None,
                teacher_p50_ms=teacher_p50,
                teacher_p95_ms=teacher_p95,
                specialist_p50_ms=specialist_p50,
                specialist_p95_ms=specialist_p95,
                tokens_per_call=prompt + completion,
                teacher_usd_per_1k=1000 * prices.teacher_cost(prompt, completion),
                specialist_usd_per_1k=1000 * prices.specialist_cost(prompt, completion),
                traffic_share=sum(
                    r.upstream is not None and r.upstream.kind is UpstreamKind.SPECIALIST for r in last
                )
                / len(last),
                fallbacks=dict(fallbacks),
                sampled_share=len(samples) / len(answered) if answered else 0.0,
                samples_usd_per_1k=1000 * samples_usd / len(records),
                live=estimate([x for r in records for x in record_scores(r)], confidence),
                drift=input_drift(records, None, confidence),
            )
        )
    return rows


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


COLUMNS = (
    "task", "specialist", "versions", "metric", "teacher", "base 0-shot", "specialist", "% of teacher",
    "p50/p95 ms teacher", "p50/p95 ms specialist", "tokens/call", "$/1k teacher", "$/1k specialist",
    "traffic share", "fallbacks", "live agreement", "input drift (novel calls)", "teacher-sampled ($/1k)",
)  # fmt: skip


def _estimate(live: Estimate | None) -> str:
    return "-" if live is None else f"{live.mean:.2f} [{live.low:.2f}, {live.high:.2f}] n={live.calls}"


def row_cells(row: TaskRow) -> list[str]:
    relative = row.relative
    fallbacks = ", ".join(f"{reason.removeprefix('fallback_')} {n}" for reason, n in row.fallbacks.items())
    return [
        row.family,
        f"{row.specialist}@{row.version}" if row.version else f"{row.specialist} (not serving)",
        str(row.versions),
        row.metric,
        _score(row.teacher),
        _score(row.base_zero_shot),
        _score(row.specialist_score),
        "-" if relative is None else f"{relative:.0%}",
        f"{_ms(row.teacher_p50_ms)}/{_ms(row.teacher_p95_ms)}",
        f"{_ms(row.specialist_p50_ms)}/{_ms(row.specialist_p95_ms)}",
        f"{row.tokens_per_call:.0f}",
        f"{row.teacher_usd_per_1k:.3f}",
        f"{row.specialist_usd_per_1k:.4f}",
        f"{row.traffic_share:.0%}",
        fallbacks or "-",
        "-"
        if row.live is None
        else f"{row.live.mean:.2f} [{row.live.low:.2f}, {row.live.high:.2f}] n={row.live.calls}",
        "-"
        if row.drift is None
        else f"{row.drift.mean:.0%} [{row.drift.low:.0%}, {row.drift.high:.0%}] n={row.drift.calls}",
        f"{row.sampled_share:.0%} ({row.samples_usd_per_1k:.4f})",
    ]


def terminal_table(rows: Sequence[TaskRow], title: str) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(
            column, justify="left" if column in ("task", "specialist", "metric", "fallbacks") else "right"
        )
    for row in rows:
        table.add_row(*row_cells(row))
    return table


def markdown_table(rows: Sequence[TaskRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


TRAFFIC_BIN_SECONDS = 30


def traffic_over_time(
    records: Sequence[CallRecord], bin_seconds: float = TRAFFIC_BIN_SECONDS
) -> list[tuple[float, float, int]]:
    """(seconds since the first call, share answered by specialists, calls) per time bin."""
    if not records:
        return []
    start = min(r.timestamp for r in records)
    bins: dict[int, list[bool]] = defaultdict(list)
    for record in records:
        index = int((record.timestamp - start).total_seconds() // bin_seconds)
        bins[index].append(record.upstream is not None and record.upstream.kind is UpstreamKind.SPECIALIST)
    return [(i * bin_seconds, sum(b) / len(b), len(b)) for i, b in sorted(bins.items())]


AGREEMENT_WINDOW = 20  # scored calls behind each point of the agreement-over-time plot


def agreement_over_time(
    records: Sequence[CallRecord], confidence: float = 0.9, window: int = AGREEMENT_WINDOW
) -> list[tuple[float, float, float, float]]:
    """(seconds since the first call, agreement, low, high) over the last ``window`` scored calls."""
    if not records:
        return []
    start = min(r.timestamp for r in records)
    scored = [(r.timestamp, x) for r in sorted(records, key=lambda r: r.timestamp) for x in record_scores(r)]
    points = []
    for index in range(len(scored)):
        est = estimate([x for _, x in scored[max(0, index + 1 - window) : index + 1]], confidence)
        if est is not None:
            points.append(((scored[index][0] - start).total_seconds(), est.mean, est.low, est.high))
    return points


def version_timeline(statuses: dict[str, SpecialistStatus]) -> list[dict[str, object]]:
    """Every version of every specialist: when trained, its state, its score against the teacher."""
    timeline: list[dict[str, object]] = []
    for name, status in statuses.items():
        for version in status.versions:
            timeline.append(
                {
                    "specialist": name,
                    "version": version.version,
                    "state": version.state.value,
                    "trained_at": version.created_at.isoformat() if version.created_at else None,
                    "examples": version.examples,
                    "vs_teacher": version.scores.relative_to_teacher if version.scores else None,
                    "message": version.message,
                }
            )
    return sorted(timeline, key=lambda v: str(v["trained_at"]))


def plots_png(
    rows: Sequence[TaskRow],
    traffic: Sequence[tuple[float, float, int]],
    marks: dict[str, float],
    prices: PriceModel,
    *,
    bin_seconds: float = TRAFFIC_BIN_SECONDS,
    agreement: dict[str, list[tuple[float, float, float, float]]] | None = None,
) -> bytes:
    """Quality against cost per task, the specialists' share of traffic over time, and each task's
    live agreement with the teacher (the estimate and its interval over the last scored calls)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (quality, share, live) = plt.subplots(1, 3, figsize=(19, 5))
    colours = plt.get_cmap("tab10")
    _quality_vs_cost(quality, rows, colours)
    if traffic:
        # the calls behind each share: a last bin of a few calls swings to 0 or 100 %
        starts, shares, calls = zip(*traffic, strict=True)
        volume = share.twinx()
        volume.bar(
            [t / 60 for t in starts],
            calls,
            width=bin_seconds / 60 * 0.9,
            align="edge",
            color="grey",
            alpha=0.2,
        )
        volume.set_ylim(0, max(calls) * 1.5)  # the bars stay below the share line's top
        volume.set_ylabel("calls per bin (bars)", color="grey")
        share.set_zorder(volume.get_zorder() + 1)
        share.patch.set_visible(False)
        share.plot([(t + bin_seconds / 2) / 60 for t in starts], [s * 100 for s in shares], marker=".")
    for label, seconds in marks.items():
        share.axvline(seconds / 60, linestyle="--", color="grey")
        share.annotate(label, (seconds / 60, 95), rotation=90, fontsize=7, va="top")
    share.set_ylim(0, 100)
    share.set_xlabel("minutes since the first call")
    share.set_ylabel("% of calls answered by specialists")
    share.set_title("traffic served by specialists")
    for index, (family, series) in enumerate(sorted((agreement or {}).items())):
        if not series:
            continue
        minutes, means, lows, highs = zip(*((t / 60, m, lo, hi) for t, m, lo, hi in series), strict=True)
        live.plot(minutes, means, color=colours(index % 10), label=family)
        live.fill_between(minutes, lows, highs, color=colours(index % 10), alpha=0.15)
    live.set_ylim(0, 1.02)
    live.set_xlabel("minutes since the first call")
    live.set_ylabel(f"agreement with the teacher (last {AGREEMENT_WINDOW} scored calls)")
    live.set_title("live agreement and its interval")
    if any(agreement.values() if agreement else ()):
        live.legend(fontsize=7, loc="lower right")
    figure.suptitle(prices.describe(), fontsize=8)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=110)
    plt.close(figure)
    return out.getvalue()


def _quality_vs_cost(quality: Any, rows: Sequence[TaskRow], colours: Any) -> None:
    """Each task's teacher, base model and specialist: held-out score against the cost per call."""
    markers = {"teacher": "o", "base 0-shot": "x", "specialist": "*"}
    placed = False
    for index, row in enumerate(rows):
        points = {
            "teacher": (row.teacher_usd_per_1k, row.teacher),
            "base 0-shot": (row.specialist_usd_per_1k, row.base_zero_shot),
            "specialist": (row.specialist_usd_per_1k, row.specialist_score),
        }
        for model, (cost, score) in points.items():
            if score is not None and cost > 0:  # no calls of that kind yet: no cost to place it at
                quality.scatter(cost, score, marker=markers[model], s=90, color=colours(index % 10))
                placed = True
        quality.scatter([], [], marker="s", color=colours(index % 10), label=row.family)
    for model, marker in markers.items():
        quality.scatter([], [], marker=marker, color="black", label=model)
    if placed:  # a log axis needs a positive value to place its ticks
        quality.set_xscale("log")
    quality.set_xlabel("$ per 1,000 calls (log)")
    quality.set_ylabel("held-out score (teacher = reference)")
    quality.set_title("quality vs cost per task")
    quality.legend(fontsize=7, ncol=2, loc="center right")


def html_report(
    rows: Sequence[TaskRow], png: bytes, timeline: Sequence[dict[str, object]], summary: dict[str, object]
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row_cells(row)) + "</tr>" for row in rows
    )
    keys = ("trained_at", "specialist", "version", "state", "examples", "vs_teacher", "message")
    versions = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str('-' if v.get(k) is None else v.get(k)))}</td>" for k in keys)
        + "</tr>"
        for v in timeline
    )
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in summary.items())
    image = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Protégé demo report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Protégé demo report</h1><ul>{facts}</ul>
<h2>Per task (held-out split, never trained on)</h2><table><tr>{head}</tr>{body}</table>
<img src="data:image/png;base64,{image}" style="max-width:100%">
<h2>Versions over time</h2><table><tr><th>trained at</th><th>specialist</th><th>version</th><th>state</th>
<th>examples</th><th>score / teacher</th><th>why</th></tr>{versions}</table></body></html>"""


def rows_as_dicts(rows: Sequence[TaskRow]) -> list[dict[str, object]]:
    return [{**asdict(row), "relative": row.relative} for row in rows]
