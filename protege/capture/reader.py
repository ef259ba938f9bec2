"""Reading call records back from the JetStream call log (`protege calls`, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from protege.api.calls import SUBJECT_PREFIX, CallRecord
from protege.capture.connection import NatsEndpoint, NatsTarget


@dataclass(frozen=True)
class UnreadableRecord:
    """A message on a call subject that is not a valid record (kept, reported, never fatal)."""

    subject: str
    sequence: int
    error: str


T = TypeVar("T")


class StreamMissingError(LookupError):
    """The call-log stream does not exist yet."""


def subject_filter(tenant: str | None = None, app: str | None = None) -> str:
    if tenant is None:
        return f"{SUBJECT_PREFIX}.>" if app is None else f"{SUBJECT_PREFIX}.*.{app}"
    return f"{SUBJECT_PREFIX}.{tenant}.{app or '*'}"


def record_on_subject(data: bytes, subject: str) -> CallRecord:
    """The record in a message, checked against the subject it came on: an identity may publish
    only its own tenant's subjects, so a record naming another tenant (or app) than its subject
    is a forgery and refused (ValueError), never taken for that tenant's."""
    record = CallRecord.from_json(data)
    if record.subject != subject:
        raise ValueError(
            f"record of {record.tenant}/{record.app} published on {subject}: its tenant and app must be "
            "its subject's"
        )
    return record


async def _unless_denied(call: Awaitable[T], denied: asyncio.Future[str], endpoint: NatsEndpoint) -> T:
    """``call``'s result; a PermissionError as soon as NATS says the identity may not make it
    (a refused request is otherwise only a timeout)."""
    task = asyncio.ensure_future(call)
    either: list[asyncio.Future[Any]] = [task, denied]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    raise PermissionError(
        f"NATS at {endpoint} does not let {endpoint.user or 'this client'} read the call log "
        f"({denied.result()}); reading takes the operator's identity"
    )


async def read_records(
    nats_url: NatsTarget,
    *,
    stream: str = "PROTEGE_CALLS",
    subject: str = f"{SUBJECT_PREFIX}.>",
    follow: bool = False,
    since: datetime | None = None,
    last: int | None = None,
    batch: int = 500,
    idle_seconds: float = 1.0,
) -> AsyncIterator[CallRecord | UnreadableRecord]:
    """Records on ``subject`` in stream order; with ``follow``, keep waiting for new ones.

    ``since`` starts at a time, ``last`` at the last N messages of the whole stream;
    the default is the beginning. Reading acknowledges nothing and changes nothing. A record
    whose tenant or app is not its subject's comes as an :class:`UnreadableRecord`.
    """
    endpoint = NatsEndpoint.of(nats_url)
    denied: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def quiet(error: Exception) -> None:  # the failure is raised below, once, with its fix
        if "permissions violation" in str(error).lower() and not denied.done():
            denied.set_result(str(error))

    try:
        client = await endpoint.connect(connect_timeout=2, max_reconnect_attempts=3, error_cb=quiet)
    except (OSError, NatsError) as error:
        if "authorization" in str(error).lower():
            raise ConnectionError(
                f"NATS at {endpoint} refused the identity {endpoint.user or '(none)'}: check nats_auth "
                "(PROTEGE_NATS_AUTH__USER and __PASSWORD, or __CREDENTIALS_DIR)"
            ) from None
        raise ConnectionError(
            f"cannot reach NATS at {endpoint} ({type(error).__name__}); is it running? "
            "(`protege services up` starts one locally; PROTEGE_NATS_URL points elsewhere)"
        ) from None
    try:
        js = client.jetstream()
        try:
            info = await _unless_denied(js.stream_info(stream), denied, endpoint)
        except NotFoundError:
            raise StreamMissingError(
                f"the call log stream {stream} does not exist yet on {endpoint}; it is created by the "
                "first call through the gateway or the listener SDK"
            ) from None
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, inactive_threshold=60, mem_storage=True, filter_subject=subject
        )
        if since is not None:
            config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, since
        elif last is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(info.state.first_seq, info.state.last_seq - last + 1)
        subscription = await js.pull_subscribe(subject, stream=stream, config=config)
        while True:
            try:
                messages = await subscription.fetch(batch, timeout=idle_seconds)
            except TimeoutError:
                if follow:
                    continue
                return
            for message in messages:
                try:
                    yield record_on_subject(message.data, message.subject)
                except (ValidationError, ValueError) as error:
                    yield UnreadableRecord(message.subject, message.metadata.sequence.stream, str(error))
            if not follow and messages and messages[-1].metadata.num_pending == 0:
                return
    finally:
        await client.close()
