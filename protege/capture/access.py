"""Who may do what on the call log's NATS: one identity per component, one per listener-SDK tenant.

The same permissions are written into the local ``nats-server``'s config
(:class:`protege.services.nats.NatsServer`) and into the Helm chart's NATS config (the chart's
``nats-auth.yaml`` template; tests/chart checks they agree). Each identity may publish only
what it must, and subscribe only to its own inbox (``_INBOX.<user>.>``, the prefix its client
uses: :meth:`protege.capture.connection.NatsEndpoint.connect`), so it cannot listen to the
call subjects or to another identity's replies (a reader's replies carry records):

- ``gateway`` publishes every tenant's calls and creates/updates the call-log stream;
- ``curator`` consumes the stream (its durable consumer, acknowledgements), parks
  unreadable records on the dead-letter stream, and creates/updates the call-log stream
  too (when no gateway has yet: a listener-SDK tenant may not);
- ``operator`` reads the stream through ephemeral consumers (the operator's and the local
  flywheel's rollout observations, ``protege calls``); it publishes nothing;
- ``tenant-<name>`` (listener SDK) publishes ``protege.calls.<name>.>`` and nothing else:
  no JetStream API, so it can neither read the stream nor touch another tenant's subjects;
- ``admin`` (local servers only) may do anything: maintenance and tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from protege.api.calls import SUBJECT_PREFIX, check_subject_token

CALL_STREAM = "PROTEGE_CALLS"
DEAD_LETTER_STREAM = "PROTEGE_DEADLETTER"
DEAD_LETTER_SUBJECT = "protege.deadletter.calls"
GATEWAY, CURATOR, OPERATOR, ADMIN = "gateway", "curator", "operator", "admin"
COMPONENTS = (GATEWAY, CURATOR, OPERATOR)
TENANT_PREFIX = "tenant-"
JS_API = "$JS.API"


@dataclass(frozen=True)
class Identity:
    """A NATS user and its permissions (None: unrestricted)."""

    user: str
    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None

    def permissions(self) -> dict[str, dict[str, list[str]]] | None:
        if self.publish is None or self.subscribe is None:
            return None
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``'s connections; its identity may subscribe under it only."""
    return f"_INBOX.{user}"


def tenant_user(tenant: str) -> str:
    return TENANT_PREFIX + check_subject_token(tenant, "tenant")


def tenant_of(user: str | None) -> str | None:
    """The tenant a listener-SDK identity belongs to; None for a component or no identity."""
    if user is None or not user.startswith(TENANT_PREFIX):
        return None
    return user[len(TENANT_PREFIX) :] or None


def _api(*operations: str) -> tuple[str, ...]:
    return tuple(f"{JS_API}.{operation}" for operation in operations)


def _own_inbox(user: str) -> tuple[str, ...]:
    return (f"{inbox_prefix(user)}.>",)


def identity(user: str, stream: str = CALL_STREAM) -> Identity:
    """The permissions of one identity (a component, a ``tenant-<name>``, or ``admin``)."""
    inbox = _own_inbox(user)
    if user == GATEWAY:
        stream_api = _api(f"STREAM.INFO.{stream}", f"STREAM.CREATE.{stream}", f"STREAM.UPDATE.{stream}")
        return Identity(user, (f"{SUBJECT_PREFIX}.>", *stream_api), inbox)
    if user == CURATOR:
        publish = (
            *_api(
                f"STREAM.INFO.{stream}",
                f"STREAM.CREATE.{stream}",  # as a gateway does: a tenant's SDK may not make it
                f"STREAM.UPDATE.{stream}",
                f"CONSUMER.CREATE.{stream}.>",
                f"CONSUMER.DURABLE.CREATE.{stream}.>",
                f"CONSUMER.INFO.{stream}.>",
                f"CONSUMER.MSG.NEXT.{stream}.>",
                f"STREAM.INFO.{DEAD_LETTER_STREAM}",
                f"STREAM.CREATE.{DEAD_LETTER_STREAM}",
            ),
            f"$JS.ACK.{stream}.>",
            DEAD_LETTER_SUBJECT,
        )
        return Identity(user, publish, inbox)
    if user == OPERATOR:
        publish = _api(
            f"STREAM.INFO.{stream}",
            f"CONSUMER.CREATE.{stream}",  # ephemeral consumers, unnamed...
            f"CONSUMER.CREATE.{stream}.>",  # ...or named by the client (never acknowledged: nothing changes)
            f"CONSUMER.INFO.{stream}.>",
            f"CONSUMER.MSG.NEXT.{stream}.>",
        )
        return Identity(user, publish, inbox)
    if user == ADMIN:
        return Identity(user, None, None)
    tenant = tenant_of(user)
    if tenant is None:
        raise ValueError(
            f"{user!r} is no call-log identity; use one of {', '.join(COMPONENTS)}, {ADMIN} or "
            f"{TENANT_PREFIX}<tenant>"
        )
    check_subject_token(tenant, "tenant")
    return Identity(user, (f"{SUBJECT_PREFIX}.{tenant}.>",), inbox)


def identities(
    tenants: Iterable[str] = (), *, stream: str = CALL_STREAM, admin: bool = False
) -> list[Identity]:
    """The components' identities, one per tenant, and (local servers) the admin."""
    users = [*COMPONENTS, *(tenant_user(t) for t in sorted(set(tenants)))]
    return [identity(user, stream) for user in users + ([ADMIN] if admin else [])]


def authorization_config(users: Iterable[Identity], passwords: Mapping[str, str]) -> str:
    """An ``authorization { users = [...] }`` block for nats-server's config (JSON-shaped, which
    its config format accepts). A password starting with ``$`` is written unquoted: a reference
    to a variable of the server's environment (how the chart keeps passwords in a Secret)."""
    lines = ["authorization {", "  users = ["]
    for user in users:
        password = passwords[user.user]
        secret = password if password.startswith("$") else json.dumps(password)
        entry = f'    {{"user": {json.dumps(user.user)}, "password": {secret}'
        permissions = user.permissions()
        if permissions is not None:
            entry += f', "permissions": {json.dumps(permissions)}'
        lines.append(entry + "}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


__all__ = [
    "ADMIN",
    "CALL_STREAM",
    "COMPONENTS",
    "CURATOR",
    "DEAD_LETTER_STREAM",
    "DEAD_LETTER_SUBJECT",
    "GATEWAY",
    "OPERATOR",
    "Identity",
    "authorization_config",
    "identities",
    "identity",
    "inbox_prefix",
    "tenant_of",
    "tenant_user",
]
