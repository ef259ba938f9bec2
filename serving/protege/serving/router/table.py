"""The routing table's choice for one call: which version answers it, and which shadows it.

The table itself is a contract (:mod:`protege.api.routes`), written by the flywheel driver
(locally) or the operator (from Specialist status) and read by every gateway replica; the
choice for one call is a pure function of the table and a draw in [0, 1), so rollouts are
testable without traffic. The draw comes from the
call's conversation (:func:`conversation_key`, :func:`conversation_draw`): every turn of one
conversation meets the same version, on every gateway replica and after restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from protege.api.calls import ChatRequest, RouteReason
from protege.api.routes import (  # the contract, re-exported for the router's callers
    ADAPTER_NAME,
    Candidate,
    RolloutStage,
    RoutingTable,
    SpecialistRoute,
    UnknownAdapterError,
    adapter_name,
    parse_adapter_name,
)

log = logging.getLogger(__name__)

# A caller's name for its conversation: the canary draw is made from it when present.
CONVERSATION_HEADER = "x-protege-conversation"
# OpenAI request fields that name the end user or the conversation, in the order they are read.
_CONVERSATION_FIELDS = ("user", "safety_identifier", "prompt_cache_key")

__all__ = [
    "ADAPTER_NAME",
    "CONVERSATION_HEADER",
    "Candidate",
    "Choice",
    "RolloutStage",
    "RoutingTable",
    "SpecialistRoute",
    "TableFile",
    "UnknownAdapterError",
    "adapter_name",
    "choose",
    "conversation_draw",
    "conversation_key",
    "parse_adapter_name",
]


class TableFile:
    """The routing table in a JSON file (the flywheel's, or the pool's mounted ConfigMap), read
    again when its text changed: it is small, and mtimes can be too coarse."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._text: str | None = None

    def changed(self) -> RoutingTable | None:
        """The table, if the file's text changed since the last read; None if not, if there is no
        file, or if it is invalid (said in the log: the caller keeps the table it has)."""
        if self.path is None or not self.path.exists():
            return None
        text = self.path.read_text()
        if text == self._text:
            return None
        self._text = text
        try:
            return RoutingTable.model_validate_json(text)
        except ValueError as error:
            log.error("routing table %s is invalid, keeping the previous one: %s", self.path, error)
            return None


@dataclass(frozen=True)
class Choice:
    """Where one call goes: the version that answers it (None: the teacher), and a shadow."""

    version: str | None
    reason: RouteReason
    shadow: str | None = None


def choose(route: SpecialistRoute, draw: float) -> Choice:
    """The version for one call of ``route``'s task.

    ``draw`` is uniform in [0, 1) over calls (the router's: :func:`conversation_draw`); a
    canary answers the calls whose draw is below its ``traffic_percent``.
    """
    active = route.active if route.active not in route.failed else None
    candidate = route.candidate if route.candidate and route.candidate.version not in route.failed else None
    if (
        candidate is not None
        and candidate.stage is RolloutStage.CANARY
        and draw * 100 < candidate.traffic_percent
    ):
        return Choice(candidate.version, RouteReason.CANARY)
    shadow = candidate.version if candidate is not None and candidate.stage is RolloutStage.SHADOW else None
    if active is None:
        return Choice(None, RouteReason.SHADOW if shadow else RouteReason.NO_ACTIVE_SPECIALIST, shadow)
    return Choice(active, RouteReason.SPECIALIST, shadow)


def conversation_key(request: ChatRequest, header: str | None = None) -> str:
    """What makes calls one conversation, for the canary draw.

    The caller's ``x-protege-conversation`` header when it sent one; else the request's
    ``user``, ``safety_identifier`` or ``prompt_cache_key`` (the first present); else the
    system prompt and the first user message, which every later turn of the conversation
    repeats (two conversations that open alike are one to the draw).
    """
    if header:
        return "header:" + header
    extra = request.model_extra or {}
    for field in _CONVERSATION_FIELDS:
        value = request.user if field == "user" else extra.get(field)
        if isinstance(value, str) and value:
            return f"{field}:{value}"
    opening = []
    for message in request.messages:
        if message.role in ("system", "developer", "user"):
            opening.append([message.role, message.content])
        if message.role == "user":
            break
    return "opening:" + json.dumps(opening, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def conversation_draw(route: SpecialistRoute, key: str) -> float:
    """The draw in [0, 1) for a conversation of ``route``'s task: uniform over keys, and stable.

    The first 8 bytes of a sha256 over the key and the candidate, as a fraction of 2**64:
    the same on every replica and after restarts. With the candidate in it, each rollout
    draws its own canary conversations (not always the same ones), and the conversations a
    canary step holds stay in it at the next, larger step.
    """
    candidate = route.candidate.version if route.candidate is not None else ""
    digest = hashlib.sha256(f"{route.specialist}@{candidate}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
