"""Teacher samples: the teacher also answers some of the calls a specialist answered, off the request path.

A specialist's live quality is its agreement with the teacher, not the absence of
fallbacks: with ``rollout.teacherSampleRate`` (the route's ``teacher_sample_rate``) of the
calls a canary or serving version answers, the gateway sends the same chat request to the
teacher after the caller has its answer, and the record carries the teacher's answer and
the specialist's score against it (``CallRecord.teacher_sample``). While a candidate
shadows a serving version, every call is sampled (its shadow answer needs the teacher's to
be scored against). Samples cost teacher tokens: they are bounded by a budget per minute
(``router.teacher_samples_per_minute``, a token bucket) and by the samples in flight
(``router.max_teacher_samples_in_flight``); past either, a call is not sampled (counted).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from protege.api.calls import AlternateAnswer, ChatResponse, ErrorInfo, Latency, Upstream, UpstreamKind, Usage
from protege.serving.gateway.teacher import TeacherClient
from protege.serving.router.router import unstreamed
from protege.serving.router.table import SpecialistRoute


class TeacherSampler:
    def __init__(
        self,
        teacher: TeacherClient,
        model: str,
        per_minute: float,
        max_in_flight: int,
        rng: random.Random | None = None,
    ) -> None:
        self.teacher, self.model = teacher, model
        self.per_minute, self.max_in_flight = per_minute, max_in_flight
        self._tokens = per_minute
        self._refilled = time.monotonic()
        self._in_flight = 0
        self._random = rng or random.Random()

    def wanted(self, route: SpecialistRoute, *, shadowed: bool) -> tuple[bool, str | None]:
        """Whether to sample this call, and when a wanted sample is skipped, why (for the metrics)."""
        if not shadowed and (
            route.teacher_sample_rate <= 0 or self._random.random() >= route.teacher_sample_rate
        ):
            return False, None
        now = time.monotonic()
        self._tokens = min(self.per_minute, self._tokens + (now - self._refilled) * self.per_minute / 60)
        self._refilled = now
        if self._tokens < 1:
            return False, "budget"
        if self._in_flight >= self.max_in_flight:
            return False, "in_flight"
        self._tokens -= 1
        return True, None

    def ask(self, request: dict[str, Any]) -> asyncio.Future[AlternateAnswer]:
        """The teacher's answer to a chat request (non-streamed), as the record's teacher sample."""
        self._in_flight += 1
        future = asyncio.ensure_future(self._ask(request))
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        self._in_flight -= 1

    async def _ask(self, request: dict[str, Any]) -> AlternateAnswer:
        body = {**unstreamed(request), "model": self.model}
        upstream = Upstream(kind=UpstreamKind.TEACHER, model=self.model)
        started = time.perf_counter()
        try:
            reply = await self.teacher.complete(json.dumps(body).encode())
            latency = Latency(total_ms=(time.perf_counter() - started) * 1000)
            if reply.status != 200:
                text = reply.body[:300].decode(errors="replace")
                error = ErrorInfo(
                    type="teacher_error", message=f"the teacher answered {reply.status}: {text}"
                )
                return AlternateAnswer(upstream=upstream, latency=latency, error=error)
            data = json.loads(reply.body)
            usage = Usage.model_validate(data["usage"]) if data.get("usage") else None
            response = ChatResponse.model_validate(data)
            return AlternateAnswer(upstream=upstream, response=response, usage=usage, latency=latency)
        except Exception as error:  # a sample is best effort: the call is logged regardless
            latency = Latency(total_ms=(time.perf_counter() - started) * 1000)
            message = f"{type(error).__name__}: {error}"[:500]
            return AlternateAnswer(
                upstream=upstream, latency=latency, error=ErrorInfo(type="teacher_error", message=message)
            )


def _error(message: str) -> ErrorInfo:
    return ErrorInfo(type="teacher_error", message=message)


def first_message(response: ChatResponse | None) -> dict[str, Any] | None:
    """The first choice's message of a response, as a plain dict (what the metrics score)."""
    if response is None or not response.choices:
        return None
    return response.choices[0].message.model_dump(exclude_none=True)
