"""`protege workload`: the shipped agent workload, its recorded teacher, and a replay client."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from protege.capture.stats import percentile
from protege.cli.common import console, fail

if TYPE_CHECKING:  # the shipped workload loads only with these commands: never in a production image
    from protege.workload import WorkloadCall

app = typer.Typer(
    help="The shipped agent workload: its recorded teacher and a replay client.", no_args_is_help=True
)


def _calls(count: int, seed: int, split: str) -> list[WorkloadCall]:
    from protege.workload import generate

    calls = generate(count, seed=seed)
    if split == "all":
        return calls
    return [c for c in calls if c.heldout == (split == "heldout")]


@app.command("teacher")
def teacher(
    *,
    count: int = typer.Option(
        2000, help="Calls of the workload it has recordings for (and as many of the drifted release)."
    ),
    seed: int = typer.Option(7, help="The workload's seed (the same as the replay's)."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int = typer.Option(8400, help="Listen port."),
) -> None:
    """Serve the recorded teacher: answers the workload's requests from its recordings (not a model)."""
    import uvicorn

    from protege.testing.recorded_teacher import RecordedTeacher
    from protege.workload import recorded_workload

    console.print(
        f"recorded teacher for {count} workload calls (seed {seed}) on http://{host}:{port}/v1 — "
        "it answers only the shipped workload; point teacher.url at a real LLM for anything else"
    )
    uvicorn.run(RecordedTeacher(recorded_workload(count, seed)), host=host, port=port, log_level="warning")


@app.command("replay")
def replay_command(
    *,
    gateway: str = typer.Option("http://127.0.0.1:8080/v1", help="The gateway's base URL."),
    api_key: str = typer.Option(
        None,
        envvar="PROTEGE_API_KEY",
        help="A gateway key (`protege gateway keys create`); or PROTEGE_API_KEY.",
    ),
    model: str = typer.Option(None, help="Model to ask for (the gateway's teacher model name)."),
    count: int = typer.Option(200, help="Calls to send."),
    seed: int = typer.Option(7, help="The workload's seed (the recorded teacher's)."),
    split: str = typer.Option("train", help="'train', 'heldout' (never used for training) or 'all'."),
    concurrency: int = typer.Option(4, min=1, help="Calls in flight."),
    rate: float = typer.Option(
        None, min=0.01, help="Calls per second at most; as fast as allowed when unset."
    ),
    app_name: str = typer.Option(None, "--app", help="App tag (X-Protege-App)."),
) -> None:
    """Drive the gateway like the agent would: the OpenAI SDK, concurrency, an arrival rate."""
    from protege.workload import FAMILIES
    from protege.workload.replay import replay

    if not api_key:
        fail(
            "no API key: pass --api-key or set PROTEGE_API_KEY (`protege gateway keys create --tenant NAME`)"
        )
    if split not in ("train", "heldout", "all"):
        fail(f"--split {split!r}: use 'train', 'heldout' or 'all'")
    calls = _calls(count, seed, split)
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("calls", total=len(calls))
        outcomes = asyncio.run(
            replay(
                calls, gateway, api_key, model=model, concurrency=concurrency, rate=rate, app=app_name,
                on_outcome=lambda _: progress.advance(task),
            )
        )  # fmt: skip
    table = Table(title=f"{len(outcomes)} calls through {gateway}")
    for column in ("family", "calls", "errors", "by specialist", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right" if column != "family" else "left")
    for family in FAMILIES:
        mine = [o for o in outcomes if o.call.task == family]
        if not mine:
            continue
        latencies = sorted(o.seconds * 1000 for o in mine)
        table.add_row(
            family, str(len(mine)), str(sum(o.error is not None for o in mine)),
            str(sum(o.specialist is not None for o in mine)),
            f"{percentile(latencies, 50):.0f}", f"{percentile(latencies, 95):.0f}",
        )  # fmt: skip
    console.print(table)
    errors = Counter(o.error.split(":")[0] for o in outcomes if o.error)
    if errors:
        console.print(
            f"[yellow]errors:[/] {dict(errors)}; first: {next(o.error for o in outcomes if o.error)}"
        )
    if errors and sum(errors.values()) == len(outcomes):
        fail("every call failed: is the gateway up, the key valid and --model its teacher's name?")
