"""The training job: one entrypoint, run by a KubeRay RayJob on GPU nodes and by `protege up` on a local Ray.

    python -m protege.training.job --spec job.json      (or --spec '{"specialist": ...}')

It reads the task's dataset version from the artifact store, checks everything it can
before spending compute (dataset size and splits, base model, rank against the pool's
maxLoraRank), trains the LoRA adapter, evaluates base zero-shot, base few-shot and the
adapter on the frozen test split against the teacher's answers, calibrates the
adapter's fallback check, and stores the adapter (content-addressed, with a manifest of
its lineage) and the evaluation report. Its last line on stdout is the result
(:class:`protege.api.jobs.JobResult`) as JSON. It reports scores; the gate is the
flywheel's to apply (with the Specialist's spec as it is then), in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protege.api.jobs import (
    ADAPTER_KIND,
    REPORT_KIND,
    RESULTS_AREA,
    JobResult,
    JobSpec,
    job_id,
    job_name,
)
from protege.api.meta import quantity_value
from protege.api.specialist import EvaluationMetric, OutputKind, Scores, TrainingSpec
from protege.config import load_settings
from protege.evaluation import resolve_metric
from protege.models.catalogue import UnknownModelError
from protege.models.pull import ModelUnavailableError
from protege.models.resolve import ModelResolver
from protege.pii.surrogates import with_surrogates
from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore
from protege.tasks.datasets import DATASET_KIND, SQL_DATABASE
from protege.version import __version__

__all__ = ["ADAPTER_KIND", "REPORT_KIND", "JobError", "JobResult", "JobSpec", "job_id", "job_name", "run"]


class JobError(RuntimeError):
    """The job cannot run as specified; raised before any compute is spent."""


def read_rows(store: ArtifactStore, task: str, version: str, split: str) -> list[dict[str, Any]]:
    """A split's rows as a model reads them (trained, evaluated, probed): placeholders replaced
    by consistent fake values (:mod:`protege.pii.surrogates`)."""
    text = store.read_file(DATASET_KIND, task, version, f"{split}.jsonl").decode()
    return [with_surrogates(json.loads(line)) for line in text.splitlines() if line.strip()]


def task_database(store: ArtifactStore, task: str, version: str) -> sqlite3.Connection | None:
    """The SQLite database stored with the dataset (in memory), or None: SQL is then compared as text."""
    manifest = store.manifest(DATASET_KIND, task, version)
    if not any(entry.path == SQL_DATABASE for entry in manifest.files):
        return None
    database = sqlite3.connect(":memory:")
    database.deserialize(store.read_file(DATASET_KIND, task, version, SQL_DATABASE))
    return database


def preflight(
    spec: JobSpec, store: ArtifactStore, models: ModelResolver
) -> tuple[Path, str, dict[str, list[dict[str, Any]]]]:
    """(the base model's directory, dataset version, rows by split), or a JobError saying what to fix."""
    if spec.training.rank > spec.max_lora_rank:
        raise JobError(
            f"training.rank {spec.training.rank} exceeds the pool's engine.maxLoraRank {spec.max_lora_rank}: "
            "vLLM could not load the adapter. Lower the rank or raise the pool's maxLoraRank"
        )
    try:
        model = models.resolve(spec.base_model, spec.base_model_revision)
    except (UnknownModelError, ModelUnavailableError) as error:
        raise JobError(f"base model {spec.base_model!r}: {error}") from None
    try:
        manifest = (
            store.manifest(DATASET_KIND, spec.task, spec.dataset_version)
            if spec.dataset_version
            else store.latest(DATASET_KIND, spec.task)
        )
    except ArtifactNotFoundError:
        raise JobError(
            f"no dataset {spec.task}{'@' + spec.dataset_version if spec.dataset_version else ''} "
            f"in the store at {store.url}; build one with `protege datasets build {spec.task}`"
        ) from None
    rows = {
        split: read_rows(store, spec.task, manifest.version, split)
        for split in ("train", "validation", "test")
    }
    if not any(rows.values()):
        raise JobError(f"dataset {spec.task}@{manifest.version} is empty; curate more calls and rebuild it")
    if len(rows["train"]) < spec.min_train_examples or not rows["test"]:
        raise JobError(
            f"dataset {spec.task}@{manifest.version} has {len(rows['train'])} training and "
            f"{len(rows['test'])} test examples; a job needs at least {spec.min_train_examples} and 1. "
            "Curate more calls and rebuild"
        )
    return model, manifest.version, rows


def torch_threads(training: TrainingSpec, cpu_count: int | None) -> int:
    """Threads for a one-worker job: the CPUs it asked for, at most the machine's.

    Ray starts a job's driver with OMP_NUM_THREADS=1 whatever the job reserved, so a job
    granted 4 CPUs would otherwise train on one.
    """
    return max(1, min(int(quantity_value(training.resources.cpu)), cpu_count or 1))


def run(spec: JobSpec) -> JobResult:
    """Train, evaluate and store; returns the result that is also printed as JSON."""
    import torch

    from protege.evaluation.calibration import calibrate, disagrees
    from protege.training.evaluation import TransformersGenerator, evaluate
    from protege.training.report import chart, markdown
    from protege.training.trainer import train_lora
    from protege.training.trainer.distributed import RunStorage, train_lora_distributed

    settings = load_settings()
    store = ArtifactStore.from_settings(settings)
    model, dataset_version, rows = preflight(spec, store, ModelResolver.from_settings(settings))
    if spec.training.workers == 1:  # Ray Train sets each worker's threads from its reservation
        torch.set_num_threads(torch_threads(spec.training, os.cpu_count()))
    output_kind = OutputKind(
        store.manifest(DATASET_KIND, spec.task, dataset_version).metadata["task"]["output_kind"]
    )
    metric = resolve_metric(spec.evaluation.metric, output_kind)
    database = (
        task_database(store, spec.task, dataset_version) if metric is EvaluationMetric.SQL_EXECUTION else None
    )

    with tempfile.TemporaryDirectory(prefix="protege-train-") as work:
        started = time.perf_counter()
        if spec.training.workers > 1:  # each worker resolves the model on its own node (its cache)
            trained = train_lora_distributed(
                spec.base_model,
                rows["train"],
                rows["validation"],
                spec.training,
                Path(work),
                storage=RunStorage.in_store(store),
                name=job_name(spec),
                revision=spec.base_model_revision,
                max_steps=spec.max_steps,
            )
        else:
            trained = train_lora(
                model, rows["train"], rows["validation"], spec.training, Path(work), max_steps=spec.max_steps
            )
        training_seconds = time.perf_counter() - started
        model_path = model

        def score(generator: TransformersGenerator, shots: list[dict[str, Any]]) -> dict[str, Any]:
            return evaluate(rows["test"], generator, metric, database=database, shots=shots).as_dict()

        base = TransformersGenerator(model_path, max_new_tokens=spec.max_new_tokens)  # loaded once for both
        tuned = TransformersGenerator(model_path, trained.adapter_dir, max_new_tokens=spec.max_new_tokens)
        specialist = evaluate(rows["test"], tuned, metric, database=database)
        calibration = calibrate(
            [
                (logprobs, disagrees(metric, value))
                for logprobs, value in zip(specialist.token_logprobs, specialist.per_example, strict=True)
            ]
        )
        results: dict[str, Any] = {
            "base_zero_shot": score(base, []),
            "base_few_shot": score(base, rows["train"][: spec.few_shot]) if spec.few_shot else None,
            "specialist": specialist.as_dict(),
            "teacher": {
                "score": 1.0,
                "examples": len(rows["test"]),
                "note": "the references are the teacher's answers",
            },
        }
        scores = Scores(
            metric=metric,
            specialist=results["specialist"]["score"],
            teacher=1.0,
            base_zero_shot=results["base_zero_shot"]["score"],
            relative_to_teacher=results["specialist"]["score"],
        )
        metadata = {
            "specialist": spec.specialist,
            "task": spec.task,
            "base_model": spec.base_model,
            **({"base_model_revision": spec.base_model_revision} if spec.base_model_revision else {}),
            "dataset_version": dataset_version,
            "hyperparameters": spec.training.to_kube(),
            "metric": metric.value,  # the Specialist's evaluation.metric, resolved: `protege eval` reuses it
            "metrics": results,
            "training": {
                "steps": trained.steps,
                "train_loss": trained.train_loss,
                "best_eval_loss": trained.best_eval_loss,
                "tokens_seen": trained.tokens_seen,
                "seconds": training_seconds,
                "dropped_too_long": trained.dropped_too_long,
            },
            "confidence_calibration": calibration.as_dict(),
            "code_version": __version__,
        }
        adapter = store.put_artifact(ADAPTER_KIND, spec.specialist, trained.adapter_dir, metadata)
        document = {
            **metadata,
            "adapter_version": adapter.version,
            "min_relative_to_teacher": spec.evaluation.min_relative_to_teacher,
            "min_score": spec.evaluation.min_score,
        }
        report = store.put_artifact(
            REPORT_KIND,
            spec.specialist,
            {
                "evaluation.json": json.dumps(document, indent=2).encode(),
                "evaluation.md": markdown(document).encode(),
                "evaluation.png": chart(document),
            },
        )
        shutil.rmtree(trained.adapter_dir, ignore_errors=True)
    result = JobResult(
        adapter_version=adapter.version,
        adapter_uri=store.uri(ADAPTER_KIND, spec.specialist, adapter.version),
        report_version=report.version,
        dataset_version=dataset_version,
        scores=scores,
        confidence_check=calibration.check,
    )
    store.put_object(RESULTS_AREA, job_name(spec), result.model_dump_json(exclude_none=True).encode())
    return result


def yield_cpus() -> str:
    """Put this process, and every thread it starts from now on (torch's), in Linux's idle
    scheduling class (SCHED_IDLE): it runs when no other process wants the CPU, and a waking one
    takes the CPU from it at once. Elsewhere, niceness 19. Returns which.

    A job of the local stack shares its CPUs with the serving replica (at Ray's worker niceness,
    15). ``bench/serving_while_training.py``, 2-core Sapphire Rapids Xeon: a specialist's 72-token
    answers took 4.34 s alone, 57.5 s at p50 while a job trained at niceness 19, 36.6 s with the
    job under SCHED_IDLE: better, and still far from alone. The rest was the engine's OpenMP
    wake-ups (``protege.services.vllm.CPU_ENGINE_SPINCOUNT``): with both, 1.86 s against 1.25 s
    alone on a 2-core AMD EPYC (docs/flywheel.md)."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    os.nice(19 - os.nice(0))
    return "niceness 19"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protege.training.job", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--spec", required=True, help="The JobSpec as JSON, or @path to a JSON file.")
    parser.add_argument(
        "--yield-cpus",
        action="store_true",
        help="Train only on CPU time nothing else wants (a machine that serves).",
    )
    args = parser.parse_args(argv)
    if args.yield_cpus:
        yield_cpus()
    text = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
    try:
        spec = JobSpec.model_validate_json(text)
        result = run(spec)
    except ValidationError as error:
        print(f"error: invalid job spec: {error}", file=sys.stderr)
        return 2
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        try:  # so whoever started the job can say why without reading its logs
            store = ArtifactStore.from_settings(load_settings())
            refused = JobResult(error=str(error)).model_dump_json(exclude_none=True)
            store.put_object(RESULTS_AREA, job_name(spec), refused.encode())
        except Exception as unrecorded:  # the exit status still says it failed
            print(f"error: could not record the failure: {unrecorded}", file=sys.stderr)
        return 2
    print(result.model_dump_json(exclude_none=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
