"""The evaluation report as people read it: a Markdown table and a bar chart (PNG)."""

from __future__ import annotations

import io
from typing import Any

VARIANTS = (
    ("teacher", "teacher (reference)"),
    ("specialist", "specialist (LoRA)"),
    ("base_few_shot", "base model, few-shot"),
    ("base_zero_shot", "base model, zero-shot"),
)


def rows(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, metrics[key]) for key, label in VARIANTS if metrics.get(key)]


def markdown(report: dict[str, Any]) -> str:
    metric = report.get("metric", "score")
    lines = [
        f"# {report['specialist']} on task {report['task']} (dataset {report['dataset_version']})",
        "",
        f"| model | {metric} | p50 latency ms | generated tokens |",
        "|---|---:|---:|---:|",
    ]
    for label, values in rows(report["metrics"]):
        latency = values.get("latency_ms_p50")
        tokens = values.get("generated_tokens")
        lines.append(
            f"| {label} | {values['score']:.3f} | {'' if latency is None else f'{latency:.0f}'} | "
            f"{'' if tokens is None else tokens} |"
        )
    bars = [f"evaluation.minRelativeToTeacher {report['min_relative_to_teacher']}"]
    if report.get("min_score") is not None:
        bars.append(f"evaluation.minScore {report['min_score']}")
    lines += [
        "",
        f"The flywheel gates these scores with the Specialist's bars ({', '.join(bars)} when it was "
        "trained; its spec as it is then decides); the version's status gives the verdict.",
    ]
    return "\n".join(lines + _calibration_lines(report.get("confidence_calibration"))) + "\n"


def _calibration_lines(calibration: dict[str, Any] | None) -> list[str]:
    """The fallback check calibrated on the test split: the one chosen, and each signal's best."""
    if not calibration:
        return []
    chosen = "Fallback check: " + calibration["reason"] + "."
    lines = ["", chosen]
    if calibration["signals"]:
        lines += [
            "",
            "| signal (token probability) | threshold | precision | recall | F1 | sent to the teacher |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {fit['signal']} | {fit['threshold']:.4g} | {fit['precision']:.2f} | {fit['recall']:.2f} | "
            f"{fit['f1']:.2f} | {fit['fallback_rate']:.0%} |"
            for fit in calibration["signals"]
        ]
    return lines


def chart(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = rows(report["metrics"])
    figure, axes = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    colours = ["#8c8c8c", "#2b8a3e", "#f59f00", "#c92a2a"][: len(labelled)]
    axes.barh([label for label, _ in labelled], [values["score"] for _, values in labelled], color=colours)
    for index, (_, values) in enumerate(labelled):
        axes.text(min(values["score"] + 0.01, 0.92), index, f"{values['score']:.2f}", va="center")
    threshold = report.get("min_relative_to_teacher")
    if threshold is not None:
        axes.axvline(threshold, color="#1c7ed6", linestyle="--", linewidth=1, label="bar (relative)")
        axes.legend(loc="lower right")
    axes.set_xlim(0, 1)
    axes.invert_yaxis()
    axes.set_xlabel(f"{report.get('metric', 'score')} on the frozen test split")
    axes.set_title(f"{report['specialist']}: specialist vs teacher and base model")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
