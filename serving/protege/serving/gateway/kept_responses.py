"""Responses a specialist answered, kept for the calls that continue them with ``previous_response_id``.

A Responses call the teacher answers is stored by the teacher (OpenAI keeps it unless
``store`` is false), so a later call naming it as ``previous_response_id`` goes to the teacher
as it came. A response a specialist answered exists only here: the teacher has never seen
its id. The gateway keeps such a response's conversation (the input items it was asked
with, the previous ones included, then its output items) and, when a call names it, puts
that conversation in front of the call's input and drops ``previous_response_id``, which is
what the Responses API does with it (the earlier ``instructions`` are not carried over). The
continued call is then like any other: routed to a specialist or sent whole to the teacher.

Kept per tenant (another tenant's id is unknown), in memory, for ``ttl_seconds`` and within
``max_bytes`` (the oldest go first); ``store: false`` calls are not kept. Ids the gateway
mints start with ``RESPONSE_ID_PREFIX``, so one that is no longer kept is told apart from the
teacher's and gets a clear error rather than the teacher's "not found".
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protege.api.responses import RESPONSE_ID_PREFIX


@dataclass(frozen=True)
class _Kept:
    items: list[dict[str, Any]]
    size: int
    expires: float


def input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses request's ``input`` as a list of input items (a string is one user message)."""
    given = request.get("input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


class KeptResponses:
    def __init__(
        self, max_bytes: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes, self.ttl_seconds, self.clock = max_bytes, ttl_seconds, clock
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.ttl_seconds > 0

    def keep(self, tenant: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        """Keep a completed response to ``request`` (continued already: its input is all the conversation)."""
        if not self.enabled or request.get("store") is False or response.get("status") != "completed":
            return
        items = [*input_items(request), *(response.get("output") or [])]
        size = len(json.dumps(items, separators=(",", ":")))
        if size > self.max_bytes:
            return
        self._forget((tenant, response["id"]))
        self._kept[tenant, response["id"]] = _Kept(items, size, self.clock() + self.ttl_seconds)
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._forget(next(iter(self._kept)))

    def continued(self, tenant: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """``request`` with its previous response's conversation in front and no ``previous_response_id``;
        None when that response is not one kept here (the teacher's, or none).

        Raises ``LookupError`` for a response a specialist answered that is no longer kept.
        """
        previous = request.get("previous_response_id")
        if not isinstance(previous, str) or not previous.startswith(RESPONSE_ID_PREFIX + "_"):
            return None
        kept = self._kept.get((tenant, previous))
        if kept is None or kept.expires <= self.clock():
            self._forget((tenant, previous))
            raise LookupError(
                f"Previous response '{previous}' was answered by a specialist and this gateway no longer "
                f"keeps it (it keeps such responses {self.ttl_seconds:g} s, within {self.max_bytes} bytes, "
                "per replica). Send the whole conversation as 'input' instead of 'previous_response_id'."
            )
        continued = {key: value for key, value in request.items() if key != "previous_response_id"}
        continued["input"] = [*kept.items, *input_items(request)]
        return continued

    def _forget(self, key: tuple[str, str]) -> None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self._bytes -= gone.size
