"""PII detection: recall and precision per type, leaks after redaction, snippets and calls per second.

The labelled corpus is built from Faker's locales (``protege.pii.faker_corpus``:
values the detectors' authors did not write, 14 locales, hard negatives such as order ids,
SKUs, versions, hashes, UUIDs, ISBNs, timestamps), with a seed no test uses. Two backends
go through it in the same run:

- baseline: the built-in detectors (patterns and checks);
- NER: the built-in detectors plus Presidio's spaCy NER (the default where installed).

Then curation's redaction step (``example_from_record``: every message, the answer, the
tool-call arguments) on generated agent calls, with each backend: calls per second, the NER
backend's as a ratio of the baseline's. Targets (NER backend): recall ≥ 0.95 overall and
≥ 0.9 for every type, precision ≥ 0.95.

    .venv/bin/python bench/pii.py [--per-type 60] [--negatives 250] [--calls 1000] [--seed 7]
"""

from __future__ import annotations

import argparse
import logging
import time

from rich.console import Console
from rich.table import Table

from protege.pii import PiiType, RecordRedaction, builtin_backend
from protege.pii.evaluation import Score, score
from protege.pii.faker_corpus import build_faker_corpus
from protege.pii.ner import NerBackend
from protege.tasks.examples import example_from_record
from protege.workload import generate

RECALL_OVERALL, RECALL_PER_TYPE, PRECISION = 0.95, 0.9, 0.95


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-type", type=int, default=60, help="positive snippets per PII type")
    parser.add_argument("--negatives", type=int, default=250, help="hard negatives")
    parser.add_argument("--mixed", type=int, default=40, help="tickets with four entities each")
    parser.add_argument(
        "--calls", type=int, default=1000, help="generated calls through curation's redaction"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--misses", type=int, default=0, help="print this many misses and false findings")
    args = parser.parse_args()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    console = Console(width=150)

    corpus = build_faker_corpus(args.per_type, args.negatives, args.mixed, seed=args.seed)
    negatives = sum(not s.entities for s in corpus)
    arguments = sum(s.key is not None for s in corpus)
    started = time.perf_counter()
    ner = NerBackend()
    load_seconds = time.perf_counter() - started
    backends = {"baseline: built-in": builtin_backend(), "NER: built-in + Presidio/spaCy": ner}

    scores: dict[str, Score] = {}
    rates: dict[str, float] = {}
    for name, backend in backends.items():
        started = time.perf_counter()
        scores[name] = score(corpus, backend)
        rates[name] = len(corpus) / (time.perf_counter() - started)

    table = Table(
        title=f"{len(corpus)} snippets from Faker (seed {args.seed}): {negatives} hard negatives, "
        f"{arguments} tool-call argument values"
    )
    table.add_column("type")
    table.add_column("values", justify="right")
    for name in backends:
        short = name.split(":")[0]
        for column in ("recall", "precision", "leaks"):
            table.add_column(f"{short} {column}", justify="right")
    for kind in [*PiiType, None]:
        row = [kind.value if kind else "all", str(scores[next(iter(scores))].entities(kind))]
        for name in backends:
            result = scores[name]
            leaks = result.leaks[kind] if kind else sum(result.leaks.values())
            row += [f"{result.recall(kind):.3f}", f"{result.precision(kind):.3f}", str(leaks)]
        table.add_row(*row)
    console.print(table)

    result = scores["NER: built-in + Presidio/spaCy"]
    worst = min(PiiType, key=result.recall)
    console.print(
        f"NER backend: recall {result.recall():.3f} (target ≥ {RECALL_OVERALL}): "
        f"{verdict(result.recall() >= RECALL_OVERALL)}; lowest type recall {result.recall(worst):.3f} "
        f"({worst.value}, target ≥ {RECALL_PER_TYPE}): {verdict(result.recall(worst) >= RECALL_PER_TYPE)}; "
        f"precision {result.precision():.3f} (target ≥ {PRECISION}): "
        f"{verdict(result.precision() >= PRECISION)}; "
        f"values leaked (a letter or digit left): {sum(result.leaks.values())} of {result.entities()}"
    )
    for line in result.misses[: args.misses]:
        console.print(f"  {line}", markup=False)

    records = [call.to_record("bench") for call in generate(args.calls, seed=args.seed)]
    curation: dict[str, float] = {}
    for name, backend in backends.items():
        started = time.perf_counter()
        for record in records:
            example_from_record(record, RecordRedaction(backend))
        curation[name] = len(records) / (time.perf_counter() - started)
    speed = Table(title="throughput (one process)")
    for column in ("backend", "corpus snippets/s", "curation calls/s", "curation / baseline"):
        speed.add_column(column, justify="left" if column == "backend" else "right")
    base = curation["baseline: built-in"]
    for name in backends:
        speed.add_row(name, f"{rates[name]:,.0f}", f"{curation[name]:,.0f}", f"{curation[name] / base:.2f}×")
    console.print(speed)
    console.print(
        f"NER model load {load_seconds:.1f} s (once per process); NER ran on {ner.ner_calls} texts, "
        "the others were skipped (no capitalized word) or cached."
    )


if __name__ == "__main__":
    main()
