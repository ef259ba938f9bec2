"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from protege.config import ConfigError, Settings, load_settings

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)  # one line per message: greppable, copyable


def fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        fail(str(error), code=2)
