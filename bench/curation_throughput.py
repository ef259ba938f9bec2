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
from protege.tasks.discovery import MiniLM, discover
from protege.tasks.discovery.discover import Matrix
from protege.tasks.examples import Example, example_from_record
from protege.training.curation.filters import NearDuplicateIndex, dedup_text, exact_key, reject_reason
from protege.workload import generate


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args()
    console = Console()
    records = [
        call.to_record() for call in generate(args.examples, seed=99, styles=("plain", "terse", "polite"))
    ]
    embedder = MiniLM()
    embedder.encode(["warm-up"])  # load the model outside the timings
    policy = CurationPolicy()

    rows = []
    for name, chosen in (
        ("baseline: no embedding", NoEmbedding()),
        ("full: MiniLM", embedder),
    ):
        examples, curate_seconds = curate(records, policy)
        started = time.perf_counter()
        chosen.encode([e.user_text for e in examples])
        embed_seconds = time.perf_counter() - started  # what discover spends embedding, measured apart
        started = time.perf_counter()
        registry = discover(examples, chosen)
        total = curate_seconds + time.perf_counter() - started
        rows.append(
            (name, len(records), len(examples), len(registry.tasks), curate_seconds, embed_seconds, total)
        )

    table = Table(title=f"curation and discovery of {args.examples} generated calls")
    for column in ("pipeline", "calls", "kept", "tasks", "curate s", "embed s", "total s", "calls/s"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, calls, kept, tasks, curate_s, embed_s, total in rows:
        table.add_row(
            name,
            str(calls),
            str(kept),
            str(tasks),
            f"{curate_s:.2f}",
            f"{embed_s:.2f}",
            f"{total:.2f}",
            f"{calls / total:,.0f}",
        )
    console.print(table)
    base, full = rows[0][-1], rows[1][-1]
    console.print(
        f"full / baseline time: {full / base:.2f}×; "
        f"embedding's share of the full pipeline: {rows[1][5] / full:.0%}"
    )


if __name__ == "__main__":
    main()
