"""`protege curate`, `protege tasks ...` and `protege datasets build`: from the call log to datasets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
import yaml
from rich.table import Table

from protege.api.meta import API_VERSION
from protege.api.specialist import EvaluationMetric, OutputKind
from protege.cli.common import console, fail, settings
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import load_registry
from protege.tasks.discovery.tasks import TaskRegistry

tasks_app = typer.Typer(help="Recurring tasks found in the curated calls.", no_args_is_help=True)
datasets_app = typer.Typer(help="Versioned per-task datasets.", no_args_is_help=True)


def _store() -> ArtifactStore:
    return ArtifactStore.from_settings(settings())


def curate(
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once no new call came for a while."),
    idle_seconds: float = typer.Option(2.0, help="How long 'a while' is."),
) -> None:
    """Curate the call log into examples: filter, redact PII, de-duplicate (runs until stopped)."""
    from protege.training.curation import Curator

    current = settings()
    curator = Curator.from_settings(current, ArtifactStore.from_settings(current))
    try:
        stats = asyncio.run(curator.run(until_idle=until_idle, idle_seconds=idle_seconds))
    except KeyboardInterrupt:
        stats = curator.stats
    rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.rejected.items())) or "none"
    console.print(
        f"curated {stats.seen} calls: kept {stats.kept}, duplicates {stats.duplicates}, near duplicates "
        f"{stats.near_duplicates}, rejected ({rejected}), dead-lettered {stats.dead_lettered}, "
        f"deleted past retention {stats.expired}; "
        f"PII replaced: {dict(stats.redactions) or 'none'}",
        highlight=False,
    )


@tasks_app.command("discover")
def discover_tasks(
    tenant: str | None = typer.Option(None, help="Only this tenant's examples."),
    min_task_size: int = typer.Option(10, help="Fewer examples than this is not a task yet."),
) -> None:
    """Cluster the curated examples into tasks (task ids stay stable across runs)."""
    from protege.tasks.datasets import save_registry
    from protege.tasks.discovery import DiscoverySettings, MiniLM, discover
    from protege.training.curation import ExampleStore

    store = _store()
    examples = ExampleStore(store).load(tenant)
    if not examples:
        fail("no curated examples yet: send calls through the gateway, then run `protege curate`", code=3)
    previous = load_registry(store)
    with console.status(f"embedding and clustering {len(examples)} examples ..."):
        registry = discover(examples, MiniLM(), previous, DiscoverySettings(min_task_size=min_task_size))
    if tenant is not None:  # the other tenants' tasks stay as they were
        registry = registry.with_other_tenants(previous, tenant)
    save_registry(store, registry)
    _print_tasks(registry)
    if registry.unassigned:
        console.print(
            f"{len(registry.unassigned)} examples are in groups smaller than {min_task_size}: not tasks yet"
        )


def _print_tasks(registry: TaskRegistry) -> None:
    table = Table()
    table.add_column("task", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("output")
    table.add_column("example prompt")
    for task in registry.tasks:
        example = " ".join(task.exemplars[0].user_text.split())[:60] if task.exemplars else ""
        table.add_row(task.id, task.name, str(task.size), task.output_kind.value, example)
    console.print(table)


def _registry() -> TaskRegistry:
    registry = load_registry(_store())
    if registry is None:
        fail("no tasks discovered yet: run `protege tasks discover`", code=3)
    return registry


@tasks_app.command("list")
def list_tasks() -> None:
    """The tasks of the last discovery run."""
    _print_tasks(_registry())


@tasks_app.command("show")
def show_task(task_id: str = typer.Argument(..., help="Task id or name.")) -> None:
    """One task: its structure, router profile and exemplars."""
    registry = _registry()
    try:
        task = registry.get(task_id)
    except KeyError as error:
        fail(str(error.args[0]))
    data = task.model_dump(mode="json", exclude={"example_ids"})
    data["router"]["centroids"] = f"{len(task.router.centroids)} × {len(task.router.centroids[0])} floats"
    console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), highlight=False)


@tasks_app.command("suggest")
def suggest(
    pool: str = typer.Option("smollm2-pool", help="SpecialistPool that would serve them."),
    min_size: int = typer.Option(100, help="Only tasks with at least this many examples."),
) -> None:
    """Print ready-to-apply Specialist manifests for the tasks big enough to learn."""
    from protege.flywheel.suggest import specialist_name, suggest_specialist

    documents = [
        {
            "apiVersion": API_VERSION,
            "kind": "Specialist",
            "metadata": {"name": specialist_name(task)},
            "spec": suggest_specialist(task, pool).to_kube(),
        }
        for task in _registry().tasks
        if task.size >= min_size
    ]
    if not documents:
        fail(f"no task has {min_size} examples yet (`protege tasks list`); lower --min-size or wait", code=3)
    console.print(yaml.safe_dump_all(documents, sort_keys=False), highlight=False, end="")


@datasets_app.command("build")
def build(
    task_id: str = typer.Argument(..., help="Task id or name."),
    min_examples: int = typer.Option(20, help="Refuse to build from fewer examples."),
    sql_database: Path | None = typer.Option(
        None, help="SQLite file the task's queries run on; SQL is then scored by execution on it."
    ),
) -> None:
    """Store a new dataset version of a task (train/validation/test; test frozen after the first)."""
    from protege.tasks.datasets import DatasetError, build_dataset
    from protege.training.curation import ExampleStore

    registry = _registry()
    try:
        task = registry.get(task_id)
    except KeyError as error:
        fail(str(error.args[0]))
    store = _store()
    try:
        manifest = build_dataset(
            store,
            task,
            ExampleStore(store).load(task.router.fingerprint.tenant),
            min_examples=min_examples,
            sql_database=sql_database,
        )
    except DatasetError as error:
        fail(str(error))
    counts = manifest.metadata["counts"]
    console.print(
        f"dataset {task.id} {manifest.version}: train {counts['train']}, validation {counts['validation']}, "
        f"test {counts['test']} → {store.uri('dataset', task.id, manifest.version)}",
        highlight=False,
    )


def train(
    task_id: str = typer.Argument(..., help="Task id or name; its latest dataset is used."),
    *,
    specialist: str = typer.Option(..., help="Name of the specialist the adapter is for."),
    base_model: str = typer.Option("smollm2-135m", help="Catalogue id, file:///path or hf://org/name."),
    rank: int = typer.Option(16, help="LoRA rank."),
    epochs: float = typer.Option(2, help="Passes over the training split."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps."),
    ray_address: str | None = typer.Option(
        None, help="Submit to this Ray (job API address); without it the job runs here, in this process."
    ),
) -> None:
    """Train, evaluate and gate a LoRA specialist for a task (the same job a RayJob runs)."""
    from protege.flywheel.policy import gate
    from protege.training.job import JobError, JobSpec, run

    try:
        task = _registry().get(task_id)
    except KeyError as error:
        fail(str(error.args[0]))
    spec = JobSpec.model_validate(
        {
            "specialist": specialist,
            "task": task.id,
            "base_model": base_model,
            "training": {"rank": rank, "epochs": epochs},
            "max_steps": max_steps,
        }
    )
    try:
        if ray_address:
            from protege.training.submit import JobFailedError, run_on_ray

            try:
                result = run_on_ray(spec, ray_address)
            except JobFailedError as error:
                fail(str(error))
        else:
            with console.status(f"training and evaluating {specialist} on {task.id} ..."):
                result = run(spec)
    except JobError as error:
        fail(str(error), code=2)
    scores = result.scores
    assert scores is not None  # a job that ran has scores; one that refused raised JobError
    verdict = gate(spec.evaluation, scores)  # the gate the flywheel would apply to them
    console.print(
        f"adapter {specialist}@{result.adapter_version}: {scores.metric.value} {scores.specialist:.3f} "
        f"(base zero-shot {scores.base_zero_shot or 0:.3f}); "
        f"gate {'passed' if verdict.passed else 'FAILED'}: {'; '.join(verdict.reasons)}",
        highlight=False,
    )


def select_model(
    task_id: str = typer.Argument(..., help="Task id or name; its latest dataset is probed."),
    *,
    candidates: str | None = typer.Option(
        None, help="Comma-separated catalogue ids; the whole catalogue by default."
    ),
    max_memory_gib: float = typer.Option(8.0, help="Budget for the weights (bf16), per replica."),
    licences: str | None = typer.Option(None, help="Comma-separated allowed licences, e.g. Apache-2.0,MIT."),
    sample: int = typer.Option(16, help="Validation examples per probe."),
) -> None:
    """Choose a base model for a task: budget filters, a few-shot probe, best score per GiB."""
    from protege.evaluation import resolve_metric
    from protege.store.artifacts import ArtifactNotFoundError
    from protege.tasks.datasets import DATASET_KIND
    from protege.training.job import read_rows
    from protege.training.selection import Budget, few_shot_probe, select

    try:
        task = _registry().get(task_id)
    except KeyError as error:
        fail(str(error.args[0]))
    store = _store()
    try:
        version = store.latest(DATASET_KIND, task.id).version
    except ArtifactNotFoundError:
        fail(f"no dataset for {task.id} yet; run `protege datasets build {task.id}`", code=3)
    train, validation = (
        read_rows(store, task.id, version, "train"),
        read_rows(store, task.id, version, "validation"),
    )
    metric = resolve_metric(EvaluationMetric.AUTO, task.output_kind)
    probe = few_shot_probe((validation or train)[:sample], train[:3], metric)
    budget = Budget(
        max_memory_gib=max_memory_gib,
        licences=frozenset(licences.split(",")) if licences else None,
    )
    with console.status("probing candidates ..."):
        result = select(
            train + validation,
            probe,
            settings().model_dir,
            budget,
            candidates.split(",") if candidates else None,
        )
    for line in result.reasoning:
        console.print(line, highlight=False)
    if result.chosen is None:
        raise typer.Exit(1)


def evaluate_adapter(
    specialist: str = typer.Argument(..., help="Specialist whose adapter to evaluate."),
    *,
    version: str | None = typer.Option(None, help="Adapter version; the latest by default."),
    baseline: bool = typer.Option(True, help="Also score the base model zero-shot, for comparison."),
    max_new_tokens: int = typer.Option(256, help="Generation limit per answer."),
) -> None:
    """Score an adapter again on its dataset's frozen test split (and the base model beside it)."""
    import tempfile

    from protege.evaluation import resolve_metric
    from protege.models.resolve import ModelResolver
    from protege.store.artifacts import ArtifactNotFoundError
    from protege.tasks.datasets import DATASET_KIND
    from protege.training.evaluation import TransformersGenerator, evaluate
    from protege.training.job import ADAPTER_KIND, read_rows, task_database

    store = _store()
    try:
        manifest = (
            store.manifest(ADAPTER_KIND, specialist, version)
            if version
            else store.latest(ADAPTER_KIND, specialist)
        )
    except ArtifactNotFoundError as error:
        fail(f"{error}; train one with `protege train TASK --specialist {specialist}`")
    meta = manifest.metadata
    dataset = store.manifest(DATASET_KIND, meta["task"], meta["dataset_version"])
    # the metric its job scored it with (the Specialist's); adapters from before it was recorded: the kind's
    metric = EvaluationMetric(meta["metric"]) if meta.get("metric") else EvaluationMetric.AUTO
    metric = resolve_metric(metric, OutputKind(dataset.metadata["task"]["output_kind"]))
    rows = read_rows(store, meta["task"], meta["dataset_version"], "test")
    database = (
        task_database(store, meta["task"], meta["dataset_version"])
        if metric is EvaluationMetric.SQL_EXECUTION
        else None
    )
    models = ModelResolver.from_settings(settings())
    model = models.resolve(meta["base_model"], meta.get("base_model_revision"))
    table = Table(title=f"{specialist}@{manifest.version} on {meta['task']} test split ({len(rows)} calls)")
    for column in ("model", metric.value, "p50 ms/call"):
        table.add_column(column, justify="left" if column == "model" else "right")
    with tempfile.TemporaryDirectory() as work, console.status("generating answers ..."):
        adapter = Path(work)
        store.download(ADAPTER_KIND, specialist, manifest.version, adapter)
        variants = [("specialist (LoRA)", adapter)] + ([("base model, zero-shot", None)] if baseline else [])
        for label, adapter_dir in variants:
            generator = TransformersGenerator(model, adapter_dir, max_new_tokens=max_new_tokens)
            result = evaluate(rows, generator, metric, database=database)
            table.add_row(label, f"{result.score:.3f}", f"{result.latency_ms_p50:.0f}")
    console.print(table)
