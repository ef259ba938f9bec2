"""`protege up`'s live view: parts, tasks, specialists and their phases, traffic, fallbacks."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table

from protege.api.specialist import SpecialistStatus
from protege.stack.supervisor import Stack
from protege.tasks.datasets import load_registry


@dataclass
class Traffic:
    """The gateway's route decisions since it started (its Prometheus counters)."""

    by_reason: Counter[str] = field(default_factory=Counter)
    by_specialist: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.by_reason.values())

    @property
    def specialist_share(self) -> float:
        return sum(self.by_specialist.values()) / self.calls if self.calls else 0.0

    @property
    def fallbacks(self) -> int:
        return sum(n for reason, n in self.by_reason.items() if reason.startswith("fallback_"))

    @property
    def fallback_rate(self) -> float:
        """Fallbacks among the calls a specialist was asked to answer."""
        asked = self.fallbacks + sum(self.by_specialist.values())
        return self.fallbacks / asked if asked else 0.0


def parse_traffic(metrics_text: str) -> Traffic:
    traffic = Traffic()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "protege_router_calls":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            count = int(sample.value)
            traffic.by_reason[sample.labels["reason"]] += count
            if sample.labels["target"] == "specialist":
                traffic.by_specialist[sample.labels["specialist"]] += count
    return traffic


def gateway_traffic(metrics_url: str) -> Traffic | None:
    """The traffic the gateway counted, from its /metrics (on its own port, ``metrics_url``)."""
    try:
        with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=2) as response:
            return parse_traffic(response.read().decode())
    except OSError:
        return None


@dataclass
class Snapshot:
    parts: dict[str, tuple[int | None, bool, int]]  # name → pid, alive, restarts
    serving: tuple[str, str]
    heartbeat: dict[str, Any]
    tasks: list[tuple[str, str, int]]  # id, name, examples
    specialists: dict[str, SpecialistStatus]
    traffic: Traffic | None


def snapshot(stack: Stack) -> Snapshot:
    parts = {
        name: (
            part.pid,
            part.process is not None and part.process.poll() is None,
            stack.restarts.get(name, 0),
        )
        for name, part in stack.parts().items()
        if part is not None
    }
    try:
        heartbeat = json.loads((stack.flywheel_state / "heartbeat.json").read_text())
    except (OSError, ValueError):
        heartbeat = {}
    try:
        registry = load_registry(stack.store)
    except Exception:  # a view shows what it can; the store may be restarting
        registry = None
    tasks = [(t.id, t.name, t.size) for t in registry.tasks] if registry else []
    specialists = {
        path.stem: SpecialistStatus.model_validate_json(path.read_text())
        for path in sorted((stack.flywheel_state / "status").glob("*.json"))
    }
    traffic = gateway_traffic(stack.gateway.metrics_url) if stack.gateway else None
    return Snapshot(parts, stack.serving_status(), heartbeat, tasks, specialists, traffic)


def render(view: Snapshot) -> RenderableType:
    parts = Table(title="parts", title_justify="left")
    for column in ("part", "pid", "state", "restarts"):
        parts.add_column(column)
    for name, (pid, alive, restarts) in view.parts.items():
        state = "[green]up[/]" if alive else "[red]down[/]"
        parts.add_row(name, str(pid or "-"), state, str(restarts))
    serving, message = view.serving
    parts.add_row("serving", "-", serving + (f": {message[:60]}" if message else ""), "-")
    beat = view.heartbeat
    age = f"{time.time() - beat['at']:.0f} s ago" if "at" in beat else "not yet"
    parts.add_row(
        "heartbeat", "-", age + (f" [red]{beat['error'][:80]}[/]" if beat.get("error") else ""), "-"
    )

    specialists = Table(title="specialists", title_justify="left")
    for column in ("specialist", "phase", "examples", "new", "active", "candidate", "share %", "vs teacher"):
        specialists.add_column(column)
    for specialist, status in view.specialists.items():
        score = f"{status.score_vs_teacher:.2f}" if status.score_vs_teacher is not None else "-"
        specialists.add_row(
            specialist, status.phase.value, str(status.examples), str(status.new_examples),
            status.active_version or "-", status.candidate_version or "-", str(status.traffic_share), score,
        )  # fmt: skip

    tasks = Table(title="tasks", title_justify="left")
    for column in ("task", "name", "examples"):
        tasks.add_column(column)
    for task_id, name, size in view.tasks:
        tasks.add_row(task_id, name, str(size))

    traffic = view.traffic
    if traffic is None:
        line = "traffic: the gateway's metrics are not available"
    else:
        reasons = ", ".join(f"{reason} {n}" for reason, n in traffic.by_reason.most_common())
        line = (
            f"traffic: {traffic.calls} calls, {traffic.specialist_share:.0%} answered by specialists, "
            f"fallback rate {traffic.fallback_rate:.0%} ({reasons or 'none yet'})"
        )
    return Group(parts, tasks, specialists, line)
