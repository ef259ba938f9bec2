from __future__ import annotations

import json

import typer

from protege.cli.common import console, settings

app = typer.Typer(
    help="Configuration (PROTEGE_* variables and the PROTEGE_CONFIG file).", no_args_is_help=True
)


@app.command("show")
def show() -> None:
    """Print the effective settings; secrets are masked."""
    current = settings()
    data = json.loads(current.model_dump_json())
    data["artifact_store_url"] = current.artifact_store_url
    data["model_dir"] = str(current.model_dir)
    console.print_json(json.dumps(data))
