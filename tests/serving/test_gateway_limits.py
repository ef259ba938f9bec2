"""The gateway's limits, keys file and body bounds as pure functions: an injected clock, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.config import ApiKey, ConfigError, RateLimits
from protege.serving.gateway.auth import KeySource, hash_key
from protege.serving.gateway.errors import GatewayError
from protege.serving.gateway.limits import Limiter, Limits, RateLimited, Subject, effective
from protege.serving.gateway.validation import (
    Bounds,
    parse_chat_request,
    parse_completions_request,
    parse_embeddings_request,
    parse_responses_request,
)

KEY = Subject("key", "k1", "this API key")
TENANT = Subject("tenant", "acme", "the tenant 'acme'")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: Limiter, *subjects: tuple[Subject, Limits]) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.admit(subjects)
    return caught.value


def test_requests_per_minute_allow_a_minutes_worth_then_space_calls_out() -> None:
    clock = Clock()
    limiter, limits = Limiter(clock), Limits(requests_per_minute=3)
    for _ in range(3):
        limiter.admit([(KEY, limits)]).release()
    refusal = refused(limiter, (KEY, limits)).refusal
    assert (refusal.subject, refusal.limit, refusal.value) == (KEY, "requests_per_minute", 3)
    assert refusal.retry_after == pytest.approx(20)  # one request refills every 60 / 3 s
    assert refusal.retry_after_header == "20"
    clock.now += 19.5
    assert refused(limiter, (KEY, limits)).refusal.retry_after_header == "1"  # rounded up, never 0
    clock.now += 0.5
    limiter.admit([(KEY, limits)])


def test_tokens_are_charged_after_the_call_and_a_spent_budget_waits_until_it_refills() -> None:
    clock = Clock()
    limiter, limits = Limiter(clock), Limits(tokens_per_minute=600)
    first = limiter.admit([(TENANT, limits)])
    second = limiter.admit([(TENANT, limits)])  # admitted: nothing is reserved before a call
    first.spend(500)
    second.spend(400)  # overdrawn by the call in progress: 300 in debt
    refusal = refused(limiter, (TENANT, limits)).refusal
    assert refusal.limit == "tokens_per_minute"
    assert refusal.retry_after == pytest.approx(30.1)  # back to one token, at 10 tokens a second
    clock.now += 31
    limiter.admit([(TENANT, limits)])


def test_concurrent_calls_free_their_slot_once_when_they_end() -> None:
    limiter, limits = Limiter(Clock()), Limits(concurrent_calls=2)
    first = limiter.admit([(KEY, limits)])
    limiter.admit([(KEY, limits)])
    refusal = refused(limiter, (KEY, limits)).refusal
    assert (refusal.limit, refusal.retry_after_header) == ("concurrent_calls", "1")
    first.release()
    first.release()  # a second release frees nothing more
    assert limiter.in_flight("key", "k1") == 1
    limiter.admit([(KEY, limits)])
    refused(limiter, (KEY, limits))


def test_a_call_must_fit_its_key_and_its_tenant_and_takes_nothing_when_refused() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    key_limits, tenant_limits = Limits(requests_per_minute=10), Limits(requests_per_minute=2)
    other = Subject("key", "k2", "another key")
    limiter.admit([(KEY, key_limits), (TENANT, tenant_limits)])
    limiter.admit([(other, key_limits), (TENANT, tenant_limits)])
    refusal = refused(limiter, (KEY, key_limits), (TENANT, tenant_limits)).refusal
    assert refusal.subject == TENANT  # the tenant's budget, shared by its keys, is spent
    clock.now += 30  # the tenant has one request again; the key never lost one to the refusal
    limiter.admit([(KEY, key_limits), (TENANT, tenant_limits)])


def test_the_longest_wait_is_the_one_told() -> None:
    limiter = Limiter(Clock())
    limits = Limits(requests_per_minute=1, tokens_per_minute=60)
    limiter.admit([(KEY, limits)]).spend(600)
    refusal = refused(limiter, (KEY, limits)).refusal
    assert (refusal.limit, refusal.retry_after) == ("tokens_per_minute", pytest.approx(541))


def test_unlimited_subjects_keep_no_state_and_limits_can_change_on_the_fly() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    for _ in range(100):
        limiter.admit([(KEY, Limits())])
    assert limiter.in_flight("key", "k1") == 0
    limiter.admit([(KEY, Limits(requests_per_minute=60))])
    limiter.admit([(KEY, Limits(requests_per_minute=1))])  # lowered: the level is capped at 1, then used
    refused(limiter, (KEY, Limits(requests_per_minute=1)))
    limiter.admit([(KEY, Limits())])  # lifted


def test_effective_limits_take_the_fields_an_override_sets_null_included() -> None:
    default = RateLimits(requests_per_minute=60, concurrent_calls=4)
    assert effective(default, None) == Limits(60, None, 4)
    assert effective(default, RateLimits(tokens_per_minute=1000)) == Limits(60, 1000, 4)
    assert effective(default, RateLimits(concurrent_calls=None)) == Limits(60, None, None)


# --- the keys file ---------------------------------------------------------------------------


def _entries(*tenants: str) -> str:
    return json.dumps([{"sha256": hash_key(f"key-{t}"), "tenant": t} for t in tenants])


def test_the_keys_file_is_re_read_when_it_changes_and_a_broken_one_keeps_the_last_good_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(_entries("a", "b"))
    static = ApiKey(sha256=hash_key("key-static"), tenant="s")
    source = KeySource([static], path)
    ring = source.load()
    assert len(ring) == 3 and source.refresh() is None  # unchanged: nothing new
    path.write_text(_entries("a"))  # b revoked
    ring = source.refresh()
    assert ring is not None and len(ring) == 2
    with pytest.raises(GatewayError):
        ring.authenticate({"authorization": "Bearer key-b"})
    assert ring.authenticate({"authorization": "Bearer key-a"}).tenant == "a"
    path.write_text("[{not json")  # half written, say
    assert source.refresh() is None and source.errors == 1
    assert source.refresh() is None and source.errors == 1  # told once, not every interval
    path.unlink()
    assert source.refresh() is None and source.errors == 2
    path.write_text(_entries("c"))
    ring = source.refresh()
    assert ring is not None and ring.authenticate({"api-key": "key-c"}).tenant == "c"


def test_a_broken_keys_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("- sha256: nope\n  tenant: a\n")
    with pytest.raises(ConfigError, match=r"gateway.api_keys_file .*keys create"):
        KeySource([], path).load()
    with pytest.raises(ConfigError, match="cannot read it"):
        KeySource([], tmp_path / "missing.yaml").load()


# --- body bounds -----------------------------------------------------------------------------

BOUNDS = Bounds(max_json_depth=16, max_n=4, max_output_tokens=1000)


def _chat(**extra: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.mark.parametrize(
    ("parse", "body", "field", "shown"),
    [
        (parse_chat_request, _chat(n=5), "n", "5 is above this gateway's limit of 4 (gateway.max_n)"),
        (parse_chat_request, _chat(n="5"), "n", "5 is above"),  # as a lax upstream would read it
        (
            parse_chat_request,
            _chat(max_tokens=1001),
            "max_tokens",
            "limit of 1000 (gateway.max_output_tokens)",
        ),
        (parse_chat_request, _chat(max_completion_tokens=5000), "max_completion_tokens", "5000 is above"),
        (
            parse_responses_request,
            json.dumps({"model": "m", "input": "hi", "max_output_tokens": 2000}).encode(),
            "max_output_tokens",
            "2000 is above",
        ),
        (
            parse_completions_request,
            json.dumps({"model": "m", "prompt": "hi", "best_of": 9}).encode(),
            "best_of",
            "9 is above",
        ),
        (
            parse_completions_request,
            json.dumps({"model": "m", "prompt": "hi", "max_tokens": 9999}).encode(),
            "max_tokens",
            "9999 is above",
        ),
    ],
)
def test_bounds_refuse_with_a_400_naming_the_field_the_value_and_the_bound(
    parse: object, body: bytes, field: str, shown: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(body, models=["m"], bounds=BOUNDS)  # type: ignore[operator]
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, field, "integer_above_max_value")
    assert f"Invalid value for '{field}'" in error.message and shown in error.message
    assert "raise gateway." in error.message  # how to fix it


def test_calls_within_the_bounds_pass() -> None:
    parse_chat_request(_chat(n=4, max_tokens=1000), models=["m"], bounds=BOUNDS)
    parse_chat_request(_chat(n=400), models=["m"])  # no bounds, none checked


@pytest.mark.parametrize("depth", [17, 10_000])
@pytest.mark.parametrize(
    "parse",
    [parse_chat_request, parse_responses_request, parse_completions_request, parse_embeddings_request],
)
def test_deeply_nested_bodies_are_a_400(parse: object, depth: int) -> None:
    nested = "[" * (depth - 1) + "]" * (depth - 1)  # inside the body's own object
    body = f'{{"model": "m", "messages": [], "input": "x", "prompt": "x", "extra": {nested}}}'.encode()
    with pytest.raises(GatewayError) as caught:
        parse(body, models=["m"], bounds=BOUNDS)  # type: ignore[operator]
    assert caught.value.status_code == 400 and caught.value.code == "json_too_deep"
    assert "gateway.max_json_depth" in caught.value.message


def test_nesting_up_to_the_bound_passes() -> None:
    nested = "[" * 15 + "]" * 15  # 16 levels with the body object itself
    body = f'{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "extra": {nested}}}'
    parse_chat_request(body.encode(), models=["m"], bounds=BOUNDS)
