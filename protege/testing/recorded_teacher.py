"""The recorded teacher: an OpenAI-compatible endpoint that answers from recordings.

Clearly not a model. It stands in for the big model in the demo and in tests, answering
each of the shipped workload's requests with the answer recorded for it (the workload's
"teacher"), so the whole loop runs offline and reproducibly. In real use the teacher is any
OpenAI-compatible LLM (``teacher.url``).

A request is found by what a model answers from: its messages, tools, tool choice and
response format (not the model name, sampling or streaming options). One without a
recording gets a 404 that says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from protege.testing.stub_teacher import StubTeacher
from protege.workload import WorkloadCall

MODEL = "recorded-teacher"
_ANSWERED_FROM = ("messages", "tools", "tool_choice", "response_format")


def request_key(request: dict[str, Any]) -> str:
    what = {field: request.get(field) for field in _ANSWERED_FROM}
    return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Recordings:
    def __init__(self, calls: Iterable[WorkloadCall]) -> None:
        self.answers = {request_key(call.request): call.answer for call in calls}

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
        answer = self.answers.get(request_key(request))
        if answer is None:
            raise LookupError(
                f"the recorded teacher has no recording of this request ({len(self.answers)} recorded); "
                "it answers the shipped workload only — point teacher.url at a real LLM for other calls"
            )
        return answer.get("content"), answer.get("tool_calls")


class RecordedTeacher(StubTeacher):
    model = MODEL

    def __init__(self, calls: Iterable[WorkloadCall]) -> None:
        self.recordings = Recordings(calls)
        super().__init__(answer=self.recordings)
