"""Reading call records back from the JetStream call log (`protege calls`, tests)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from protege.api.calls import SUBJECT_PREFIX, CallRecord
from protege.capture.connection import NatsEndpoint, NatsTarget
from protege.capture.wire import records_in_message


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

    ``since`` starts at a time, ``last`` with the last N records (of the last N messages of
    the whole stream); the default is the beginning. Reading acknowledges nothing and changes
    nothing. A record whose tenant or app is not its subject's comes as an
    :class:`UnreadableRecord`.
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
        # With ``last``, the records of the stream's last N messages, less all but the last N.
        held: deque[CallRecord | UnreadableRecord] | None = deque(maxlen=last) if last is not None else None
        async for read in _read(subscription, batch, idle_seconds, follow):
            if not isinstance(read, _CaughtUp):
                if held is None:
                    yield read
                else:
                    held.append(read)
            elif held is not None:
                for record in held:
                    yield record
                held = None
    finally:
        await client.close()


class _CaughtUp:
    """What :func:`_read` yields when no record is left now (once or more)."""


CAUGHT_UP = _CaughtUp()


async def _read(
    subscription: JetStreamContext.PullSubscription, batch: int, idle_seconds: float, follow: bool
) -> AsyncIterator[CallRecord | UnreadableRecord | _CaughtUp]:
    """Every record of the subscription's messages, then CAUGHT_UP; with ``follow``, on and on."""
    while True:
        try:
            messages = await subscription.fetch(batch, timeout=idle_seconds)
        except TimeoutError:
            yield CAUGHT_UP
            if follow:
                continue
            return
        for message in messages:
            sequence = message.metadata.sequence.stream
            for _, found in records_in_message(message.data, message.subject):
                if isinstance(found, ValueError):
                    yield UnreadableRecord(message.subject, sequence, str(found))
                else:
                    yield found
        if messages and messages[-1].metadata.num_pending == 0:
            yield CAUGHT_UP
            if not follow:
                return
