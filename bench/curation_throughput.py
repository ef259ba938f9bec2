"""Examples per second through curation and task discovery, and what embedding costs.

The same generated workload goes through the same pipeline twice in one run:

- baseline: filters, PII redaction, exact and near de-duplication, structural grouping,
  with embedding disabled (a constant vector: tasks are the structural groups);
- full: the same, with all-MiniLM-L6-v2 embeddings of every user turn and the
  meaning-based splitting of groups.

    .venv/bin/python bench/curation_throughput.py [--examples 5000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from protege.config import CurationPolicy
from protege.pii import RecordRedaction
from protege.tasks.discovery import DiscoverySettings, Embedder, MiniLM, discover
from protege.tasks.discovery.discover import Matrix
from protege.tasks.examples import Example, example_from_record
from protege.training.curation.filters import NearDuplicateIndex, dedup_text, exact_key, reject_reason
from protege.workload import generate

TARGET_CALLS_PER_S = 1000  # curation and discovery, with embeddings, on 2 cores


class NoEmbedding:
    """Embedding disabled: every text gets the same unit vector."""

    name = "none"

    def encode(self, texts: Sequence[str]) -> Matrix:
        vectors = np.zeros((len(texts), 8), dtype=np.float32)
        vectors[:, 0] = 1
        return vectors


def curate(records: list, policy: CurationPolicy) -> tuple[list[Example], float]:  # type: ignore[type-arg]
    started = time.perf_counter()
    kept: dict[str, Example] = {}
    near = NearDuplicateIndex(policy.near_duplicate_jaccard)
    for record in records:
        if reject_reason(record, policy):
            continue
        example = example_from_record(record, RecordRedaction())
        text = dedup_text(example.user_text, json.dumps(example.answer, sort_keys=True))
        key = exact_key(example.system_prompt + "\n" + text)
        if key not in kept and near.add(key, text) is None:
            kept[key] = example
    return list(kept.values()), time.perf_counter() - started


class Timed:
    """An embedder that counts the texts it embeds and the seconds it spends on them."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.name = embedder, embedder.name
        self.texts, self.seconds = 0, 0.0

    def encode(self, texts: Sequence[str]) -> Matrix:
        started = time.perf_counter()
        vectors = self.embedder.encode(texts)
        self.seconds += time.perf_counter() - started
        self.texts += len(texts)
        return vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument(
        "--skip-every-turn", action="store_true", help="leave out the slow row that embeds every user turn"
    )
    args = parser.parse_args()
    console = Console(width=140)
    records = [
        call.to_record() for call in generate(args.examples, seed=99, styles=("plain", "terse", "polite"))
    ]
    embedder = MiniLM()
    embedder.encode(["warm-up"])  # load the model outside the timings
    policy = CurationPolicy()

    pipelines = [
        ("baseline: no embedding", NoEmbedding(), DiscoverySettings()),
        (f"MiniLM, sampled ({DiscoverySettings().sample_size} a group)", embedder, DiscoverySettings()),
    ]
    if not args.skip_every_turn:  # discovery before sampling: every user turn embedded
        pipelines.append(("MiniLM, every user turn", embedder, DiscoverySettings(sample_size=10**9)))
    rows = []
    for name, chosen, settings in pipelines:
        examples, curate_seconds = curate(records, policy)
        timed = Timed(chosen)
        started = time.perf_counter()
        registry = discover(examples, timed, settings=settings)
        total = curate_seconds + time.perf_counter() - started
        rows.append(
            (
                name,
                len(records),
                len(examples),
                len(registry.tasks),
                timed.texts,
                curate_seconds,
                timed.seconds,
                total,
            )
        )

    table = Table(title=f"curation and discovery of {args.examples} generated calls")
    columns = ("pipeline", "calls", "kept", "tasks", "embedded", "curate s", "embed s", "total s", "calls/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, calls, kept, tasks, embedded, curate_s, embed_s, total in rows:
        table.add_row(
            name,
            str(calls),
            str(kept),
            str(tasks),
            str(embedded) if name != pipelines[0][0] else "-",
            f"{curate_s:.2f}",
            f"{embed_s:.2f}",
            f"{total:.2f}",
            f"{calls / total:,.0f}",
        )
    console.print(table)
    base, full = rows[0][-1], rows[1][-1]
    rate = args.examples / full
    console.print(
        f"sampled / baseline time: {full / base:.2f}×; embedding's share of the sampled pipeline: "
        f"{rows[1][6] / full:.0%}"
        + (f"; every turn / sampled time: {rows[2][-1] / full:.2f}×" if len(rows) > 2 else "")
    )
    verdict = "met" if rate >= TARGET_CALLS_PER_S else "NOT met"
    console.print(
        f"target ≥ {TARGET_CALLS_PER_S:,} calls/s with embeddings: {rate:,.0f} calls/s — {verdict} "
        f"(baseline without embeddings, same run: {args.examples / base:,.0f} calls/s)"
    )


if __name__ == "__main__":
    main()
