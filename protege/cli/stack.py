"""`protege up`, `protege down` and `protege flywheel run`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError

from protege.cli.common import console, fail, settings

if TYPE_CHECKING:
    from protege.stack.config import StackConfig

flywheel_app = typer.Typer(
    help="The local flywheel (what the operator does in a cluster).", no_args_is_help=True
)


M = TypeVar("M", bound=BaseModel)


def _directory(directory: Path | None) -> Path:
    return directory or settings().home / "up"


def _from_yaml(model: type[M], path: Path | None, option: str) -> M:
    """``model`` from a YAML file (its defaults without one); a clear error naming ``option`` otherwise."""
    try:
        return model.model_validate(yaml.safe_load(path.read_text()) or {} if path else {})
    except (OSError, yaml.YAMLError) as error:
        fail(f"{option} {path}: {error}", code=2)
    except ValidationError as error:
        from protege.api.meta import spec_problems

        fail(f"{option} {path}: {spec_problems(error)}", code=2)


def _config(path: Path | None, gateway_port: int | None) -> StackConfig:
    from protege.stack.config import StackConfig  # the local stack's, loaded only by its commands

    config = _from_yaml(StackConfig, path, "--config")
    if gateway_port is not None:
        config.gateway_port = gateway_port
    return config


def up(
    *,
    directory: Path | None = typer.Option(None, "--dir", help="State directory (default <home>/up)."),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML: pool, policy for new tasks, flywheel pace (protege.stack.config)."
    ),
    gateway_port: int | None = typer.Option(None, help="The gateway's port (default 8080)."),
) -> None:
    """Start the whole loop here and watch it: call log, store, Ray + vLLM pool, gateway, flywheel.

    Runs in the foreground with a live view; Ctrl-C or `protege down` stops it. A part that
    dies is started again. Point an OpenAI client at the gateway it prints.
    """
    from rich.live import Live

    from protege.stack.supervisor import Stack, StackError, read_state
    from protege.stack.view import render, snapshot
    from protege.testing.recorded_teacher import RecordedTeacher
    from protege.workload import recorded_workload

    state_dir = _directory(directory)
    config = _config(config_file, gateway_port)
    if read_state(state_dir):
        fail(f"a stack is already up in {state_dir} (or was killed): `protege down --dir {state_dir}` first")
    stack = Stack(
        state_dir,
        config,
        teacher=RecordedTeacher(recorded_workload(config.teacher_calls, config.teacher_seed)),
        say=lambda line: console.print(f"[dim]{line}[/]"),
    )
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stack.start()
        console.print(
            f"[bold]up[/]: gateway {stack.gateway_url}/v1 (model {stack.teacher_model}), "
            f"agent key in {state_dir / 'agent-key'}; `protege down` stops it"
        )
        with Live(render(snapshot(stack)), console=console, refresh_per_second=1) as live:
            while not stopping:
                for line in stack.check():
                    console.print(f"[yellow]{line}[/]")
                live.update(render(snapshot(stack)))
                time.sleep(2)
    except StackError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(1) from None
    finally:
        stack.stop()
    console.print("stopped")


def down(
    *, directory: Path | None = typer.Option(None, "--dir", help="State directory (default <home>/up).")
) -> None:
    """Stop what `protege up` started (cleanly; leftovers of a killed one too)."""
    from protege.stack.supervisor import stop_stack

    stopped = stop_stack(_directory(directory))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was up")


@flywheel_app.command("run")
def flywheel_run(
    config: Path = typer.Option(..., help="The flywheel's JSON config (written by `protege up`)."),
) -> None:
    """Curate, discover, create Specialists, drive them: forever, one heartbeat at a time."""
    from protege.flywheel.run import FlywheelProcessConfig, run_forever

    try:
        parsed = FlywheelProcessConfig.model_validate_json(config.read_text())
    except (OSError, ValidationError) as error:
        fail(f"--config {config}: {error}", code=2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run_forever(parsed))


def demo(
    *,
    directory: Path | None = typer.Option(
        None, "--dir", help="Where the demo keeps its stack and writes its report (default <home>/demo)."
    ),
    plan_file: Path | None = typer.Option(
        None, "--plan", help="YAML overriding the demo plan (protege.stack.demo.DemoPlan)."
    ),
    keep: bool = typer.Option(False, help="Keep the previous run's state instead of starting afresh."),
) -> None:
    """The whole loop end to end, here: agent traffic → tasks → specialists → rollout → drift → report."""
    import shutil

    from protege.stack.demo import Demo, DemoPlan
    from protege.stack.report import markdown_table, terminal_table
    from protege.stack.supervisor import StackError, stop_stack

    work = directory or settings().home / "demo"
    plan = _from_yaml(DemoPlan, plan_file, "--plan")
    stop_stack(work / "stack")  # a demo killed earlier
    if not keep and work.exists():
        shutil.rmtree(work)
    run = Demo(plan, work, say=lambda line: console.print(line, highlight=False))

    def _interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # SIGTERM (`timeout`, `kill`) stops the stack as Ctrl-C does

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run.run()
    except StackError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted: stopping the demo's stack; `protege demo` starts afresh", code=130)
    finally:
        run.close()
    title = f"Protégé demo: {result.seconds / 60:.1f} min"
    if console.is_terminal:
        console.print(terminal_table(result.rows, title))
    else:  # a log file: rich would squeeze the table into 80 columns
        console.print(f"{title}\n{markdown_table(result.rows)}", highlight=False, soft_wrap=True)
    console.print(
        f"agent calls answered {result.calls}, in the call log {result.logged}; "
        f"fallbacks {dict(result.fallbacks) or 'none'}\n{plan.prices.describe()}\n"
        "teacher latency is the recorded teacher's (a lookup, not a model): compare costs, not speed\n"
        f"report: {result.report_dir / 'report.html'} (and report.png, report.md, report.json)",
        highlight=False,
    )
