"""Replay the shipped workload through the gateway like a real agent: the OpenAI SDK, several
calls in flight, a steady arrival rate.

Each outcome says who answered (a specialist, named by the gateway's ``x-protege-upstream``
header, or the teacher), how long it took, and the answer, so the demo can score answers
against the recordings and count the traffic specialists took over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from protege.workload.agent import WorkloadCall

UPSTREAM_HEADER = "x-protege-upstream"


@dataclass(frozen=True)
class Outcome:
    call: WorkloadCall
    seconds: float
    specialist: str | None  # "<specialist>@<version>" when a specialist answered; None: the teacher
    answer: dict[str, Any] | None  # the assistant message; None when the call failed
    error: str | None = None
    at: float = 0.0  # when it ended (time.time())
    tokens: tuple[int, int] = (0, 0)  # prompt and completion tokens, as the answer's usage says


def _message(completion: Any) -> dict[str, Any]:
    message = completion.choices[0].message
    answer: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        answer["tool_calls"] = [
            {"type": "function", "function": {"name": t.function.name, "arguments": t.function.arguments}}
            for t in message.tool_calls
        ]
    return answer


async def replay(
    calls: Sequence[WorkloadCall],
    base_url: str,
    api_key: str,
    *,
    concurrency: int = 4,
    rate: float | None = None,
    model: str | None = None,
    app: str | None = None,
    request_timeout: float = 120,
    max_retries: int = 0,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Send every call (``rate`` calls per second at most, ``concurrency`` in flight); outcomes in order.

    ``model``: the model to ask the gateway for (its teacher's name); the recorded one when unset.
    ``max_retries``: the SDK's retries of a failed call (connection errors, 5xx), as an agent would.
    """
    headers = {"X-Protege-App": app} if app else None
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        timeout=request_timeout,
        max_retries=max_retries,
        default_headers=headers,
    )
    slots = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(index: int, call: WorkloadCall) -> Outcome:
        if rate:
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        async with slots:
            began = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    **{**call.request, "model": model or call.request["model"]}
                )
                completion = raw.parse()
                usage = completion.usage
                outcome = Outcome(
                    call,
                    time.perf_counter() - began,
                    raw.headers.get(UPSTREAM_HEADER),
                    _message(completion),
                    at=time.time(),
                    tokens=(usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0),
                )
            except openai.APIError as error:
                error_text = f"{type(error).__name__}: {error}"
                outcome = Outcome(call, time.perf_counter() - began, None, None, error_text, at=time.time())
        if on_outcome is not None:
            on_outcome(outcome)
        return outcome

    try:
        return list(await asyncio.gather(*(one(i, call) for i, call in enumerate(calls))))
    finally:
        await client.close()
