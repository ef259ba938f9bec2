"""The `protege` command line."""

from __future__ import annotations

import typer

from protege.cli import calls, crds, gateway, models, render, services, settings, stack, tasks, workload
from protege.version import __version__


def _version(value: bool) -> None:
    if value:
        typer.echo(f"protege {__version__}")
        raise typer.Exit


app = typer.Typer(
    name="protege",
    help="Protégé: turn the LLM calls an agent already makes into small fine-tuned specialists.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(services.app, name="services")
app.add_typer(models.app, name="models")
app.add_typer(settings.app, name="config")
app.add_typer(gateway.app, name="gateway")
app.add_typer(calls.app, name="calls")
app.add_typer(tasks.tasks_app, name="tasks")
app.add_typer(tasks.datasets_app, name="datasets")
app.add_typer(workload.app, name="workload")
app.add_typer(stack.flywheel_app, name="flywheel")
app.command("up")(stack.up)
app.command("down")(stack.down)
app.command("demo")(stack.demo)
app.command("curate")(tasks.curate)
app.command("train")(tasks.train)
app.command("select")(tasks.select_model)
app.command("eval")(tasks.evaluate_adapter)
app.command("crds")(crds.crds)
app.command("render")(render.render)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Protégé command line."""


def main() -> None:
    app()
