"""`protege gateway`: the OpenAI-compatible gateway, and its API keys."""

from __future__ import annotations

import typer

from protege.api.calls import check_subject_token
from protege.cli.common import console, fail, settings
from protege.config import ConfigError

app = typer.Typer(help="The OpenAI-compatible gateway that logs every call.", invoke_without_command=True)
keys = typer.Typer(help="Gateway API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys, name="keys")


@app.callback()
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Listen address (default: the gateway.host setting)."),
    port: int | None = typer.Option(None, help="Listen port (default: the gateway.port setting)."),
    metrics_port: int | None = typer.Option(
        None, help="Port of /metrics (default: the gateway.metrics_port setting; 0: any free port)."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the gateway (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from protege.serving.gateway.app import create_app

    current = settings()
    given = {"host": host, "port": port, "metrics_port": metrics_port}
    chosen = {name: value for name, value in given.items() if value is not None}
    if chosen:  # the options win over the settings (the metrics listener reads them too)
        current = current.model_copy(update={"gateway": current.gateway.model_copy(update=chosen)})
    if current.teacher.url is None:
        fail(
            "teacher.url is not set: export PROTEGE_TEACHER__URL=https://your-llm/v1 "
            "(and PROTEGE_TEACHER__MODEL)"
        )
    try:
        gateway_app = create_app(current)
    except (ConfigError, ValueError, RuntimeError) as error:
        fail(str(error))
    if not gateway_app.state.gateway.keys:
        console.print(
            "[yellow]warning:[/] no API keys configured: every call will get 401; "
            "create one with `protege gateway keys create --tenant NAME`",
            highlight=False,
        )
    uvicorn.run(
        gateway_app,
        host=current.gateway.host,
        port=current.gateway.port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=current.gateway.keep_alive_seconds,
        # SIGTERM: stop listening, give calls in flight drain_seconds, then the lifespan's shutdown
        # (pending shadow answers, the call log's flush to NATS)
        timeout_graceful_shutdown=current.gateway.drain_seconds,
        loop="uvloop",
        http="httptools",
    )


@keys.command("create")
def create_key(
    tenant: str = typer.Option(..., help="Tenant the key's calls belong to."),
    app_name: str = typer.Option(
        "default", "--app", help="App tag for calls without an X-Protege-App header."
    ),
    name: str | None = typer.Option(None, help="A label for people: who holds the key."),
) -> None:
    """Make a new key: prints the key once (give it to the agent) and the entry to configure."""
    from protege.serving.gateway.auth import hash_key, new_key

    try:
        check_subject_token(tenant, "tenant")
        check_subject_token(app_name, "app")
    except ValueError as error:
        fail(str(error), code=2)
    key = new_key()
    console.print(f"# the key (shown once; the gateway stores only its hash):\n{key}", highlight=False)
    console.print(
        "# add this entry to gateway.api_keys (config file) or to gateway.api_keys_file:", highlight=False
    )
    entry = f"- sha256: {hash_key(key)}\n  tenant: {tenant}\n  app: {app_name}"
    console.print(entry + (f"\n  name: {name}" if name else ""), highlight=False)
