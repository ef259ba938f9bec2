"""The pool's trust boundary: its engine answers only callers holding the pool token (gateways).

The token is a setting (``pool_token``, ``PROTEGE_POOL_TOKEN``; in Kubernetes from a Secret):
gateways send it as ``Authorization: Bearer <token>``, a pool's Serve application refuses
any other call with 401, and refuses to start without a token at all. Only the health paths
stay open (they tell nothing).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.responses import JSONResponse

from protege.config import Settings

OPEN_PATHS = ("/health", "/-/healthz")


class PoolTokenMissingError(ValueError):
    """A pool was started without a token: it would answer anyone."""


def pool_token(settings: Settings) -> str:
    """The token this pool requires; PoolTokenMissingError when none is set."""
    if settings.pool_token is None or not settings.pool_token.get_secret_value():
        raise PoolTokenMissingError(
            "no pool_token: a pool serves only the gateways that hold its token; set PROTEGE_POOL_TOKEN "
            "in the pool's environment (the operator passes it from the Secret platform.poolTokenSecret, "
            "`protege up` from <dir>/pool-token) and the same in the gateways'"
        )
    return settings.pool_token.get_secret_value()


def bearer(token: str) -> dict[str, str]:
    """The header a gateway sends the pool."""
    return {"Authorization": f"Bearer {token}"}


def refusal(path: str, headers: Mapping[str, str], token: str) -> JSONResponse | None:
    """None when the call may go on; else the 401 to answer (the token is never echoed)."""
    if path in OPEN_PATHS:
        return None
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given and hmac.compare_digest(given.encode(), token.encode()):
        return None
    code = "invalid_token" if given else "missing_token"
    message = (
        "this pool answers its gateways only: send the pool token as 'Authorization: Bearer <token>' "
        "(the gateway's pool_token setting)"
    )
    return JSONResponse(
        {"error": {"message": message, "type": "authentication_error", "code": code}},
        401,
        headers={"WWW-Authenticate": "Bearer"},
    )
