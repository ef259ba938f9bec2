"""The demo's agent: the shipped workload replayed through the gateway, without end, at a steady rate.

It runs on a thread of its own (its own event loop) so the demo can watch the flywheel
meanwhile; the mix of calls can be changed while it runs (a drift). The OpenAI SDK retries
a failed call as an agent's client would, so a restarted gateway costs latency, not calls.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence

from protege.workload import WorkloadCall
from protege.workload.replay import Outcome, replay


class Agent:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        calls: Sequence[WorkloadCall],
        *,
        rate: float,
        concurrency: int = 4,
        max_retries: int = 6,
    ) -> None:
        self.base_url, self.api_key, self.model = base_url, api_key, model
        self.rate, self.concurrency, self.max_retries = rate, concurrency, max_retries
        self.outcomes: list[Outcome] = []
        self._calls = itertools.cycle(list(calls))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-agent", daemon=True)

    def switch(self, calls: Sequence[WorkloadCall]) -> None:
        """From the next batch on, make these calls (in a cycle)."""
        with self._lock:
            self._calls = itertools.cycle(list(calls))

    def start(self) -> Agent:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=300)

    def _next_batch(self) -> list[WorkloadCall]:
        with self._lock:
            return list(itertools.islice(self._calls, max(1, int(self.rate * 5))))

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = asyncio.run(
                replay(
                    self._next_batch(),
                    self.base_url,
                    self.api_key,
                    model=self.model,
                    concurrency=self.concurrency,
                    rate=self.rate,
                    max_retries=self.max_retries,
                    request_timeout=300,
                )
            )
            with self._lock:
                self.outcomes.extend(batch)
