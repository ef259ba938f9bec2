"""The operator's flywheel passes under way: stopping lets them end rather than cutting one half-way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Passes:
    """The flywheel passes under way, so that stopping lets them end instead of cutting one mid-read
    (its Kubernetes session closed under it, a call-log read cancelled half-way)."""

    def __init__(self) -> None:
        self.stopping = False
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def one(self) -> AsyncIterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def drain(self, seconds: float) -> bool:
        """No new pass starts; wait up to ``seconds`` for those under way; whether they all ended."""
        self.stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True
