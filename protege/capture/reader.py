"""Reading call records back from the JetStream call log (`protege calls`, tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import nats
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from protege.api.calls import SUBJECT_PREFIX, CallRecord


@dataclass(frozen=True)
class UnreadableRecord:
    """A message on a call subject that is not a valid record (kept, reported, never fatal)."""

    subject: str
    sequence: int
    error: str


class StreamMissingError(LookupError):
    """The call-log stream does not exist yet."""


def subject_filter(tenant: str | None = None, app: str | None = None) -> str:
    if tenant is None:
        return f"{SUBJECT_PREFIX}.>" if app is None else f"{SUBJECT_PREFIX}.*.{app}"
    return f"{SUBJECT_PREFIX}.{tenant}.{app or '*'}"


async def read_records(
    nats_url: str,
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
    the default is the beginning. Reading acknowledges nothing and changes nothing.
    """

    async def quiet(error: Exception) -> None:  # the failure is raised below, once, with its fix
        pass

    try:
        client = await nats.connect(
            nats_url.split(","), connect_timeout=2, max_reconnect_attempts=3, error_cb=quiet
        )
    except (OSError, NatsError) as error:
        raise ConnectionError(
            f"cannot reach NATS at {nats_url} ({type(error).__name__}); is it running? "
            "(`protege services up` starts one locally; PROTEGE_NATS_URL points elsewhere)"
        ) from None
    try:
        js = client.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            raise StreamMissingError(
                f"the call log stream {stream} does not exist yet on {nats_url}; it is created by the "
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
                    yield CallRecord.from_json(message.data)
                except ValidationError as error:
                    yield UnreadableRecord(message.subject, message.metadata.sequence.stream, str(error))
            if not follow and messages and messages[-1].metadata.num_pending == 0:
                return
    finally:
        await client.close()
