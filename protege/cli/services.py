from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from protege.cli.common import console, fail, settings
from protege.services.local import is_healthy, read_state, services_down, services_up
from protege.services.nats import CREDENTIALS_DIR
from protege.services.process import ServiceError
from protege.services.seaweedfs import CREDENTIALS_FILE, read_credentials

app = typer.Typer(
    help="Local NATS JetStream and S3 store (SeaweedFS), for one machine.", no_args_is_help=True
)


@app.command("up")
def up(
    nats_port: int = typer.Option(4222, help="NATS client port (its monitor listens on port + 4000)."),
    s3_port: int = typer.Option(8333, help="S3 gateway port."),
) -> None:
    """Start the services in the background and print the settings that reach them."""
    current = settings()
    home = current.home
    try:
        running = services_up(home, nats_port=nats_port, s3_port=s3_port, stream=current.call_log.stream)
    except ServiceError as error:
        fail(str(error))
    access_key_id, _ = read_credentials(Path(running["s3"].data_dir))
    console.print(f"# services running; logs under {home / 'services'}", highlight=False)
    console.print(f"export PROTEGE_NATS_URL={running['nats'].url}", highlight=False)
    credentials = Path(running["nats"].data_dir) / CREDENTIALS_DIR
    console.print(f"export PROTEGE_NATS_AUTH__CREDENTIALS_DIR={credentials}", highlight=False)
    console.print("export PROTEGE_ARTIFACT_STORE=s3://protege/artifacts", highlight=False)
    console.print(f"export PROTEGE_S3__ENDPOINT_URL={running['s3'].url}", highlight=False)
    console.print(f"export PROTEGE_S3__ACCESS_KEY_ID={access_key_id}", highlight=False)
    console.print(
        f"# the secret key is in {running['s3'].data_dir}/{CREDENTIALS_FILE}; export it as "
        "PROTEGE_S3__SECRET_ACCESS_KEY",
        highlight=False,
    )


@app.command("down")
def down() -> None:
    """Stop the services started by `up` (their data stays)."""
    stopped = services_down(settings().home)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("status")
def status() -> None:
    """Show the local services and whether they answer."""
    state = read_state(settings().home)
    if not state:
        console.print("no services started; run `protege services up`")
        raise typer.Exit(3)
    table = Table()
    for column in ("service", "pid", "url", "healthy", "data"):
        table.add_column(column)
    healthy = True
    for service in state.values():
        ok = is_healthy(service)
        healthy &= ok
        table.add_row(
            service.name, str(service.pid), service.url, "yes" if ok else "[red]no[/]", service.data_dir
        )
    console.print(table)
    if not healthy:
        raise typer.Exit(1)
