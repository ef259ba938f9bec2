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
    """The effective settings; with `protege up` running under the same home, its call log and store.

    Commands such as `protege tasks list` or `protege curate` then read what the running stack
    writes, unless the settings name another call log or store (nats_url, artifact_store).
    Without it, the NATS of `protege services up` (default URL, no identity set) is reached with
    the identities it keeps under the same home.
    """
    try:
        current = load_settings()
        set_by_hand = current.artifact_store or current.nats_url != Settings.model_fields["nats_url"].default
        state_dir = current.home / "up"
        if set_by_hand or not (state_dir / "state.json").exists():
            return _with_local_identities(current)
        from protege.stack.supervisor import running_stack_settings

        return load_settings(**running_stack_settings(state_dir))
    except ConfigError as error:
        fail(str(error), code=2)


def _with_local_identities(current: Settings) -> Settings:
    local = current.home / "services" / "nats" / "credentials"
    auth = current.nats_auth
    if auth.user is not None or auth.credentials_dir is not None or not local.is_dir():
        return current
    if current.nats_url != Settings.model_fields["nats_url"].default:
        return current
    return current.model_copy(update={"nats_auth": auth.model_copy(update={"credentials_dir": local})})
