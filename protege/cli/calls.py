"""`protege calls`: read the call log (JetStream)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from protege.api.calls import CallRecord, CallStatus
from protege.capture.access import OPERATOR, tenant_user
from protege.capture.connection import CredentialsError, NatsEndpoint, write_credentials
from protege.capture.reader import StreamMissingError, UnreadableRecord, read_records, subject_filter
from protege.capture.stats import parse_duration, summarize
from protege.cli.common import console, errors, fail, settings
from protege.config import Settings

app = typer.Typer(help="Read the call log: follow it, or summarize it.", no_args_is_help=True)

TENANT = typer.Option(None, "--tenant", "-t", help="Only this tenant.")
APP = typer.Option(None, "--app", "-a", help="Only this app.")


def _reader(current: Settings) -> NatsEndpoint:
    """The call log as the operator's identity reads it (`protege calls` reads, never writes)."""
    try:
        return NatsEndpoint.from_settings(current, OPERATOR)
    except CredentialsError as error:
        fail(str(error))


def _preview(text: object, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _line(record: CallRecord) -> str:
    color = "green" if record.status is CallStatus.OK else "red"
    prompt = record.request.messages[-1].content
    if record.response is None:
        answer = record.error.message if record.error else ""
    elif record.response.tool_calls:
        answer = ", ".join(f"{c.function.name}({c.function.arguments})" for c in record.response.tool_calls)
    else:
        answer = record.response.content or ""
    return (
        f"{record.timestamp:%H:%M:%S} {record.tenant}/{record.app} [{color}]{record.status.value}[/] "
        f"{record.latency.total_ms:7.1f} ms {record.request.model}  "
        f"[dim]{_preview(prompt)}[/] → {_preview(answer)}"
    )


@app.command("tail")
def tail(
    tenant: str | None = TENANT,
    app_name: str | None = APP,
    lines: int = typer.Option(20, "--lines", "-n", help="Start with the last N calls of the stream."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new calls as they come."),
    as_json: bool = typer.Option(False, "--json", help="Print each record as one line of JSON."),
) -> None:
    """Print recent calls, one line each (or as JSON lines)."""
    current = settings()

    async def run() -> None:
        async for record in read_records(
            _reader(current),
            stream=current.call_log.stream,
            subject=subject_filter(tenant, app_name),
            follow=follow,
            last=lines,
        ):
            if isinstance(record, UnreadableRecord):
                errors.print(f"unreadable record #{record.sequence} on {record.subject}: {record.error}")
            elif as_json:
                print(record.to_json().decode(), flush=True)
            else:
                console.print(_line(record), highlight=False)

    try:
        asyncio.run(run())
    except StreamMissingError as error:
        fail(str(error), code=3)
    except KeyboardInterrupt:
        pass
    except (ConnectionError, PermissionError) as error:
        fail(str(error))


@app.command("stats")
def stats(
    tenant: str | None = TENANT,
    app_name: str | None = APP,
    since: str = typer.Option("24h", help="Look back this far: 90s, 15m, 1h, 7d."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Calls per tenant and app: count, error rate, latency percentiles, tokens."""
    current = settings()
    try:
        start = datetime.now(UTC) - parse_duration(since)
    except ValueError as error:
        fail(str(error), code=2)

    async def collect() -> list[CallRecord]:
        subject = subject_filter(tenant, app_name)
        return [
            r
            async for r in read_records(
                _reader(current), stream=current.call_log.stream, subject=subject, since=start
            )
            if isinstance(r, CallRecord)
        ]

    try:
        records = asyncio.run(collect())
    except StreamMissingError as error:
        fail(str(error), code=3)
    except (ConnectionError, PermissionError) as error:
        fail(str(error))
    rows = summarize(records)
    if as_json:
        print(json.dumps([asdict(row) | {"error_rate": row.error_rate} for row in rows]))
        return
    table = Table(title=f"calls since {start:%Y-%m-%d %H:%M} UTC")
    # Names stay whole at any terminal width; the numbers give way first.
    table.add_column("tenant", no_wrap=True, min_width=max((len(r.tenant) for r in rows), default=6))
    table.add_column("app", no_wrap=True, min_width=max((len(r.app) for r in rows), default=3))
    for column in ("calls", "errors", "p50 ms", "p95 ms", "p99 ms", "tokens in/out"):
        table.add_column(column, justify="right")

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.1f}"

    for row in rows:
        table.add_row(
            row.tenant,
            row.app,
            str(row.calls),
            f"{row.errors} ({row.error_rate:.1%})",
            ms(row.p50_ms),
            ms(row.p95_ms),
            ms(row.p99_ms),
            f"{row.prompt_tokens}/{row.completion_tokens}",
        )
    console.print(table)
    if not records:
        console.print("no calls in that window")


@app.command("credentials")
def credentials(
    tenant: str = typer.Argument(help="The tenant whose listener SDK logs its own calls."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write them (mode 0600); <credentials dir>/tenant-<tenant>.json."
    ),
) -> None:
    """Give a tenant's listener SDK its own identity on the local NATS: it may publish its own calls only.

    The file (user, password, URL) goes to the agent: ``NatsEndpoint.from_credentials(path)``.
    A running server reloads its config; the password is never printed. In Kubernetes, list the
    tenant in the chart's callLog.auth.tenants and put its password in the Secret instead.
    """
    from protege.services.nats import NatsServer
    from protege.services.process import ServiceError

    current = settings()
    directory = current.nats_auth.credentials_dir
    if directory is None:
        fail(
            "no local NATS identities to add to: start one with `protege services up` or `protege up`, "
            "or set nats_auth.credentials_dir (PROTEGE_NATS_AUTH__CREDENTIALS_DIR) to its credentials"
        )
    try:
        server = NatsServer.configured_in(directory.parent, stream=current.call_log.stream)
        made = server.add_tenant(tenant)
        identity = server.endpoint(tenant_user(tenant))
    except (ServiceError, ValueError) as error:
        fail(str(error))
    assert identity.password is not None
    path = write_credentials(out or made, identity.user or "", identity.password, current.nats_url)
    console.print(f"tenant {tenant}: credentials in {path} (mode 0600; the password is not shown)")
    usage = f"  log = BackgroundPublisher(NatsEndpoint.from_credentials({str(path)!r}), spool_dir)"
    console.print(usage, highlight=False)
