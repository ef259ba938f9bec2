"""The pool's engine answers the gateways only: they hold its token, anyone else gets 401.

The check is the pool application's own (``protege.serving.pool.auth``, which every replica
runs before anything else); here it guards a small engine on a real port, so the gateway's
router is tested over HTTP without starting vLLM (tests/serving/test_pool.py does, on the pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protege.config import Settings
from protege.serving.pool.auth import PoolTokenMissingError, pool_token, refusal
from protege.serving.router.breaker import Admission
from protege.serving.router.router import Router
from protege.serving.router.table import SpecialistRoute
from protege.serving.server import ServerThread

TOKEN = "pool-secret-7f3a"
ROUTE = SpecialistRoute(specialist="intent", tenant="acme", task_id="t1", active="v1")
ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "model": "intent@v1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "refund"}, "finish_reason": "stop"}],
}


async def engine(request: Request) -> Response:
    refused = refusal(request.url.path, request.headers, TOKEN)
    return refused if refused is not None else JSONResponse(ANSWER)


@pytest.fixture(scope="module")
def guarded_engine() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", engine, methods=["POST"])])
    with ServerThread(app) as server:
        yield server.url


def test_only_the_token_passes_and_health_stays_open() -> None:
    missing = refusal("/v1/chat/completions", {}, TOKEN)
    assert missing is not None and missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer" and b"missing_token" in missing.body
    wrong = refusal("/v1/models", {"authorization": "Bearer pool-secret-7f3b"}, TOKEN)
    assert wrong is not None and wrong.status_code == 401 and TOKEN.encode() not in wrong.body
    assert refusal("/v1/chat/completions", {"authorization": f"Bearer {TOKEN}"}, TOKEN) is None
    assert refusal("/v1/chat/completions", {"authorization": f"Basic {TOKEN}"}, TOKEN) is not None
    assert refusal("/-/healthz", {}, TOKEN) is None and refusal("/health", {}, TOKEN) is None


def test_a_pool_without_a_token_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(PoolTokenMissingError, match="PROTEGE_POOL_TOKEN"):
        pool_token(Settings(home=tmp_path))
    assert pool_token(Settings(home=tmp_path, pool_token=TOKEN)) == TOKEN


async def test_the_gateway_sends_its_token_and_without_one_it_is_refused(
    guarded_engine: str, tmp_path: Path
) -> None:
    body = {"model": "intent", "messages": [{"role": "user", "content": "I want my money back"}]}
    outcomes = {}
    for name, token in (("holder", TOKEN), ("stranger", None)):
        router_settings = {"enabled": True, "engine_url": guarded_engine}
        router = Router(Settings(home=tmp_path / name, router=router_settings, pool_token=token))
        try:
            outcomes[name] = await router.ask(body, ROUTE, "v1", Admission.ASK)
        finally:
            await router.session.close()
    assert outcomes["holder"].error is None and outcomes["holder"].body == ANSWER
    assert outcomes["stranger"].error is not None and "engine answered 401" in outcomes["stranger"].error
    assert TOKEN not in outcomes["stranger"].error
