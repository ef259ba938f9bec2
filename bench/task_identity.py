"""Task identity per workload: tasks found against true tasks, ARI, calls routed, router latency.

For each workload (the shipped one, the four shapes of tests/traffic/shapes.py, and the calls
of real framework agents, LangGraph, the OpenAI Agents SDK and pydantic-ai, running a
two-tool support agent against the scripted teacher: none shaped by the project for
itself), in one run:

- discovery on ``--calls`` redacted examples: tasks found against the true tasks, the
  adjusted Rand index of found against true, and examples left unassigned;
- the router on ``--held-out`` raw requests of another seed, every task taken as served:
  the share of calls routed to a task, the share routed to a task of the call's own true
  task, the embeddings the router had to make (calls its cache did not answer: agents
  repeat phrasings, these generators too), and the router's time per call
  (``TaskClassifier.match``: features, lookup and, where tasks share a structure and the
  tools do not decide, the MiniLM embedding in its worker thread), p50 and p99.

Baseline in the same run: one MiniLM embedding of one user turn (what a router that
embedded every call would pay). Target: router p50 ≤ 5 ms with embeddings in play.

    .venv/bin/python bench/task_identity.py [--calls 400] [--held-out 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from traffic.agents import questions, record_calls
from traffic.scripted_teacher import ScriptedTeacher
from traffic.shapes import SHAPES, ShapedCall

from protege.api.calls import ChatRequest
from protege.pii import RecordRedaction
from protege.pii.settings import backend_from_settings, text_redactor
from protege.serving.router.classify import CallEmbeddings, TaskClassifier
from protege.tasks.discovery import MiniLM, discover
from protege.tasks.discovery.features import called_tools, tools_answered_after
from protege.tasks.examples import example_from_record
from protege.workload import generate

TARGET_P50_MS = 5.0


def shipped(count: int, seed: int) -> list[Any]:
    return [c for c in generate(count, seed=seed, styles=("plain", "terse", "polite")) if not c.heldout]


def frameworks(count: int, seed: int) -> list[ShapedCall]:
    """The chat-completions calls of real framework agents (LangGraph, the Agents SDK, pydantic-ai).

    Each framework runs the two-tool support agent against the scripted teacher; the true task
    of a call is its step: the tool it calls, or the answer after that tool's result.
    """
    calls = []
    for index, variant in enumerate(("langgraph", "openai-agents-chat", "pydantic-ai")):
        _, recorded = record_calls(variant, questions(count // 6 + 1, seed=seed * 10 + index))
        with ScriptedTeacher() as teacher:
            for call in recorded:
                request = {**call.body, "stream": False}
                answer = httpx.post(teacher.base_url + call.path, json=request).json()["choices"][0][
                    "message"
                ]
                done = request["messages"][-1]["role"] == "tool"
                tool = tools_answered_after(request["messages"]) if done else called_tools([answer])
                calls.append(ShapedCall(request, answer, ("answer-after-" if done else "") + ",".join(tool)))
    return calls[:count]


WORKLOADS: dict[str, Callable[[int, int], list[Any]]] = {
    "shipped": shipped,
    **SHAPES,
    "frameworks": frameworks,
}


def measure(name: str, calls: int, held_out: int, embedder: MiniLM) -> dict[str, Any]:
    train, later = WORKLOADS[name](calls, 1), WORKLOADS[name](held_out, 99)
    records = [call.to_record(tenant="acme") for call in train]
    truth = {record.id: call.task for record, call in zip(records, train, strict=True)}
    # Redacted as the curator and the router redact (curation.pii_detector: NER where installed).
    registry = discover(
        [example_from_record(r, RecordRedaction(backend_from_settings())) for r in records], embedder
    )
    assigned = [(truth[i], task.id) for task in registry.tasks for i in task.example_ids]
    label_of = {
        task.id: Counter(truth[i] for i in task.example_ids).most_common(1)[0][0] for task in registry.tasks
    }
    embeddings = CallEmbeddings(embedder, redact=text_redactor(), max_waiting=1_000)
    classifier = TaskClassifier(registry.tasks, registry.prompt_segments, embeddings)
    routed = right = 0
    times = []

    async def route_all() -> None:
        nonlocal routed, right
        for call in later:
            request = ChatRequest.model_validate(call.request)
            started = time.perf_counter()
            match = await classifier.match("acme", request)
            times.append((time.perf_counter() - started) * 1000)
            if match is not None:
                routed += 1
                right += label_of[match.task_id] == call.task

    asyncio.run(route_all())
    embeddings.close()
    return {
        "workload": name,
        "true": len(set(truth.values())),
        "found": len(registry.tasks),
        "ari": adjusted_rand_score(*zip(*assigned, strict=True)) if assigned else 0.0,
        "unassigned": len(registry.unassigned),
        "calls": len(times),
        "routed": routed / len(times),
        "right": right / max(routed, 1),
        "embedded": classifier.needs_embeddings,
        "made": embeddings.made,
        "p50": float(np.percentile(times, 50)),
        "p99": float(np.percentile(times, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--held-out", type=int, default=200)
    args = parser.parse_args()
    console = Console(width=170)
    embedder = MiniLM()
    embedder.encode(["warm-up"])
    texts = [c.request["messages"][-1]["content"] for c in SHAPES["tool_retrieval"](50, 5)]
    each = []
    for text in texts:
        started = time.perf_counter()
        embedder.encode([text])
        each.append((time.perf_counter() - started) * 1000)
    encode_ms = float(np.median(each))

    rows = [measure(name, args.calls, args.held_out, embedder) for name in WORKLOADS]
    table = Table(
        title=f"task identity: {args.calls} calls discovered, {args.held_out} held-out calls routed"
    )
    columns = ["workload", "true tasks", "found", "ARI", "unassigned", "routed", "to its task"]
    for column in [*columns, "embeddings made", "router p50 ms", "p99 ms", "p50 / one embedding"]:
        table.add_column(column, justify="left" if column == "workload" else "right")
    for row in rows:
        table.add_row(
            row["workload"],
            str(row["true"]),
            str(row["found"]),
            f"{row['ari']:.2f}",
            str(row["unassigned"]),
            f"{row['routed']:.0%} of {row['calls']}",
            f"{row['right']:.0%}",
            str(row["made"]) if row["embedded"] else "-",
            f"{row['p50']:.2f}",
            f"{row['p99']:.2f}",
            f"{row['p50'] / encode_ms:.2f}×",
        )
    console.print(table)
    console.print(f"baseline: one MiniLM embedding of a user turn, p50 {encode_ms:.2f} ms over {len(texts)}")
    worst = max(row["p50"] for row in rows if row["embedded"]) if any(r["embedded"] for r in rows) else 0.0
    verdict = "met" if worst <= TARGET_P50_MS else "NOT met"
    console.print(
        f"router p50 with embeddings in play ≤ {TARGET_P50_MS} ms: worst {worst:.2f} ms — {verdict}"
    )


if __name__ == "__main__":
    main()
